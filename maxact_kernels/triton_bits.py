"""Shared Triton helper: exact float32 bit patterns of loaded activations.

Every statistic is computed on the float32 bits of x (|x| = bits & 0x7FFFFFFF), so no float arithmetic
can flush subnormals. bfloat16 is widened by a 16-bit shift rather than a float conversion: exact on
every target, including Triton's interpreter (whose bf16 -> fp32 conversion loses subnormals).
"""

import os

import triton
import triton.language as tl


def _interpreting() -> bool:
    """Whether @triton.jit functions decorated now run in Triton's interpreter (TRITON_INTERPRET)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRETED = _interpreting()


@triton.jit
def load_f32_bits(ptrs, mask):
    """int32 float32-bit-pattern of ``tl.load(ptrs, mask)`` (masked lanes: 0, i.e. +0.0)."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if x.dtype == tl.bfloat16:
        bits = x.to(tl.int16, bitcast=True).to(tl.int32) << 16
    else:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    return bits


# The kernels avoid the @triton.jit functions of triton.language.standard (tl.sum, tl.max, tl.min,
# tl.cdiv, tl.zeros): they are compiled, not interpreted, when triton was imported before
# TRITON_INTERPRET was set (torch or transformers often import it first), and the interpreter cannot
# call them. tl.reduce is patched by the interpreter, which recognises the standard combine functions
# and reduces with numpy; tl.full replaces tl.zeros. Inputs here are int32 / float32 / float64 already.
@triton.jit
def reduce_sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def reduce_max(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def reduce_min(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@triton.jit
def ceil_div(a, b):
    return (a + b - 1) // b
