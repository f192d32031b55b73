"""The per-tower head input (issue 13, item 7): by default, as in the authors' code, each tower's head reads that
tower's half of the frozen joint LayerNorm output LN_1([h_a ; h_b]); `fresh_layernorm` (our former variant) reads
the raw tower state through a LayerNorm of its own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmcompare import twotower as tt

pytestmark = pytest.mark.unit

torch.set_num_threads(1)

TINY = dict(vocab_size=20, window=8, n_layer=1, n_embd=6, n_head=2)


def tiny_model(seed=0):
    model = tt.build_model(tt.TowerConfig(**TINY), seed=seed)
    with torch.no_grad():  # a trained-looking joint LayerNorm: non-trivial weight and bias
        generator = torch.Generator().manual_seed(seed + 1)
        model.ln_concat.weight.copy_(1 + 0.5 * torch.randn(2 * TINY["n_embd"], generator=generator))
        model.ln_concat.bias.copy_(0.3 * torch.randn(2 * TINY["n_embd"], generator=generator))
    return model.eval()


def layer_norm_numpy(x, weight, bias, eps):
    """LayerNorm over the last axis, written out: (x - mean) / sqrt(population variance + eps) * weight + bias."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def test_default_head_input_is_the_towers_half_of_the_frozen_joint_layernorm():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (3, TINY["window"]), generator=torch.Generator().manual_seed(2))
    d = TINY["n_embd"]
    with torch.no_grad():
        a, b = model.tower_states(ids)
        got_a, got_b = tt.head_inputs(model, ids, tt.HeadConfig().input)
    concat = torch.cat([a, b], dim=-1).double().numpy()
    expected = layer_norm_numpy(concat, model.ln_concat.weight.detach().double().numpy(),
                                model.ln_concat.bias.detach().double().numpy(), model.ln_concat.eps)
    np.testing.assert_allclose(got_a.numpy(), expected[..., :d], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_b.numpy(), expected[..., d:], rtol=1e-5, atol=1e-5)
    # and it is the joint model's own first step: the joint head continues from exactly this tensor
    with torch.no_grad():
        joint = model.ln_out(model.act(model.dense(torch.cat([got_a, got_b], -1)))) @ model.wte.weight.T
        assert torch.allclose(joint + model.out_bias, model(ids), atol=1e-5)
    # the former variant reads the raw tower states
    with torch.no_grad():
        raw_a, raw_b = tt.head_inputs(model, ids, "fresh_layernorm")
    assert torch.equal(raw_a, a) and torch.equal(raw_b, b)
    with pytest.raises(ValueError, match="head input"):
        tt.head_inputs(model, ids, "other")


def test_the_schema_default_is_the_authors_input():
    schema = yaml.safe_load((Path(__file__).parents[1] / "schemas/twotower.schema.yaml").read_text())
    head = schema["properties"]["head"]["properties"]
    assert head["input"]["default"] == tt.HeadConfig().input == "joint_layernorm"
    assert set(head["input"]["enum"]) == set(tt.HEAD_INPUTS)


def test_joint_layernorm_keeps_a_scale_difference_that_a_fresh_layernorm_erases():
    """Tower b's final LayerNorm scaled by 3: its states are 3x tower a's in size. The joint LayerNorm normalises
    over both towers, so b's half stays larger; a head's own LayerNorm would make both halves unit-scale."""
    model = tiny_model()
    with torch.no_grad():
        model.ln_concat.weight.fill_(1.0)
        model.ln_concat.bias.zero_()
        model.towers[1].ln_f.weight.mul_(3.0)
    ids = torch.randint(0, TINY["vocab_size"], (2, TINY["window"]), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        half_a, half_b = tt.head_inputs(model, ids, "joint_layernorm")
        raw_a, raw_b = tt.head_inputs(model, ids, "fresh_layernorm")
        fresh = torch.nn.LayerNorm(TINY["n_embd"], elementwise_affine=False)
        fresh_a, fresh_b = fresh(raw_a), fresh(raw_b)
    ratio_joint = float(half_b.norm(dim=-1).mean() / half_a.norm(dim=-1).mean())
    ratio_fresh = float(fresh_b.norm(dim=-1).mean() / fresh_a.norm(dim=-1).mean())
    assert ratio_joint > 2.0 and ratio_fresh == pytest.approx(1.0, abs=0.05)


def test_heads_train_and_measure_on_the_configured_input():
    corpus_ids = np.tile(np.arange(TINY["vocab_size"]), 8).astype(np.int64)
    corpus = tt.Corpus(corpus_ids, corpus_ids[:60], np.zeros(60, dtype=np.int64),
                       np.arange(TINY["vocab_size"], dtype=np.int64), None, {})
    for kind in ("mlp", "linear"):
        for input in tt.HEAD_INPUTS:
            model = tiny_model()
            heads = tt.train_tower_heads(model, corpus, tt.HeadConfig(kind=kind, input=input, steps=2, batch_size=2))
            assert [h.input for h in heads] == [input, input]
            has_own_norm = isinstance(heads[0].body, torch.nn.Sequential) and len(heads[0].body) > 0 and \
                isinstance(heads[0].body[0], torch.nn.LayerNorm)
            assert has_own_norm == (input == "fresh_layernorm")
            result = tt.heldout_logprobs(model, heads, corpus)
            windows, mask, _ = tt.eval_windows(corpus.test_ids, TINY["window"])
            inputs = torch.as_tensor(windows)
            with torch.no_grad():
                half_a, _ = tt.head_inputs(model, inputs[:, :-1], input)
                logp = torch.log_softmax(heads[0](half_a), -1).gather(-1, inputs[:, 1:, None])[..., 0].numpy()
            np.testing.assert_allclose(result["logp_a"], logp[mask], atol=1e-5)


def test_swap_relabels_the_towers_and_keeps_the_joint_model():
    model = tiny_model(seed=4)
    ids = torch.randint(0, TINY["vocab_size"], (2, TINY["window"]), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before_a, before_b = tt.head_inputs(model, ids)
        joint = model(ids)
        tt.swap_towers(model)
        after_a, after_b = tt.head_inputs(model, ids)
        assert torch.allclose(model(ids), joint, atol=1e-5)
    assert torch.allclose(after_a, before_b, atol=1e-6) and torch.allclose(after_b, before_a, atol=1e-6)
    tt.make_towers_identical(model)
    with torch.no_grad():
        same_a, same_b = tt.head_inputs(model, ids)
    assert torch.equal(same_a, same_b)
