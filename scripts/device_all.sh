#!/usr/bin/env bash
# Every GPU check and benchmark of maxact in one device call (about 8-10 minutes on an H100 or H200).
# Usage on the GPU machine, from the repository root:  OUT=/some/dir bash scripts/device_all.sh
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-results/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/device.log"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/device.log"
python3 -W ignore scripts/gpu_check_cuda_hist.py "$OUT" 2>&1 | grep -v "^INFO" | tee "$OUT/cuda_hist.log"
python3 -m tests.kernels.gpu_checks 2>&1 | tee "$OUT/kernels_gpu.log" | tail -5
python3 tests/scan/gpu_scan_checks.py 2>&1 | tee "$OUT/scan_gpu.log" | tail -5
python3 -W ignore scripts/gpu_scan_backends.py "$OUT/scan_backends" 2>&1 | tee "$OUT/scan_backends.log"
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -3
python3 -m pytest -q -p no:cacheprovider benchmarks/ --benchmark-only -s 2>&1 | tee "$OUT/bench.log" | grep -E "tok/s|x bare|of copy|passed|failed"
python3 scripts/profile_scan.py "$OUT" 2>&1 | tee "$OUT/profile.log" | grep -E "==|^  [a-z_]"
python3 -W ignore scripts/profile_update.py 2>&1 | tee "$OUT/profile_update.log"
python3 -W ignore scripts/gpu_read_ceiling.py "$OUT" 2>&1 | tee "$OUT/read_ceiling.log" | grep -E "copy|check"
python3 -W ignore scripts/time_row_median.py 2>&1 | tee "$OUT/row_median.log"
python3 scripts/probe_fused.py 2>&1 | tee "$OUT/probe_fused.log"
