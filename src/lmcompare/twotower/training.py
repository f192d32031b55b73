"""Training of the two-tower LM, resumable: a run killed at any moment resumes bit-identically.

`train_two_tower` trains (or resumes) one seed with checkpoints in a work folder (last.pt: model, optimiser,
scheduler, RNG state, loss history, fingerprinted by the settings; stepNNNNNN.pt: the weights of a measured
step); `load_snapshot` reads such a snapshot back. `train_run` is what rule twotower_train does.

Checkpoints hold only tensors and plain Python values (dicts, lists, numbers, strings, None) and are read with
`torch.load(..., weights_only=True)`: loading one never runs pickled code (`load_checkpoint`).
"""

import hashlib
import json
import logging
import math
import pickle
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmcompare import files
from lmcompare.errors import WorkflowInputError
from lmcompare.twotower.corpus import Corpus, eval_windows, load_corpus, random_windows
from lmcompare.twotower.model import TowerConfig, TwoTowerLM, build_model, model_config

LOG = logging.getLogger("workflow")

FORMAT_VERSION = 2  # 2: the joint model's held-out loss is named test_loss (the split it is computed on)


@dataclass
class TrainConfig:
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 40
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_max_windows: int | None = 64
    checkpoint_every: int = 50
    snapshot_steps: tuple = ()
    freeze_tower: str | None = None  # 'a' or 'b': keep that tower at its random init (planted asymmetry)


def train_config(section: dict) -> TrainConfig:
    """The training of the twotower config section; snapshots at the measured steps."""
    return TrainConfig(steps=section["steps"], batch_size=section["batch_size"],
                       learning_rate=section["learning_rate"], weight_decay=section["weight_decay"],
                       warmup_steps=section["warmup_steps"], grad_clip=section["grad_clip"],
                       eval_every=section["eval_every"], eval_max_windows=section["eval_max_windows"],
                       checkpoint_every=section["checkpoint_every"],
                       snapshot_steps=tuple(measure_steps(section)), freeze_tower=section["freeze_tower"])


def measure_steps(section: dict) -> list[int]:
    """Training steps whose snapshot is measured: the configured ones and the final step."""
    return sorted(set(int(s) for s in section["measure_steps"]) | {int(section["steps"])})


def fingerprint(*parts) -> str:
    """A short hash of the settings a checkpoint belongs to (resume only into the same run)."""
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def make_optimizer(model, train: TrainConfig):
    """AdamW (paper: Adam, lr 1e-3, weight decay 0.01) with linear warm-up, then constant. With
    `freeze_tower`, that tower's own parameters are frozen (requires_grad off) and left out."""
    if train.freeze_tower is not None:
        which = {"a": 0, "b": 1}[train.freeze_tower]
        for p in model.tower_parameters(which):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(train.warmup_steps))
    return optimizer, scheduler


def evaluate_loss(model, ids: np.ndarray, window: int, device, max_windows: int | None = None,
                  batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) of the joint model on consecutive windows of `ids` (the workflow
    passes the test split: the history's `test_loss`)."""
    windows, mask, _ = eval_windows(ids, window, max_windows)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = torch.as_tensor(windows[start:start + batch_size], device=device)
            m = torch.as_tensor(mask[start:start + batch_size], device=device)
            logits = model(batch[:, :-1]).float()
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            total += float(loss[m].sum())
            count += int(m.sum())
    model.train(was_training)
    return total / max(count, 1)


def load_checkpoint(path, device=None) -> dict:
    """A checkpoint of ours, read without executing code (`weights_only=True`: tensors and plain values only)."""
    return torch.load(path, map_location=device or "cpu", weights_only=True)


def _atomic_torch_save(obj, path) -> None:
    with files.atomic_path(path, durable=True) as tmp:
        torch.save(obj, tmp)


def snapshot_name(step: int) -> str:
    return f"step{int(step):06d}.pt"


def train_two_tower(corpus: Corpus, model_cfg: TowerConfig, train: TrainConfig, seed: int, work_dir, *,
                    device=None, progress_every: int = 10, stop_after: int | None = None):
    """Train (or resume) a two-tower LM; checkpoints in `work_dir`.

    work_dir/last.pt holds the latest resumable state (model, optimiser, scheduler, loss history), written
    atomically every `checkpoint_every` steps; work_dir/stepNNNNNN.pt holds the model weights at each snapshot
    step and at the end. A run killed at any moment resumes from last.pt when called again with the same
    settings (a fingerprint guards against resuming into a different configuration).
    `stop_after` ends the call after that many steps of this call (used by tests to simulate a kill).
    Returns (model, history rows).
    """
    device = device or torch.device("cpu")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".*.tmp-*"):  # temporary files of a killed write
        stale.unlink(missing_ok=True)
    key = fingerprint(model_cfg, {k: v for k, v in asdict(train).items() if k not in ("eval_every",)}, seed,
                      corpus.info, FORMAT_VERSION)
    model = build_model(model_cfg, seed).to(device)
    model.train()
    optimizer, scheduler = make_optimizer(model, train)
    history: list[dict] = []
    step = 0
    last = work_dir / "last.pt"
    if last.exists():
        try:
            state = load_checkpoint(last, device)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # e.g. one written before weights_only
            LOG.warning("%s cannot be read as a plain-tensor checkpoint (%s): starting afresh", last,
                        str(err).splitlines()[0])
            state = {}
        if state.get("fingerprint") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
            history = state["history"]
            step = int(state["step"])
            LOG.info("resuming from %s at step %d of %d", last, step, train.steps)
        else:
            LOG.warning("%s belongs to other settings (fingerprint %s, now %s): starting afresh",
                        last, state.get("fingerprint"), key)
            for old in work_dir.glob("step*.pt"):
                old.unlink()
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n_trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    LOG.info("two-tower LM: %d parameters (%d trainable), vocab %d, window %d, device %s",
             n_params, n_trainable, model_cfg.vocab_size, model_cfg.window, device)

    def checkpoint():
        _atomic_torch_save({"fingerprint": key, "step": step, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                            "history": history}, last)

    def snapshot():
        _atomic_torch_save({"fingerprint": key, "step": step, "model": model.state_dict(),
                            "model_config": asdict(model_cfg),
                            "vocab_ids": torch.as_tensor(np.asarray(corpus.vocab_ids, dtype=np.int64)),
                            "seed": int(seed), "freeze_tower": train.freeze_tower}, work_dir / snapshot_name(step))

    if step == 0 and not history:
        test_loss = evaluate_loss(model, corpus.test_ids, model_cfg.window, device, train.eval_max_windows)
        history.append({"step": 0, "train_loss": float("nan"), "test_loss": test_loss, "elapsed_s": 0.0})
        LOG.info("step 0: test-split loss %.4f (ln V = %.4f)", test_loss, math.log(model_cfg.vocab_size))
    started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    running, running_n, done_now = 0.0, 0, 0
    while step < train.steps:
        batch = torch.as_tensor(random_windows(corpus.train_ids, model_cfg.window, train.batch_size, seed, step),
                                device=device)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), batch[:, 1:])
        if not torch.isfinite(loss):
            raise WorkflowInputError(
                f"two-tower training diverged at step {step} (loss {float(loss)}); lower twotower.learning_rate "
                f"or raise twotower.warmup_steps."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        done_now += 1
        running += loss.item()
        running_n += 1
        if step % progress_every == 0 or step == train.steps:
            elapsed = time.perf_counter() - started
            LOG.info("step %d/%d  train loss %.4f  %.2f s/step  eta %.0f s", step, train.steps, loss.item(),
                     elapsed / max(step, 1), elapsed / max(step, 1) * (train.steps - step))
        if step % train.eval_every == 0 or step == train.steps:
            test_loss = evaluate_loss(model, corpus.test_ids, model_cfg.window, device, train.eval_max_windows)
            history.append({"step": step, "train_loss": running / max(running_n, 1), "test_loss": test_loss,
                            "elapsed_s": time.perf_counter() - started})
            running, running_n = 0.0, 0
            LOG.info("step %d: test-split loss %.4f", step, test_loss)
        if step in train.snapshot_steps or step == train.steps:
            snapshot()
        if step % train.checkpoint_every == 0 or step == train.steps:
            checkpoint()
        if stop_after is not None and done_now >= stop_after:
            break
    return model, history


def load_snapshot(path, device=None):
    """(model, snapshot dict) from a stepNNNNNN.pt file."""
    try:
        state = load_checkpoint(path, device)
        model = TwoTowerLM(TowerConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        raise WorkflowInputError(f"{path} is not a readable two-tower snapshot ({err}); delete it and rerun.") from err
    model.eval()
    return model.to(device or "cpu"), state


def train_run(corpus_path, section: dict, seed: int, work_dir, snapshot_paths, history_path, *, model: str,
              dataset: str, device):
    """Rule twotower_train: train seed `seed` on the corpus (`section`: the twotower config section's model and
    training keys), resuming from `work_dir`; copy the measured steps' snapshots to `snapshot_paths` (in the order
    of measure_steps) and write the loss history; then remove `work_dir` (a finished run is not resumed)."""
    import pandas as pd

    corpus = load_corpus(corpus_path)
    seed = int(seed)
    model_cfg = model_config(section, corpus.vocab_size)
    train = train_config(section)
    work_dir = Path(work_dir)
    LOG.info("training seed %d on %d train tokens for %d steps (checkpoints in %s)", seed,
             len(corpus.train_ids), train.steps, work_dir)
    _, history = train_two_tower(corpus, model_cfg, train, seed, work_dir, device=device)
    frame = pd.DataFrame(history)
    frame.insert(0, "model", model)
    frame.insert(1, "dataset", dataset)
    frame.insert(2, "seed", seed)
    frame["n_test_loss_tokens"] = int(min(len(corpus.test_ids) - 1,
                                    (train.eval_max_windows or 10**12) * model_cfg.window))
    for step, target in zip(measure_steps(section), snapshot_paths):
        with files.atomic_path(target) as tmp:
            shutil.copyfile(work_dir / snapshot_name(step), tmp)
    files.write_table(frame, history_path)
    shutil.rmtree(work_dir, ignore_errors=True)  # finished: a later rerun must not resume a finished run
    LOG.info("final test-split loss %.4f (step 0: %.4f); %d train tokens", history[-1]["test_loss"],
             history[0]["test_loss"], len(corpus.train_ids))
