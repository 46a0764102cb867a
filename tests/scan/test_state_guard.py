"""The OOM guard's snapshot and restore wait for side-stream work first (CPU: the order of the calls)."""

import torch

from maxact.scan.faults import StateGuard


def test_guard_settles_before_each_copy():
    events = []
    live = torch.zeros(3)

    class Counter:
        fill = 2

    counter = Counter()
    guard = StateGuard([live], [(counter, ("fill",))], settle=[lambda: events.append(("settle", live.tolist()))])
    guard.snapshot()
    live += 5
    counter.fill = 9
    guard.restore()
    # each copy came after a settle, and the restore put back the tensors and the host counter
    assert events == [("settle", [0.0, 0.0, 0.0]), ("settle", [5.0, 5.0, 5.0])]
    assert live.tolist() == [0.0, 0.0, 0.0] and counter.fill == 2
