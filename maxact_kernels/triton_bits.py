"""Shared Triton helper: exact float32 bit patterns of loaded activations.

Every statistic is computed on the float32 bits of x (|x| = bits & 0x7FFFFFFF), so no float arithmetic
can flush subnormals. bfloat16 is widened by a 16-bit shift rather than a float conversion: exact on
every target, including Triton's interpreter (whose bf16 -> fp32 conversion loses subnormals).
"""

import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def load_f32_bits(ptrs, mask):
    """int32 float32-bit-pattern of ``tl.load(ptrs, mask)`` (masked lanes: 0, i.e. +0.0)."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if x.dtype == tl.bfloat16:
        bits = x.to(tl.int16, bitcast=True).to(tl.int32) << 16
    else:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    return bits
