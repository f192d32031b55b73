"""The CPU emulation of a GPU's bf16 / fp16 / tf32 forward pass (workflow_scripts/precision_emulation.py) that
benchmarks/bf16_vs_fp32.py uses: its rounding is exact, and an emulated bf16 model is as far from float32 as a real
bf16 model (torch's own bf16 kernels on the CPU), while its own distance to that real one is of the same size
(two bf16 computations that round at slightly different places)."""
import copy

import numpy as np
import pytest
import torch

from lmcompare.extraction.precision import emulate, round_to, round_to_tf32

pytestmark = pytest.mark.unit


def test_rounding_matches_the_formats():
    x = torch.tensor([1.0, 1 + 2 ** -8, 1 + 2 ** -7 + 2 ** -9, 3.14159265, -2.5e-3, 7e4, float("inf"), float("nan")])
    np.testing.assert_array_equal(round_to(x, "bfloat16").numpy(), x.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(round_to(x, "float16").numpy(), x.half().float().numpy())
    tf32 = round_to_tf32(x).numpy()
    finite = np.isfinite(x.numpy())
    # tf32 keeps 10 mantissa bits: the rounding error is at most half a unit in the 10th bit
    mantissa_step = 2.0 ** (np.floor(np.log2(np.abs(x.numpy()[finite]))) - 10)
    assert np.all(np.abs(tf32[finite] - x.numpy()[finite]) <= mantissa_step / 2)
    assert tf32[0] == 1.0 and np.isinf(tf32[6]) and np.isnan(tf32[7])
    # round-to-nearest-even on a tie: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 -> 1
    assert round_to_tf32(torch.tensor([1 + 2 ** -11]))[0].item() == 1.0
    assert round_to_tf32(torch.tensor([1 + 3 * 2 ** -11]))[0].item() == 1 + 2 ** -9


def _relative(a, b):
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).median())


def test_emulated_bf16_is_as_far_from_float32_as_a_real_bf16_model(tiny_models):
    from transformers import AutoModel, AutoTokenizer

    from tests.conftest import make_corpus_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    model = AutoModel.from_pretrained(tiny_models["bert"]).eval()
    texts, _ = make_corpus_texts(16)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    mask = encoded["attention_mask"].bool()
    with torch.inference_mode():
        reference = model(**encoded).last_hidden_state[mask]
        real = copy.deepcopy(model).to(torch.bfloat16)(**encoded).last_hidden_state.float()[mask]
        emulated = {p: emulate(copy.deepcopy(model), p)(**encoded).last_hidden_state[mask]
                    for p in ("bfloat16", "float16", "tf32")}
    real_error, emulated_error = _relative(real, reference), _relative(emulated["bfloat16"], reference)
    assert 0.5 < emulated_error / real_error < 2, (emulated_error, real_error)
    assert _relative(emulated["bfloat16"], real) < 2 * real_error
    # fp16 and tf32 keep 10 mantissa bits against bf16's 7: several times closer to float32
    assert _relative(emulated["float16"], reference) < real_error / 3
    assert _relative(emulated["tf32"], reference) < real_error / 3


def test_emulation_leaves_float32_and_integer_work_alone(tiny_models):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_models["bert"]).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.inference_mode():
        before = model(input_ids=ids).last_hidden_state
        same = emulate(copy.deepcopy(model), "float32")(input_ids=ids).last_hidden_state
    assert torch.equal(before, same)
    with pytest.raises(ValueError, match="unknown precision"):
        round_to(torch.ones(2), "int4")


def test_pick_dtype_on_the_cpu():
    from lmcompare.models.loading import AUTO_GPU_PRECISION, dtype_label, pick_dtype

    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32 and pick_dtype("tf32", cpu) == torch.float32
    assert pick_dtype("float16", cpu) == torch.float32  # no fp16 matmul kernels worth using on a CPU
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16  # exact bf16 there (slow), e.g. to check the emulation
    assert dtype_label(torch.float32, cpu) == "float32" and dtype_label(torch.bfloat16, cpu) == "bfloat16"
    assert AUTO_GPU_PRECISION in ("float32", "tf32", "float16", "bfloat16")
