"""Per-tower measurement: untied heads on the frozen towers, and their held-out log-probabilities.

The trained towers are frozen; one untied head per tower is trained on that tower's own half of the
representation - by default (`head.input: joint_layernorm`, the authors') the tower's half of the frozen joint
LayerNorm output LN_1([h_a ; h_b]). On held-out text (the test split) each head's log-probability of the true next
token is recorded per occurrence (preference.py turns these into per-type preferences). `measure_run` is what rule
twotower_measure does.
"""

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmcompare import files
from lmcompare.errors import WorkflowInputError
from lmcompare.twotower.corpus import Corpus, eval_windows, load_corpus, random_windows
from lmcompare.twotower.training import load_snapshot

LOG = logging.getLogger("workflow")


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


@dataclass
class HeadConfig:
    kind: str = "mlp"
    input: str = "joint_layernorm"  # the authors'; fresh_layernorm: our former variant (see TowerHead)
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0


def head_config(section: dict) -> HeadConfig:
    """The per-tower heads of the twotower config section (its `head` keys)."""
    head = section["head"]
    return HeadConfig(kind=head["kind"], input=head["input"], steps=head["steps"], batch_size=head["batch_size"],
                      learning_rate=head["learning_rate"], weight_decay=head["weight_decay"], seed=head["seed"])


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


def measure_run(corpus_path, snapshot_path, section: dict, seed: int, logprobs_path, *, device) -> None:
    """Rule twotower_measure: train the per-tower heads (`section["head"]`) on one snapshot's frozen towers and
    write every held-out target token's log-probabilities (seed, step, example_id, position, token_id, logp_a,
    logp_b, logp_joint; float32)."""
    import pandas as pd

    corpus = load_corpus(corpus_path)
    model, state = load_snapshot(snapshot_path, device)
    if not np.array_equal(np.asarray(state["vocab_ids"]), corpus.vocab_ids):
        raise WorkflowInputError(
            f"{snapshot_path} was trained on another vocabulary than {corpus_path}; "
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
    frame.insert(0, "seed", int(seed))
    frame.insert(1, "step", int(state["step"]))
    LOG.info("held-out: %d target tokens; mean log p: head a %.4f, head b %.4f, joint %.4f", len(frame),
             frame["logp_a"].mean(), frame["logp_b"].mean(), frame["logp_joint"].mean())
    files.write_table(frame, logprobs_path)
