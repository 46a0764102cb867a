"""The CUDA C++ fused-statistics kernel compiles on a machine without a GPU.

NVRTC (the ``nvidia-cuda-nvrtc`` wheel, driven through ``cuda-bindings``, both in the ``test`` extra)
needs no driver, so this compiles every instantiation the launcher can ask for, for the A100 (sm_80)
and the H100/H200 (sm_90), exactly as ``cuda_hist._kernel`` does on a GPU machine. It catches
syntax and template errors before a device run; the GPU checks (``test_gpu.py``) test the results.
"""

from __future__ import annotations

import itertools

import pytest
import torch

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (extra 'test')")

from maxact_kernels import cuda_hist, cuda_median  # noqa: E402

VARIANTS = [v + (False,) for v in itertools.product(range(3), (True, False), (True, False), (True, False))]
VARIANTS += [(dt, True, False, False, True) for dt in range(3)]   # the flat basic update
# the rows layout on rows of whole chunks (1) and of whole warps (2)
VARIANTS += [(dt, True, rows, ch, False, w) for dt in range(3) for rows in (True, False) for ch in (True, False)
             for w in (1, 2)]


def _nvrtc_ok():
    try:
        err, _major, _minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the library itself is missing
        return str(exc)
    return None if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else str(err)


def _compile(arch: str, names: list[str], source: str | None = None) -> tuple[bool, str, bytes]:
    src = (source if source is not None else cuda_hist._source()).encode()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"maxact_fused_stats.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        for name in names:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, name.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
        opts = [b"-std=c++17", f"--gpu-architecture={arch}".encode()]
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if res == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, psize = nvrtc.nvrtcGetPTXSize(prog)
            ptx = b" " * psize
            nvrtc.nvrtcGetPTX(prog, ptx)
        return res == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace"), ptx
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.fixture(scope="module")
def nvrtc_ready():
    problem = _nvrtc_ok()
    if problem is not None:
        pytest.skip(f"NVRTC cannot run here ({problem}); install the 'test' extra (nvidia-cuda-nvrtc)")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_variant_compiles(nvrtc_ready, arch):
    names = [cuda_hist.kernel_name(*v) for v in VARIANTS]
    ok, log, ptx = _compile(arch, names)
    assert ok, log
    assert "error" not in log.lower(), log
    # one entry point per instantiation, each with the dynamic shared memory it needs declared extern
    assert ptx.count(b".entry") == len(VARIANTS)
    assert b".extern .shared" in ptx
    # programmatic dependent launch on sm_90: every entry waits for the grid before it and releases the next
    n_pdl = len(VARIANTS) if arch == "sm_90" else 0
    assert ptx.count(b"griddepcontrol.wait") == n_pdl
    assert ptx.count(b"griddepcontrol.launch_dependents") == n_pdl


def test_launch_config_pdl():
    cc = pytest.importorskip("cuda.core", reason="cuda-core is not installed (extra 'cuda')")
    plain = cuda_hist._launch_config(cc, 130, 40000, False)
    pdl = cuda_hist._launch_config(cc, 130, 40000, True)
    assert not plain.programmatic_stream_serialization
    assert pdl.programmatic_stream_serialization
    for cfg in (plain, pdl):
        assert cfg.grid == (130, 1, 1) and cfg.block == (cuda_hist._BLOCK, 1, 1) and cfg.shmem_size == 40000


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("swar", [0, 1])
def test_median_kernel_compiles(nvrtc_ready, arch, swar, monkeypatch):
    """Every per-token median instantiation ``cuda_median.layout`` can pick (every row, listed rows, rows it
    selects), both count methods."""
    monkeypatch.setattr(cuda_median, "_SWAR", swar)
    layouts = sorted({cuda_median.layout(c) for c in range(8, 32769, 8)})
    names = [cuda_median.kernel_name(dt, nv, w, source) for dt in (0, 1) for nv, w in layouts
             for source in (0, 1, 2)]
    ok, log, ptx = _compile(arch, names, cuda_median._source())
    assert ok, log
    assert ptx.count(b".entry") == len(names)
    # sm_90 counts with packed compares unless told otherwise; older GPUs always use integer halves
    packed_compare = b"set.le.u32.bf16x2" in ptx
    assert packed_compare == (arch == "sm_90" and not swar)


def test_median_layout():
    assert cuda_median.layout(4096) == (16, 1)
    assert cuda_median.layout(640) == (4, 1)
    assert cuda_median.layout(12288) == (16, 4)
    assert cuda_median.layout(32768) == (16, 8)
    assert cuda_median.layout(32776) is None
    for c in range(8, 32769, 8):
        nv, w = cuda_median.layout(c)
        assert nv * 32 * w * 8 >= c  # the row fits its lanes' registers


def test_median_blocks_per_sm():
    # 256-thread blocks, registers allocated per warp in units of 256, 64 Ki per SM, 2048 threads per SM
    assert cuda_median._blocks_per_sm(80) == 3
    assert cuda_median._blocks_per_sm(90) == 2
    assert cuda_median._blocks_per_sm(32) == 8


def test_channel_fit_limits():
    # 16 bits per channel for bf16/fp16 (two per shared word), 32 for fp32, padded to 8 channels
    import torch

    words = cuda_hist.CHANNEL_MAX_BYTES // 4
    assert cuda_hist.channels_fit(words, torch.float32)
    assert not cuda_hist.channels_fit(words + 1, torch.float32)
    assert cuda_hist.channels_fit(2 * words, torch.bfloat16)
    assert not cuda_hist.channels_fit(2 * words + 1, torch.float16)
    assert cuda_hist.channels_fit(18944, torch.float32)       # Qwen2.5-7B's MLP width, in any dtype
    assert cuda_hist.channels_fit(27648, torch.bfloat16)      # Qwen2.5-32B's MLP width in bf16
    assert cuda_hist._channel_bytes(1, torch.float16) == 16
    assert cuda_hist._channel_bytes(9, torch.float32) == 64


def test_whole_row_variant_choice(monkeypatch):
    """Which rows-layout instantiation a row width takes: no bounds tests on rows of whole chunks (any
    dtype), one per slot on bf16 rows of whole warps, and the bounds-tested loop otherwise."""
    monkeypatch.setattr(cuda_hist, "_UNROLL", 2)
    monkeypatch.setattr(cuda_hist, "_WHOLE", 2)
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert cuda_hist._whole(4096 // 8, bf16) == 1
    assert cuda_hist._whole(4096 // 4, fp32) == 1
    assert cuda_hist._whole(8960 // 8, bf16) == 2     # 1120 vectors: whole warps, not whole chunks
    assert cuda_hist._whole(8960 // 8, fp16) == 0     # fp16 keeps its bounds tests there
    assert cuda_hist._whole(640 // 8, bf16) == 0      # 80 vectors: not whole warps
    assert {cuda_hist._whole(v, bf16) for v in range(1, 4097) if v % 32} == {0}
    monkeypatch.setattr(cuda_hist, "_WHOLE", 1)
    assert cuda_hist._whole(8960 // 8, bf16) == 0
    assert cuda_hist._whole(1536 // 8, bf16) == 1
    monkeypatch.setattr(cuda_hist, "_WHOLE", 0)
    assert cuda_hist._whole(4096 // 8, bf16) == 0
