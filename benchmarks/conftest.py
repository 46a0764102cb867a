"""Benchmark fixtures: device timing, a copy baseline measured in the same run, and a printed report.

Run: ``pytest benchmarks/ --benchmark-only`` (add ``-p no:cacheprovider`` on read-only checkouts). Every
figure is also written to ``results/benchmarks/kernels.json`` (ignored by git).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch

REPORT: list[dict] = []
RESULTS = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "kernels.json"


def cuda_time_ms(fn, *, iters: int = 20, repeats: int = 5, warmup: int = 3, finish=None) -> float:
    """Median over ``repeats`` of the mean device time of ``iters`` back-to-back calls, by CUDA events.

    A sleep kernel queued first holds the GPU until every call is queued, so the figure is device time
    even where the host takes longer to issue a call than the GPU to run it (then :func:`issue_time_ms`
    is the larger one: report both). ``finish`` runs before the end event: ``ActivationStats.settle``, so
    that the side-stream work of the last call is timed too.
    """
    issue = issue_time_ms(fn, iters=max(warmup, 1))
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _hold_gpu(2.0 * iters * issue + 0.2)
        start.record()
        for _ in range(iters):
            fn()
        if finish is not None:
            finish()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def issue_time_ms(fn, *, iters: int = 20) -> float:
    """Host time to queue one call of ``fn`` (the GPU held busy meanwhile, so queuing never waits)."""
    torch.cuda.synchronize()
    _hold_gpu(50.0)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    dt = (time.perf_counter() - t0) * 1e3 / iters
    torch.cuda.synchronize()
    return dt


def _hold_gpu(ms: float) -> None:
    """Queue a kernel that keeps the GPU busy for at least ``ms`` (at up to 2 GHz)."""
    torch.cuda._sleep(int(ms * 2e6))


def cpu_time_ms(fn, *, iters: int = 5, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


@pytest.fixture(scope="session")
def timers():
    """(cuda_time_ms, cpu_time_ms, issue_time_ms)."""
    return cuda_time_ms, cpu_time_ms, issue_time_ms


@pytest.fixture(scope="session")
def gpu() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU kernel benchmarks need one (the CPU reference benchmark still runs)")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def copy_ms():
    """Time of a same-size device-to-device (or CPU) copy, measured once per shape in this run."""
    cache: dict = {}

    def measure(shape, dtype, device) -> float:
        key = (tuple(shape), dtype, str(device))
        if key not in cache:
            srcs = [torch.randn(shape, device=device).to(dtype) for _ in range(3 if device.type == "cuda" else 1)]
            dst = torch.empty_like(srcs[0])
            i = [0]

            def copy():
                i[0] = (i[0] + 1) % len(srcs)
                dst.copy_(srcs[i[0]])

            cache[key] = cuda_time_ms(copy) if device.type == "cuda" else cpu_time_ms(copy)
        return cache[key]

    return measure


@pytest.fixture
def report():
    """Append one result row (printed at the end of the session and saved as JSON)."""
    return REPORT.append


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    tr = terminalreporter
    tr.section("maxact kernel benchmarks (read bandwidth; fraction of a same-size copy measured in this run)")
    for row in REPORT:
        tr.write_line(row["line"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    RESULTS.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": REPORT}, indent=1))
    tr.write_line(f"saved to {RESULTS}")
