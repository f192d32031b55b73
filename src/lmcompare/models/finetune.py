"""Fine-tuning as a model source: `{base}` fine-tuned for sequence classification on `{dataset}`'s train split.

The result is a model folder like any other (results/models/{model}/): it loads with AutoModel and
AutoTokenizer offline (AutoModel takes the encoder and ignores the classification head, which is kept in the
weights for reuse), and carries provenance.json with the base, the dataset, the hyper-parameters and the final
train/test accuracy of the classification head.

Training loop (seeded; on the CPU the result is reproducible for a fixed thread count): the classification head of AutoModelForSequenceClassification
initialised under `seed`; AdamW (weight decay 0, betas 0.9/0.999) at `learning_rate` with linear decay to 0 over
all steps and no warm-up; gradient-norm clipping at 1.0; dropout as configured by the base model; the train
split shuffled each epoch by a numpy generator seeded with `seed`; batches of `batch_size` examples tokenised
with truncation at `max_length`. `epochs` may be fractional (steps = ceil(epochs x batches per epoch)).
These are the defaults of the Hugging Face Trainer.
"""

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmcompare import files, hidden_states, runtime
from lmcompare.models.loading import (environment_summary, load_model, load_tokenizer, pick_device,
                                            read_provenance, weights_sha256, write_provenance)
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

MAX_GRAD_NORM = 1.0


@dataclass
class FineTuneSettings:
    """The hyper-parameters of a `finetune` model entry; the defaults are the schema's (schemas/config.schema.yaml),
    for callers that pass a partial entry. A seed of null (the schema default) is 0."""

    epochs: float = 1
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0

    @classmethod
    def from_config(cls, entry: dict) -> "FineTuneSettings":
        return cls(**{key: entry[key] for key in cls.__dataclass_fields__ if entry.get(key) is not None})


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def training_examples(dataset_path, dataset: str):
    """Texts, integer labels and class names of the dataset's train and test splits."""
    frame = files.read_dataset(dataset_path)
    labelled, classes = hidden_states.labelled_examples(frame, dataset)
    train = labelled[labelled["split"] == "train"]
    test = labelled[labelled["split"] == "test"]
    if train["label_code"].nunique() < 2:
        raise WorkflowInputError(
            f"dataset {dataset!r}: its train split holds {train['label_code'].nunique()} class(es); fine-tuning "
            f"needs at least two (check label_column and max_examples in the config file)."
        )
    return (train["text"].tolist(), train["label_code"].to_numpy(), test["text"].tolist(),
            test["label_code"].to_numpy(), classes)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def predict(model, tokenizer, texts, *, batch_size: int, max_length: int, device) -> np.ndarray:
    """Predicted class codes of the classification head (eval mode, no gradient)."""
    import torch

    model.eval()
    predictions = []
    with torch.no_grad():
        for part in _batches(len(texts), batch_size):
            batch = tokenizer(texts[part], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            predictions.append(model(**batch).logits.argmax(dim=-1).cpu().numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def finetune(base_dir, train_texts, train_labels, classes, *, epochs=1, learning_rate=5e-5, batch_size=16,
             max_length=128, seed=0, device=None, log_every_s: float = 30.0, trust_remote_code: bool = False):
    """Fine-tune the base model folder for classification; returns (model, tokenizer, training record)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    device = device or pick_device("auto")
    seed_everything(seed)
    tokenizer = load_tokenizer(base_dir)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad batches with eos (or unk), as extraction does
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise WorkflowInputError(f"{base_dir}: its tokenizer has no pad, eos or unk token to pad batches with.")
        tokenizer.pad_token = fallback
        LOG.info("%s: the tokenizer has no pad token; padding with %r", base_dir, fallback)
    model = load_model(
        base_dir, auto_class=AutoModelForSequenceClassification, device=device, trust_remote_code=trust_remote_code,
        num_labels=len(classes), id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 style models classify at the last non-pad token
    n = len(train_texts)
    per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, math.ceil(epochs * per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    rng = np.random.default_rng(seed)
    labels = torch.tensor(np.array(train_labels, dtype=np.int64))
    LOG.info("fine-tuning %s: %d train examples, %d classes, %d steps (%.3g epochs x %d batches of %d), lr %g, "
             "max_length %d, seed %d, device %s", base_dir, n, len(classes), total_steps, epochs, per_epoch,
             batch_size, learning_rate, max_length, seed, device)
    model.train()
    step, started, last_log, losses = 0, time.perf_counter(), time.perf_counter(), []
    while step < total_steps:
        order = rng.permutation(n)
        for part in _batches(n, batch_size):
            if step >= total_steps:
                break
            index = order[part]
            batch = tokenizer([train_texts[i] for i in index], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            output = model(**batch, labels=labels[index].to(device))
            if not torch.isfinite(output.loss):
                raise WorkflowInputError(
                    f"fine-tuning {base_dir}: the loss became {output.loss.item()} at step {step + 1}; lower the "
                    f"learning_rate of the finetune entry in the config file."
                )
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            losses.append(float(output.loss.item()))
            step += 1
            now = time.perf_counter()
            if now - last_log >= log_every_s or step == total_steps or step == 1:
                recent = losses[-per_epoch:]
                LOG.info("step %d/%d (epoch %.2f): loss %.4f (mean of last %d: %.4f), %.1f s elapsed", step,
                         total_steps, step / per_epoch, losses[-1], len(recent), float(np.mean(recent)),
                         now - started)
                last_log = now
    model.eval()
    record = {"steps": total_steps, "train_seconds": round(time.perf_counter() - started, 2),
              "first_loss": losses[0], "final_loss_mean_last_epoch": float(np.mean(losses[-per_epoch:]))}
    return model, tokenizer, record


def run(entry: dict, base_dir, dataset_path, output_dir, *, device: str = "auto", threads: int | None = None) -> dict:
    """The whole rule: fine-tune, evaluate, save model + tokenizer + provenance through a temporary folder."""

    if threads:
        runtime.torch_threads(threads)
    settings = FineTuneSettings.from_config(entry)
    name, dataset = entry["name"], entry["dataset"]
    torch_device = pick_device(device)
    train_texts, train_y, test_texts, test_y, classes = training_examples(dataset_path, dataset)
    model, tokenizer, record = finetune(
        base_dir, train_texts, train_y, classes, epochs=settings.epochs, learning_rate=settings.learning_rate,
        batch_size=int(settings.batch_size), max_length=int(settings.max_length), seed=int(settings.seed),
        device=torch_device, trust_remote_code=bool(entry.get("trust_remote_code", False)),
    )
    eval_batch = max(8, int(settings.batch_size) * 2)
    train_pred = predict(model, tokenizer, train_texts, batch_size=eval_batch, max_length=int(settings.max_length),
                         device=torch_device)
    test_pred = predict(model, tokenizer, test_texts, batch_size=eval_batch, max_length=int(settings.max_length),
                        device=torch_device)
    train_accuracy = float(np.mean(train_pred == train_y))
    test_accuracy = float(np.mean(test_pred == test_y)) if len(test_y) else None
    LOG.info("%s: classification head accuracy train %.4f, test %s (%d test examples)", name, train_accuracy,
             "n/a" if test_accuracy is None else f"{test_accuracy:.4f}", len(test_y))
    try:
        base_record = read_provenance(base_dir)
    except WorkflowInputError:
        base_record = {}
    output = Path(output_dir)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    elif output.exists():
        shutil.rmtree(output)
    with files.atomic_path(output) as tmp:
        tmp.mkdir()
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "name": name, "source": "finetune", "revision": None,
            "base": entry["base"], "base_weights_sha256": base_record.get("weights_sha256") or weights_sha256(base_dir),
            "dataset": dataset, "classes": classes,
            "epochs": settings.epochs, "learning_rate": settings.learning_rate,
            "batch_size": int(settings.batch_size), "max_length": int(settings.max_length),
            "seed": int(settings.seed), "optimizer": "AdamW(weight_decay=0), linear decay, no warm-up, clip 1.0",
            "n_train": len(train_y), "n_test": len(test_y),
            "train_accuracy": train_accuracy, "test_accuracy": test_accuracy,
            "architecture": type(model).__name__, "model_type": model.config.model_type,
            "tokenizer": type(tokenizer).__name__, "device": str(torch_device),
            "environment": environment_summary(), **record,
        }
        result = write_provenance(tmp, info)
    LOG.info("wrote %s (weights sha256 %s)", output, result["weights_sha256"])
    return result
