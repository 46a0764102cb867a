"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU.

The interpreter (how the other CPU tests run the kernels) accepts programs the compiler rejects, so
this compiles each kernel variant ahead of time with Triton's bundled ptxas, in a subprocess free of
TRITON_INTERPRET (the test process may already hold interpreted kernels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from maxact_kernels import triton_rows as R, triton_tokens as T, triton_topk as K

dtypes = sys.argv[1].split(",")
target = GPUTarget("cuda", 90, 32)


def comp(fn, sig, const, warps=8):
    full = dict(sig)
    full.update({k: "constexpr" for k in const})
    triton.compile(ASTSource(fn=fn, signature=full, constexprs=const), target=target, options={"num_warps": warps})
    print("compiled", fn.__name__, sorted(const.items()), flush=True)


for dt in dtypes:
    rows_sig = dict(x_ptr=f"*{dt}", mask_ptr="*u8", counts_ptr="*i64", sums_ptr="*fp64", minmax_ptr="*fp32",
                    hist_ptr="*i64", chan_ptr="*i32", rowpack_ptr="*i64", stride_row="i64", n_rows="i32", n_cols="i32")
    for flags in ((True, True, True, True, True), (False, False, False, True, False)):
        names = ("HAS_MASK", "DO_BASIC", "DO_HIST", "DO_CHANNELS", "DO_ROWPACK")
        comp(R._rows_kernel, rows_sig, {**dict(zip(names, flags)), "BLOCK_R": 4, "BLOCK_C": 1024, "FLUSH_TILES": 16})
    tok_sig = dict(x_ptr=f"*{dt}", mask_ptr="*u8", sid_ptr="*i64", pos_ptr="*i64", row_absmax_ptr="*fp32",
                   umax_ptr="*fp32", params_ptr="*fp64", tok_counts_ptr="*i64", ratio_sums_ptr="*fp64",
                   part_f_ptr="*fp64", part_i_ptr="*i64", stride_row="i64", n_rows="i32", n_cols="i32")
    shift, nbits = {"bf16": (16, 15), "fp16": (13, 18), "fp32": (0, 31)}[dt]
    for find in (False, True):
        comp(T._token_records_kernel, dict(part_f_ptr="*fp64", part_i_ptr="*i64", rec_f_ptr="*fp64",
                                           rec_i_ptr="*i64", x_ptr=f"*{dt}", stride_row="i64", n_cols="i32",
                                           n_parts="i32"), dict(BLOCK_P=256, FIND_CHANNEL=find, BLOCK_C=2048),
             warps=4)
    for one, cand in ((True, False), (False, True)):
        comp(T._tokens_kernel, tok_sig, dict(HAS_MASK=True, HAS_SIDS=True, HAS_POS=True, CANDIDATES=cand,
                                             ONE_BLOCK=one, SHIFT=shift, NBITS=nbits, BLOCK_R=1, BLOCK_C=4096))
    comp(K._topk_elems_kernel, dict(x_ptr=f"*{dt}", row_part_ptr="*i64", sel_ptr="*i64", elem_part_ptr="*i64",
                                    kept_abs_ptr="*fp32", stride_row="i64", n_row_parts="i32", n_cols="i32", K="i32"),
         dict(KB=16, BLOCK_C=4096, CAND_BLOCK=64))
    comp(K._topk_merge_kernel, dict(x_ptr=f"*{dt}", elem_part_ptr="*i64", sel_ptr="*i64", sid_ptr="*i64",
                                    pos_ptr="*i64", out_abs_ptr="*fp32", out_val_ptr="*fp32", out_idx_ptr="*i64",
                                    stride_row="i64", n_parts="i32", n_cols="i32", K="i32", slot0="i32"),
         dict(HAS_SIDS=True, HAS_POS=False, KB=16, CAND_BLOCK=1024))
comp(R._finalize_rows_kernel, dict(rowpack_ptr="*i64", row_absmax_ptr="*fp32", sid_ptr="*i64", smax_ptr="*i32",
                                   oor_ptr="*i64", n_rows="i32", n_samples="i32"), dict(HAS_SIDS=True, DO_ROWS=True, DO_SAMPLES=True, BLOCK=1024))
comp(K._topk_rows_kernel, dict(row_absmax_ptr="*fp32", kept_abs_ptr="*fp32", part_ptr="*i64", n_rows="i32", K="i32"), dict(KB=16, BLOCK=4096))
for cand, listed in ((False, False), (True, False), (True, True)):
    comp(T._tokens_rows_kernel, dict(row_absmax_ptr="*fp32", row_med_ptr="*fp32",
                                     sid_ptr="*i64", pos_ptr="*i64", params_ptr="*fp64", tok_counts_ptr="*i64",
                                     ratio_sums_ptr="*fp64", part_f_ptr="*fp64", part_i_ptr="*i64",
                                     list_ptr="*i32", list_n_ptr="*i32", rec_f_ptr="*fp64", rec_i_ptr="*i64",
                                     x_ptr=f"*{dtypes[0]}", stride_row="i64", n_cols="i32", n_rows="i32"),
         dict(HAS_SIDS=True, HAS_POS=cand, CANDIDATES=cand, LIST=listed, BLOCK=256, BLOCK_C=2048), warps=1)
comp(K._topk_compact_kernel, dict(abs_ptr="*fp32", val_ptr="*fp32", idx_ptr="*i64", n="i32", K="i32"),
     dict(BLOCK=512, KB=16))
"""


def compile_for_sm90(dtypes: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, dtypes], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"compilation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("compiled") >= 10


def test_kernels_compile_for_sm90_bf16():
    compile_for_sm90("bf16")


@pytest.mark.slow
def test_kernels_compile_for_sm90_fp16_fp32():
    compile_for_sm90("fp16,fp32")
