"""Timeline of back-to-back full updates on the GPU: each kernel's stream, start (µs from the first) and
duration, from a torch.profiler trace, the GPU held by a sleep kernel while the updates are queued (as the
benchmark times them). Shows how the side-stream kernels interleave with the fused passes.
Usage: PYTHONPATH=. python scripts/trace_updates.py [ROWS COLS [FEATURES [N [WARMUP]]]] (WARMUP updates before the
trace, 4 by default: the top-k threshold tightens at the first compaction of the pending candidates, after 31)"""

import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, ".")
from benchmarks.test_kernels import FEATURES, activations, row_ids  # noqa: E402

from maxact_kernels import ActivationStats  # noqa: E402

rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (16384, 4096)
features = sys.argv[3] if len(sys.argv) > 3 else "full_candidates"
n = int(sys.argv[4]) if len(sys.argv) > 4 else 6
warmup = int(sys.argv[5]) if len(sys.argv) > 5 else 4
dev = torch.device("cuda")
xs = [activations((rows, cols), dev, seed) for seed in range(3)]
mask = torch.ones(rows, dtype=torch.bool, device=dev)
sids, pos = row_ids(rows, dev)
st = ActivationStats(cols, device=dev, **FEATURES[features])
for i in range(warmup):
    st.update(xs[i % 3], mask, sids, pos)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    torch.cuda._sleep(int(4e6 * (n + 2)))   # ~2 ms an update: every update is queued before the GPU reaches it
    for i in range(n):
        st.update(xs[i % 3], mask, sids, pos)
    st.settle()
    torch.cuda.synchronize()
path = os.path.join(tempfile.mkdtemp(), "trace.json")
prof.export_chrome_trace(path)
events = [e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel" and "sleep" not in e["name"]]
events.sort(key=lambda e: e["ts"])
t0 = events[0]["ts"]
streams = {}
for e in events:
    s = streams.setdefault(e["args"].get("stream"), len(streams))
    name = e["name"].split("<")[0].split("(")[0][:40]
    print(f"stream {s}  {e['ts'] - t0:9.1f} us  {e['dur']:7.1f} us  grid {str(e['args'].get('grid')):14s} {name}")
print(f"{features} [{rows}, {cols}]: {n} updates span {events[-1]['ts'] + events[-1]['dur'] - t0:.1f} us")
