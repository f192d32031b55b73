"""Two-tower language model (He & Toyoizumi, arXiv:2210.07041).

Two GPT-2 towers of identical configuration share the token and position embeddings. Their final hidden
states are concatenated -> LayerNorm -> Dense + GELU -> LayerNorm -> output projection tied to the input
embedding (+ bias); one softmax; trained jointly on the causal next-token objective.

Per-tower measurement: the trained towers are frozen; one untied head per tower is trained on that tower's
own half of the representation - by default (`head.input: joint_layernorm`, the authors') the tower's half of
the frozen joint LayerNorm output LN_1([h_a ; h_b]); on held-out text (the test split) each head's
log-probability of the true next token is recorded per occurrence (twotower_preference.py turns these into
per-type preferences).

This module holds the maths as plain functions (corpus building, the model, training with resumable
checkpoints, per-tower heads, held-out log-probabilities) and the thin Snakemake glue of three rules:
twotower_corpus, twotower_train, twotower_measure.
"""

import hashlib
import json
import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmcompare import files
from lmcompare.errors import WorkflowInputError

LOG = logging.getLogger("workflow")

FORMAT_VERSION = 2  # 2: the joint model's held-out loss is named test_loss (the split it is computed on)
UNSEEN = -1  # original id recorded for the compact vocabulary's "unseen in training" class


# ============================================================================================ corpus
@dataclass
class Corpus:
    """Token ids of a dataset's train and test split, each one stream of documents joined by a separator.

    `*_ids` index the model vocabulary (`vocab_ids` maps model index -> tokenizer id; in the `full`
    vocabulary it is the identity). `test_example` holds, per test token, the example_id of its document
    (a separator belongs to the document it ends).
    """

    train_ids: np.ndarray
    test_ids: np.ndarray
    test_example: np.ndarray
    vocab_ids: np.ndarray
    separator_id: int | None
    info: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(len(self.vocab_ids))


def resolve_separator(tokenizer, separator: str | None, where: str) -> int | None:
    """The tokenizer id that joins documents. 'auto': eos, else sep; a token string; None: no separator."""
    if separator is None:
        return None
    if separator == "auto":
        for attr in ("eos_token", "sep_token"):
            token = getattr(tokenizer, attr, None)
            if token is not None:
                return int(tokenizer.convert_tokens_to_ids(token))
        raise WorkflowInputError(
            f"{where}: the tokenizer has neither an eos_token nor a sep_token, so twotower.separator_token 'auto' "
            f"cannot join documents. Set twotower.separator_token to a token of this vocabulary, or null to "
            f"concatenate documents without a separator."
        )
    vocab = tokenizer.get_vocab()
    if separator not in vocab:
        raise WorkflowInputError(
            f"{where}: the configured twotower.separator_token {separator!r} is not in this tokenizer's vocabulary "
            f"(its special tokens: {sorted(set(map(str, tokenizer.all_special_tokens)))}). Set it to one of them, "
            f"'auto', or null."
        )
    return int(vocab[separator])


def join_documents(docs: list[list[int]], example_ids, separator_id: int | None):
    """Concatenate tokenised documents, a separator after each; also return each token's example id."""
    pieces, owners = [], []
    for ids, example in zip(docs, example_ids):
        ids = list(ids) + ([separator_id] if separator_id is not None else [])
        pieces.append(np.asarray(ids, dtype=np.int64))
        owners.append(np.full(len(ids), int(example), dtype=np.int64))
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pieces), np.concatenate(owners)


def compact_vocabulary(train_ids: np.ndarray, test_ids: np.ndarray, tokenizer_size: int, mode: str):
    """Map tokenizer ids onto the model's output classes.

    full   (paper): every tokenizer id is a class (identity map).
    corpus (ours, faster on a small corpus): the ids seen in the train split, plus one class for every id
           not seen in training (original id UNSEEN); the softmax then runs over |train types| + 1 classes.
    Returns (train, test, vocab_ids) with train/test re-indexed.
    """
    if mode == "full":
        return train_ids, test_ids, np.arange(tokenizer_size, dtype=np.int64)
    if mode != "corpus":
        raise ValueError(f"vocabulary mode must be 'full' or 'corpus', got {mode!r}")
    seen = np.unique(train_ids)
    vocab_ids = np.concatenate([seen, [UNSEEN]]).astype(np.int64)
    lookup = np.full(max(tokenizer_size, int(max(train_ids.max(initial=0), test_ids.max(initial=0))) + 1),
                     len(seen), dtype=np.int64)
    lookup[seen] = np.arange(len(seen))
    return lookup[train_ids], lookup[test_ids], vocab_ids


def build_corpus(frame, tokenizer, *, window: int, separator: str | None, vocabulary: str,
                 where: str = "dataset", max_train_tokens: int | None = None) -> Corpus:
    """Tokenise the train and test split of a dataset frame (columns example_id, text, split)."""
    missing = {"example_id", "text", "split"} - set(frame.columns)
    if missing:
        raise WorkflowInputError(f"{where} lacks the column(s) {sorted(missing)}; rerun prepare_dataset.")
    separator_id = resolve_separator(tokenizer, separator, where)
    frame = frame.sort_values("example_id")
    streams = {}
    for split in ("train", "test"):
        part = frame[(frame["split"] == split) & frame["text"].notna()]
        texts = part["text"].astype(str).tolist()
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        streams[split] = join_documents(encoded, part["example_id"].to_numpy(), separator_id)
    train, _ = streams["train"]
    test, test_example = streams["test"]
    if max_train_tokens is not None and len(train) > max_train_tokens:
        train = train[:max_train_tokens]
    for split, ids in (("train", train), ("test", test)):
        if len(ids) < window + 1:
            raise WorkflowInputError(
                f"{where}: the {split} split holds {len(ids)} tokens, fewer than one window of "
                f"twotower.window + 1 = {window + 1} tokens. Lower twotower.window, or use a larger dataset "
                f"(max_examples) with enough {split} text."
            )
    tokenizer_size = len(tokenizer)
    train_c, test_c, vocab_ids = compact_vocabulary(train, test, tokenizer_size, vocabulary)
    info = {
        "train_tokens": int(len(train)), "test_tokens": int(len(test)),
        "train_types": int(len(np.unique(train))), "test_types": int(len(np.unique(test))),
        "test_tokens_unseen_in_train": int(np.isin(test, np.unique(train), invert=True).sum()),
        "tokenizer_size": int(tokenizer_size), "model_vocab_size": int(len(vocab_ids)),
        "vocabulary": vocabulary, "separator_id": separator_id, "window": int(window),
        "n_train_documents": int((frame["split"] == "train").sum()),
        "n_test_documents": int((frame["split"] == "test").sum()),
    }
    return Corpus(train_c, test_c, test_example, vocab_ids, separator_id, info)


def save_corpus(corpus: Corpus, path) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, train_ids=corpus.train_ids, test_ids=corpus.test_ids,
                     test_example=corpus.test_example, vocab_ids=corpus.vocab_ids,
                     separator_id=np.int64(-1 if corpus.separator_id is None else corpus.separator_id),
                     info=np.frombuffer(json.dumps(corpus.info).encode(), dtype=np.uint8))


def load_corpus(path) -> Corpus:
    try:
        data = np.load(path)
        sep = int(data["separator_id"])
        return Corpus(data["train_ids"], data["test_ids"], data["test_example"], data["vocab_ids"],
                      None if sep < 0 else sep, json.loads(bytes(data["info"]).decode()))
    except (OSError, KeyError, ValueError) as err:
        raise WorkflowInputError(f"{path} is not a readable two-tower corpus ({err}); delete it and rerun.") from err


def random_windows(ids: np.ndarray, window: int, batch_size: int, seed: int, step: int):
    """The batch of step `step`: `batch_size` windows of window+1 tokens at random offsets.

    Drawn from a generator seeded by (seed, step) so that a resumed run sees exactly the batches an
    uninterrupted run would have seen, with no generator state to save.
    """
    rng = np.random.default_rng([int(seed), int(step)])
    starts = rng.integers(0, len(ids) - window, size=batch_size)
    return np.stack([ids[s:s + window + 1] for s in starts])


def eval_windows(ids: np.ndarray, window: int, max_windows: int | None = None):
    """Consecutive windows of window+1 tokens with stride `window`: every token after the first is a target
    exactly once. The last window is padded; returns (windows, target_mask, target_index) where
    target_index[i, j] is the stream position of the target windows[i, j+1]."""
    n_targets = len(ids) - 1
    n_windows = max(1, math.ceil(n_targets / window))
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows = np.zeros((n_windows, window + 1), dtype=np.int64)
    mask = np.zeros((n_windows, window), dtype=bool)
    index = np.full((n_windows, window), -1, dtype=np.int64)
    for w in range(n_windows):
        chunk = ids[w * window: w * window + window + 1]
        windows[w, :len(chunk)] = chunk
        mask[w, :len(chunk) - 1] = True
        index[w, :len(chunk) - 1] = np.arange(w * window + 1, w * window + len(chunk))
    return windows, mask, index


# ============================================================================================= model
@dataclass
class TowerConfig:
    vocab_size: int
    window: int = 64
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    dropout: float = 0.0


def build_model(cfg: TowerConfig, seed: int):
    """A TwoTowerLM initialised deterministically from `seed`."""
    torch.manual_seed(int(seed))
    return TwoTowerLM(cfg)


class TwoTowerLM(nn.Module):
    """Two GPT-2 towers sharing token and position embeddings; joint head tied to the embedding."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.cfg = cfg
        gpt2 = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.window, n_embd=cfg.n_embd,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                          embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, use_cache=False,
                          bos_token_id=None, eos_token_id=None)
        gpt2._attn_implementation = "sdpa"
        self.towers = nn.ModuleList([GPT2Model(gpt2), GPT2Model(gpt2)])
        # Shared token and position embeddings: tower b uses tower a's modules.
        self.towers[1].wte = self.towers[0].wte
        self.towers[1].wpe = self.towers[0].wpe
        d = cfg.n_embd
        self.ln_concat = nn.LayerNorm(2 * d)
        self.dense = nn.Linear(2 * d, d)
        self.act = nn.GELU()
        self.ln_out = nn.LayerNorm(d)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    @property
    def wte(self):
        return self.towers[0].wte

    def tower_states(self, input_ids):
        """Final hidden state (after each tower's ln_f) of both towers: two (B, T, d) tensors."""
        return tuple(tower(input_ids=input_ids).last_hidden_state for tower in self.towers)

    def joint_layernorm_halves(self, input_ids):
        """The joint head's first LayerNorm on the concatenated tower states, LN_1([h_a ; h_b]), cut into
        tower a's and tower b's d-dimensional halves. Normalised over all 2d values with the trained affine
        weights, so a tower whose states are larger keeps its larger share (the authors' per-tower head input)."""
        joint = self.ln_concat(torch.cat(self.tower_states(input_ids), dim=-1))
        d = self.cfg.n_embd
        return joint[..., :d], joint[..., d:]

    def forward(self, input_ids):
        a, b = self.tower_states(input_ids)
        h = self.ln_out(self.act(self.dense(self.ln_concat(torch.cat([a, b], dim=-1)))))
        return h @ self.wte.weight.T + self.out_bias

    def tower_parameters(self, which: int):
        """Parameters owned by one tower alone (its blocks and final LayerNorm, not the shared embeddings)."""
        shared = {id(p) for p in self.towers[0].wte.parameters()} | {id(p) for p in self.towers[0].wpe.parameters()}
        return [p for p in self.towers[which].parameters() if id(p) not in shared]


HEAD_INPUTS = ("joint_layernorm", "fresh_layernorm")


class TowerHead(nn.Module):
    """Untied per-tower head on one tower's d-dimensional input.

    input joint_layernorm (default, the authors'): the head reads the tower's half of the frozen joint
      LayerNorm output (`TwoTowerLM.joint_layernorm_halves`), already normalised:
      mlp    = Dense + GELU -> LayerNorm -> Linear(d, V) + bias (the rest of the joint head, on one half);
      linear = Linear(d, V) + bias.
    input fresh_layernorm (our former variant): the head reads the raw tower state and starts with its own,
      trainable LayerNorm, which erases scale differences between the towers:
      mlp    = LayerNorm -> Dense + GELU -> LayerNorm -> Linear(d, V) + bias;
      linear = LayerNorm -> Linear(d, V) + bias.
    """

    def __init__(self, d: int, vocab_size: int, kind: str = "mlp", input: str = "joint_layernorm"):
        super().__init__()
        if input not in HEAD_INPUTS:
            raise ValueError(f"head input must be one of {HEAD_INPUTS}, got {input!r}")
        self.input = input
        first = [nn.LayerNorm(d)] if input == "fresh_layernorm" else []
        if kind == "mlp":
            self.body = nn.Sequential(*first, nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        elif kind == "linear":
            self.body = nn.Sequential(*first) if first else nn.Identity()
        else:
            raise ValueError(f"head kind must be 'mlp' or 'linear', got {kind!r}")
        self.out = nn.Linear(d, vocab_size)

    def forward(self, states):
        return self.out(self.body(states))


def head_inputs(model, input_ids, input: str = "joint_layernorm"):
    """What the per-tower heads read (see TowerHead): (tower a's, tower b's) (B, T, d) tensors."""
    if input == "joint_layernorm":
        return model.joint_layernorm_halves(input_ids)
    if input == "fresh_layernorm":
        return model.tower_states(input_ids)
    raise ValueError(f"head input must be one of {HEAD_INPUTS}, got {input!r}")


def _halves(tensor, d: int):
    return tensor[..., :d], tensor[..., d:]


def swap_towers(model) -> None:
    """Relabel the towers in place: exchange their own parameters (shared embeddings stay) and the two halves of
    the joint head's parameters that act on them (LN_1's weight and bias, the Dense's input columns), so the joint
    model computes the same function and tower a's head input becomes tower b's."""
    d = model.cfg.n_embd
    with torch.no_grad():
        pairs = list(zip(model.tower_parameters(0), model.tower_parameters(1)))
        pairs += [_halves(model.ln_concat.weight, d), _halves(model.ln_concat.bias, d),
                  _halves(model.dense.weight, d)]
        for pa_, pb in pairs:
            tmp = pa_.detach().clone()
            pa_.copy_(pb)
            pb.copy_(tmp)


def make_towers_identical(model) -> None:
    """The forced-identical control: copy tower a's own parameters into tower b, and the first half of the joint
    LayerNorm's weight and bias into the second, so both heads read identical inputs (in place)."""
    d = model.cfg.n_embd
    with torch.no_grad():
        pairs = list(zip(model.tower_parameters(0), model.tower_parameters(1)))
        pairs += [_halves(model.ln_concat.weight, d), _halves(model.ln_concat.bias, d)]
        for pa_, pb in pairs:
            pb.copy_(pa_)


# ========================================================================================== training
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


def fingerprint(*parts) -> str:
    """A short hash of the settings a checkpoint belongs to (resume only into the same run)."""
    text = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def make_optimizer(model, train: TrainConfig):
    """AdamW (paper: Adam, lr 1e-3, weight decay 0.01) with linear warm-up, then constant."""
    frozen = set()
    if train.freeze_tower is not None:
        which = {"a": 0, "b": 1}[train.freeze_tower]
        for p in model.tower_parameters(which):
            p.requires_grad_(False)
            frozen.add(id(p))
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


def _atomic_torch_save(obj, path) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())


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
        state = torch.load(last, map_location=device, weights_only=False)
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
                            "model_config": asdict(model_cfg), "vocab_ids": corpus.vocab_ids,
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
        state = torch.load(path, map_location=device or "cpu", weights_only=False)
        model = TwoTowerLM(TowerConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (OSError, KeyError, RuntimeError) as err:
        raise WorkflowInputError(f"{path} is not a readable two-tower snapshot ({err}); delete it and rerun.") from err
    model.eval()
    return model.to(device or "cpu"), state


# ==================================================================================== per-tower heads
@dataclass
class HeadConfig:
    kind: str = "mlp"
    input: str = "joint_layernorm"  # the authors'; fresh_layernorm: our former variant (see TowerHead)
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0


def train_tower_heads(model, corpus: Corpus, head: HeadConfig, device=None):
    """Freeze the towers; train one untied head per tower on that tower's own d-dim input (`head.input`: by
    default its half of the frozen joint LayerNorm output).

    Both heads start from the same initial weights and see the same batches, so the measurement treats
    the two towers identically: swapping the towers swaps the heads exactly.
    """
    device = device or torch.device("cpu")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    d, vocab = model.cfg.n_embd, model.cfg.vocab_size
    torch.manual_seed(int(head.seed))
    first = TowerHead(d, vocab, head.kind, head.input)
    heads = [first, TowerHead(d, vocab, head.kind, head.input)]
    heads[1].load_state_dict(first.state_dict())
    heads = [h.to(device).train() for h in heads]
    optimizers = [torch.optim.AdamW(h.parameters(), lr=head.learning_rate, weight_decay=head.weight_decay)
                  for h in heads]
    started = time.perf_counter()
    losses = [[], []]
    for step in range(head.steps):
        batch = torch.as_tensor(random_windows(corpus.train_ids, model.cfg.window, head.batch_size,
                                               head.seed + 7919, step), device=device)
        with torch.no_grad():
            states = head_inputs(model, batch[:, :-1], head.input)
        for k in (0, 1):
            logits = heads[k](states[k])
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), batch[:, 1:])
            optimizers[k].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[k].step()
            losses[k].append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == head.steps:
            LOG.info("heads step %d/%d  loss a %.4f  b %.4f  (%.1f s)", step + 1, head.steps,
                     np.mean(losses[0][-50:]), np.mean(losses[1][-50:]), time.perf_counter() - started)
    for h in heads:
        h.eval()
    return heads


def heldout_logprobs(model, heads, corpus: Corpus, device=None, batch_size: int = 32):
    """Per held-out target token (the test split): its example id, stream position, model-vocab id and the
    log-probability of it under head a, head b and the joint model. Returns a dict of equal-length numpy arrays."""
    device = device or torch.device("cpu")
    if heads[0].input != heads[1].input:
        raise ValueError(f"the two heads read different inputs ({heads[0].input!r}, {heads[1].input!r})")
    windows, mask, index = eval_windows(corpus.test_ids, model.cfg.window)
    out = {"position": [], "class": [], "logp_a": [], "logp_b": [], "logp_joint": []}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = torch.as_tensor(windows[start:start + batch_size], device=device)
            m = mask[start:start + batch_size]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            states = head_inputs(model, inputs, heads[0].input)
            joint = model(inputs)

            def true_logp(logits):
                return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0].cpu().numpy()

            out["logp_a"].append(true_logp(heads[0](states[0]))[m])
            out["logp_b"].append(true_logp(heads[1](states[1]))[m])
            out["logp_joint"].append(true_logp(joint)[m])
            out["class"].append(targets.cpu().numpy()[m])
            out["position"].append(index[start:start + batch_size][m])
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["example_id"] = corpus.test_example[result["position"]]
    result["token_id"] = corpus.vocab_ids[result["class"]]
    return result


# ============================================================================== Snakemake glue
def _section(snakemake) -> dict:
    return dict(snakemake.params.twotower)


def model_config(section: dict, vocab_size: int) -> TowerConfig:
    return TowerConfig(vocab_size=int(vocab_size), window=section["window"], n_layer=section["n_layer"],
                       n_embd=section["n_embd"], n_head=section["n_head"], dropout=section["dropout"])


def train_config(section: dict) -> TrainConfig:
    return TrainConfig(steps=section["steps"], batch_size=section["batch_size"],
                       learning_rate=section["learning_rate"], weight_decay=section["weight_decay"],
                       warmup_steps=section["warmup_steps"], grad_clip=section["grad_clip"],
                       eval_every=section["eval_every"], eval_max_windows=section["eval_max_windows"],
                       checkpoint_every=section["checkpoint_every"],
                       snapshot_steps=tuple(measure_steps(section)), freeze_tower=section["freeze_tower"])


def head_config(section: dict) -> HeadConfig:
    head = section["head"]
    return HeadConfig(kind=head["kind"], input=head["input"], steps=head["steps"], batch_size=head["batch_size"],
                      learning_rate=head["learning_rate"], weight_decay=head["weight_decay"], seed=head["seed"])


def measure_steps(section: dict) -> list[int]:
    """Training steps whose snapshot is measured: the configured ones and the final step."""
    return sorted(set(int(s) for s in section["measure_steps"]) | {int(section["steps"])})


def _setup_torch(snakemake):
    from lmcompare.models.loading import pick_device

    torch.set_num_threads(max(1, int(snakemake.threads)))
    device = pick_device(snakemake.params.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def main_corpus(snakemake) -> None:
    from lmcompare.models.loading import load_tokenizer

    section = _section(snakemake)
    frame = files.read_dataset(snakemake.input.dataset)
    tokenizer = load_tokenizer(snakemake.input.model)
    where = f"dataset {snakemake.wildcards.dataset!r} with the tokenizer of model {snakemake.wildcards.model!r}"
    corpus = build_corpus(frame, tokenizer, window=section["window"], separator=section["separator_token"],
                          vocabulary=section["vocabulary"], where=where,
                          max_train_tokens=section["max_train_tokens"])
    LOG.info("corpus: %s", corpus.info)
    save_corpus(corpus, snakemake.output.corpus)
    files.write_json(corpus.info, snakemake.output.info)


def main_train(snakemake) -> None:
    import shutil

    import pandas as pd

    section = _section(snakemake)
    device = _setup_torch(snakemake)
    corpus = load_corpus(snakemake.input.corpus)
    seed = int(snakemake.wildcards.seed)
    model_cfg = model_config(section, corpus.vocab_size)
    train = train_config(section)
    work_dir = Path(snakemake.params.work_dir)
    LOG.info("training seed %d on %d train tokens for %d steps (checkpoints in %s)", seed,
             len(corpus.train_ids), train.steps, work_dir)
    _, history = train_two_tower(corpus, model_cfg, train, seed, work_dir, device=device)
    frame = pd.DataFrame(history)
    frame.insert(0, "model", snakemake.wildcards.model)
    frame.insert(1, "dataset", snakemake.wildcards.dataset)
    frame.insert(2, "seed", seed)
    frame["n_test_loss_tokens"] = int(min(len(corpus.test_ids) - 1,
                                    (train.eval_max_windows or 10**12) * model_cfg.window))
    for step, target in zip(measure_steps(section), snakemake.output.snapshots):
        with files.atomic_path(target) as tmp:
            shutil.copyfile(work_dir / snapshot_name(step), tmp)
    files.write_table(frame, snakemake.output.history)
    shutil.rmtree(work_dir, ignore_errors=True)  # finished: a later rerun must not resume a finished run
    LOG.info("final test-split loss %.4f (step 0: %.4f); %d train tokens", history[-1]["test_loss"],
             history[0]["test_loss"], len(corpus.train_ids))


def main_measure(snakemake) -> None:
    import pandas as pd

    section = _section(snakemake)
    device = _setup_torch(snakemake)
    corpus = load_corpus(snakemake.input.corpus)
    model, state = load_snapshot(snakemake.input.snapshot, device)
    if not np.array_equal(np.asarray(state["vocab_ids"]), corpus.vocab_ids):
        raise WorkflowInputError(
            f"{snakemake.input.snapshot} was trained on another vocabulary than {snakemake.input.corpus}; "
            f"delete the two-tower results of this dataset/model and rerun."
        )
    head = head_config(section)
    LOG.info("per-tower heads: kind %s, input %s, %d steps", head.kind, head.input, head.steps)
    heads = train_tower_heads(model, corpus, head, device)
    result = heldout_logprobs(model, heads, corpus, device)
    frame = pd.DataFrame({
        "example_id": result["example_id"], "position": result["position"], "token_id": result["token_id"],
        "logp_a": result["logp_a"].astype(np.float32), "logp_b": result["logp_b"].astype(np.float32),
        "logp_joint": result["logp_joint"].astype(np.float32),
    })
    frame.insert(0, "seed", int(snakemake.wildcards.seed))
    frame.insert(1, "step", int(state["step"]))
    LOG.info("held-out: %d target tokens; mean log p: head a %.4f, head b %.4f, joint %.4f", len(frame),
             frame["logp_a"].mean(), frame["logp_b"].mean(), frame["logp_joint"].mean())
    files.write_table(frame, snakemake.output.logprobs)


def main(snakemake) -> None:
    with contextlib.nullcontext():  # TRANSITIONAL: the rule script opens the job log
        rule = snakemake.rule
        if rule == "twotower_corpus":
            main_corpus(snakemake)
        elif rule == "twotower_train":
            main_train(snakemake)
        elif rule == "twotower_measure":
            main_measure(snakemake)
        else:
            raise ValueError(f"twotower.py does not implement rule {rule!r}")

