"""The two-tower language model (He & Toyoizumi, arXiv:2210.07041) and the relabelling of its towers.

Two GPT-2 towers of identical configuration share the token and position embeddings. Their final hidden states
are concatenated -> LayerNorm -> Dense + GELU -> LayerNorm -> output projection tied to the input embedding
(+ bias); one softmax. `swap_towers` exchanges the towers (the joint model's function unchanged),
`make_towers_identical` is the forced-identical control. `model_config` reads the twotower config section and
`job_device` picks where a job runs.
"""

from dataclasses import dataclass

import torch
from torch import nn


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


def model_config(section: dict, vocab_size: int) -> TowerConfig:
    """The model of the twotower config section, with `vocab_size` output classes (the corpus's)."""
    return TowerConfig(vocab_size=int(vocab_size), window=section["window"], n_layer=section["n_layer"],
                       n_embd=section["n_embd"], n_head=section["n_head"], dropout=section["dropout"])


def job_device(name: str):
    """The torch device a two-tower job runs on (twotower.device; models.loading.pick_device), with TF32 matmuls
    allowed on CUDA."""
    from lmcompare.models.loading import pick_device

    device = pick_device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


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
