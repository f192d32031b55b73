"""Emulate a GPU's reduced-precision forward pass (bf16, fp16, tf32) on a CPU at float32 speed.

A model run on a GPU in bf16 (what `extraction.compute_dtype: auto` picks there) stores its weights in bf16 and
rounds the output of every kernel to bf16, while each kernel computes inside in float32 (matrix products
accumulate in float32, LayerNorm and softmax reduce in float32). On a CPU without bf16 instructions a real bf16
model runs ~25x slower than float32 (measured on this project's 2-core machine), too slow for a whole default run.
`emulated_precision(model, "bfloat16")` gives the same arithmetic at float32 speed: the weights are rounded to
bf16 once, and a dispatch mode rounds every floating-point output of every ATen op of the model's forward to
bf16 (kept as float32 values). fp16 is the same with fp16 rounding (overflow to inf included); tf32 rounds only
the inputs of matrix products to tf32 (10 mantissa bits) and keeps everything else in float32, as a GPU's TF32
tensor cores do. Fused CPU kernels (scaled-dot-product attention) round only their output, so the emulation is
slightly finer than a GPU kernel that rounds its internal probabilities; tests/test_precision_emulation.py
compares it with a real bf16 forward.
"""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PRECISIONS = ("float32", "tf32", "float16", "bfloat16")
# ATen ops whose inputs a TF32 tensor core rounds (matrix products and convolutions)
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_scaled_dot_product_flash_attention_for_cpu",
               "_scaled_dot_product_attention_math", "addbmm", "dot", "mv"}


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to tf32 (10 explicit mantissa bits), round-to-nearest-even; inf/nan unchanged."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0x0FFF + lsb) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


def round_to(x: torch.Tensor, precision: str) -> torch.Tensor:
    """float32 tensor rounded to `precision` and returned as float32 (other dtypes untouched)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or precision == "float32":
        return x
    if precision == "bfloat16":
        return x.to(torch.bfloat16).to(torch.float32)
    if precision == "float16":
        return x.to(torch.float16).to(torch.float32)
    if precision == "tf32":
        return round_to_tf32(x)
    raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


class RoundingMode(TorchDispatchMode):
    """Round op outputs (bf16, fp16) or matrix-product inputs (tf32) to the emulated precision."""

    def __init__(self, precision: str):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self.precision = precision

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.precision == "tf32":
            if func.overloadpacket.__name__ in _MATMUL_OPS:
                args = _map(args, lambda t: round_to(t, "tf32"))
                kwargs = _map(kwargs, lambda t: round_to(t, "tf32"))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        return _map(out, lambda t: round_to(t, self.precision))


def round_weights(model, precision: str):
    """Round every floating-point parameter and buffer in place (tf32 keeps float32 weights, as a GPU does)."""
    if precision in ("bfloat16", "float16"):
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                if tensor.dtype == torch.float32:
                    tensor.copy_(round_to(tensor, precision))
    return model


def emulate(model, precision: str):
    """Round the model's weights and wrap its forward so that it runs in the emulated precision."""
    if precision == "float32":
        return model
    round_weights(model, precision)
    forward = model.forward

    def rounded_forward(*args, **kwargs):
        with RoundingMode(precision):
            return forward(*args, **kwargs)

    model.forward = rounded_forward
    return model


@contextlib.contextmanager
def rounding(precision: str):
    """Context form of the dispatch mode (for a bare computation, not a model)."""
    if precision == "float32":
        yield
        return
    with RoundingMode(precision):
        yield
