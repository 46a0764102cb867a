#!/usr/bin/env bash
# The multi-GPU benchmarks of issue 7 (docs/SCALING.md, "Benchmarks"), for a node with 2 GPUs.
#
#   OUT=results/scaling bash scripts/scaling_benchmarks.sh            # all three, about 15-20 minutes
#   OUT=results/scaling bash scripts/scaling_benchmarks.sh scaling    # or one of: scaling e2e big
#   SMOKE=1 bash scripts/scaling_benchmarks.sh                        # the same plumbing on a CPU (gloo,
#                                                                     # tiny models, seconds; no numbers)
#
#   scaling  2 ranks vs 1 rank, tokens/s of the same scan (Qwen3-8B architecture, 1,000 synthetic samples)
#   e2e      the paper's protocol: 5,000 synthetic samples (~19.5M tokens, the paper's lengths) on the
#            Qwen3-8B architecture over both GPUs, wall time from launch to stats.json written, and the
#            bare forward's tokens/s on the same corpus (first 40 batches, one GPU) for the ratio
#   big      Qwen2.5-72B architecture (~145 GB in bf16) spread over both GPUs with --device-map auto
#            (one replica of 2 GPUs: --gpus-per-replica 2), tokens/s and peak memory per GPU
# Each step prints one summary line and keeps its stats.json and logs under $OUT.
set -euo pipefail
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:-results/scaling}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

if [[ "${SMOKE:-0}" == 1 ]]; then
    export OMP_NUM_THREADS=1
    MODEL=random:tiny-qwen3; BIG_MODEL=random:tiny-qwen2
    SCALING_CORPUS=synthetic:12; E2E_CORPUS=synthetic:16; BIG_CORPUS=synthetic:8
    COMMON=(--device cpu --dtype float32 --tokens-per-batch 4096 --max-seq-len 512 -q)
    BIG_FLAGS=(--device cpu)   # no GPUs: the device map needs them
    BARE_BATCHES=2
else
    MODEL=random:qwen3-8b; BIG_MODEL=random:qwen2.5-72b
    SCALING_CORPUS=synthetic:1000; E2E_CORPUS=synthetic:5000; BIG_CORPUS=synthetic:200
    COMMON=(--dtype bfloat16 --attn sdpa --tokens-per-batch 16384 -q)
    BIG_FLAGS=(--device-map auto --gpus-per-replica 2 --tokens-per-batch 8192)
    BARE_BATCHES=40
fi
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node)

field() {  # field <stats.json> <metadata key>
    "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['metadata'][sys.argv[2]])" "$1" "$2"
}

scaling() {
    "${TORCHRUN[@]}" 1 -m maxact.scan --model "$MODEL" --corpus "$SCALING_CORPUS" "${COMMON[@]}" \
        --out "$OUT/scaling-1" > "$OUT/scaling-1.log" 2>&1
    "${TORCHRUN[@]}" 2 -m maxact.scan --model "$MODEL" --corpus "$SCALING_CORPUS" "${COMMON[@]}" \
        --out "$OUT/scaling-2" > "$OUT/scaling-2.log" 2>&1
    "$PY" - "$OUT" <<'EOF' | tee "$OUT/scaling.txt"
import json, sys
one, two = (json.load(open(f"{sys.argv[1]}/scaling-{n}/stats.json"))["metadata"] for n in (1, 2))
print(f"scaling: 1 rank {one['tokens_per_s']:,.0f} tok/s, 2 ranks {two['tokens_per_s']:,.0f} tok/s, "
      f"speed-up {two['tokens_per_s'] / one['tokens_per_s']:.2f}x (goal >= 1.9x); "
      f"{two['num_tokens_scanned']:,} tokens, {two['model_name']}")
EOF
}

e2e() {
    local t0 t1
    t0=$(date +%s.%N)
    "${TORCHRUN[@]}" 2 -m maxact.scan --model "$MODEL" --corpus "$E2E_CORPUS" "${COMMON[@]}" \
        --out "$OUT/e2e" > "$OUT/e2e.log" 2>&1
    t1=$(date +%s.%N)
    "$PY" - "$OUT" "$t0" "$t1" "$MODEL" "$E2E_CORPUS" "$BARE_BATCHES" "${COMMON[@]}" <<'EOF' | tee "$OUT/e2e.txt"
import json, sys
out, t0, t1, model, corpus, batches, *flags = sys.argv[1:]
from maxact.scan.__main__ import build_parser, config_from_args
from maxact.scan.bench import prepare, time_bare
md = json.load(open(f"{out}/e2e/stats.json"))["metadata"]
wall = float(t1) - float(t0)
cfg = config_from_args(build_parser().parse_args(["--model", model, "--corpus", corpus, *flags]))
bare = time_bare(prepare(cfg, max_batches=int(batches)))   # one GPU, same batches as the scan's first
bare_wall = md["num_tokens_scanned"] / (2 * bare.tokens_per_s)   # the whole corpus, both GPUs
print(f"e2e: {md['num_tokens_scanned']:,} tokens, {md['corpus']['num_samples']} samples, {md['model_name']}, "
      f"world size {md['world_size']}: launch to stats.json {wall:.1f} s (goal < 360 s; paper code 2 h 9 min), "
      f"scan loop {md['tokens_per_s']:,.0f} tok/s; bare forward {bare.tokens_per_s:,.0f} tok/s per GPU "
      f"({bare.tokens} tokens) -> {bare_wall:.1f} s for the corpus on 2 GPUs, wall / bare {wall / bare_wall:.2f}x")
EOF
}

big() {
    local mem_pid=""
    if command -v nvidia-smi > /dev/null; then   # driver-level memory per GPU, sampled every 0.5 s
        nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/big-mem.csv" &
        mem_pid=$!
    fi
    "${TORCHRUN[@]}" 1 -m maxact.scan --model "$BIG_MODEL" --corpus "$BIG_CORPUS" "${COMMON[@]}" "${BIG_FLAGS[@]}" \
        --out "$OUT/big" > "$OUT/big.log" 2>&1
    if [[ -n "$mem_pid" ]]; then kill "$mem_pid"; fi
    "$PY" - "$OUT" <<'EOF' | tee "$OUT/big.txt"
import json, os, sys
out = sys.argv[1]
md = json.load(open(f"{out}/big/stats.json"))["metadata"]
peak = {}
if os.path.exists(f"{out}/big-mem.csv"):
    for line in open(f"{out}/big-mem.csv"):
        idx, used = (v.strip() for v in line.split(","))
        peak[idx] = max(peak.get(idx, 0), int(used))
mem = ", ".join(f"GPU {i} {mib / 1024:.1f} GiB" for i, mib in sorted(peak.items())) or "n/a (no nvidia-smi)"
print(f"big: {md['model_name']} ({md['num_layers']} layers, hidden {md['hidden_size']}) on {md['device']}: "
      f"{md['num_tokens_scanned']:,} tokens at {md['tokens_per_s']:,.0f} tok/s; peak memory used per GPU: {mem}")
EOF
}

steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(scaling e2e big)
for step in "${steps[@]}"; do
    case "$step" in
        scaling|e2e|big) "$step" ;;
        *) echo "unknown step $step (scaling, e2e, big)" >&2; exit 2 ;;
    esac
done
