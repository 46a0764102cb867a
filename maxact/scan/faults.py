"""Fault handling of the scan loop: stop signals, and CUDA out-of-memory recovery by batch splitting."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that the loop reads between batches.

    The handler only sets the flag, so the batch in flight completes and its statistics stay
    consistent; the loop then checkpoints and leaves. A second SIGINT falls back to Python's default
    (KeyboardInterrupt at once) for a user who does not want to wait for the checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing the current batch, then checkpointing and stopping "
                    "(Ctrl-C again to abort at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StateGuard:
    """Snapshot of every state's tensors, so a batch that failed halfway can be undone.

    A CUDA OOM may strike after the hooks of early layers already folded part of the batch into their
    states; retrying the halves on top of that would count those rows twice. Before each batch the
    guard copies the live state tensors into preallocated buffers with one ``torch._foreach_copy_``
    (device-side, no host sync, a few launches for all sites) and notes the host-side counters
    (e.g. the top-k and position-0 staging fill levels); after an OOM it puts both back.
    ``settle``: callables that make the current stream wait for work still queued on side streams
    (``ActivationStats.settle``), run before both copies, so that no earlier update's side kernels land
    in the middle of them. Only used on CUDA, where an OOM is catchable.
    """

    def __init__(self, tensors: list[torch.Tensor], host: list[tuple[Any, tuple[str, ...]]] = (),
                 settle: list[Callable[[], None]] = ()):
        self._live = [t for t in tensors if isinstance(t, torch.Tensor)]
        self._backup = [torch.empty_like(t) for t in self._live]
        self._host = list(host)          # (object, names of its host-side counters)
        self._settle = list(settle)
        self._saved: list[tuple] = []

    def _wait_side_work(self) -> None:
        for fn in self._settle:
            fn()

    def snapshot(self) -> None:
        self._wait_side_work()
        if self._live:
            torch._foreach_copy_(self._backup, self._live)
        self._saved = [tuple(getattr(obj, a) for a in attrs) for obj, attrs in self._host]

    def restore(self) -> None:
        self._wait_side_work()
        if self._live:
            torch._foreach_copy_(self._live, self._backup)
        for (obj, attrs), values in zip(self._host, self._saved):
            for a, v in zip(attrs, values):
                setattr(obj, a, v)


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc))


def run_splitting_on_oom(batch: Any, forward: Callable[[Any], None], split: Callable[[Any], tuple],
                         guard: StateGuard | None, on_split: Callable[[Any], None] | None = None,
                         depth: int = 0) -> int:
    """Run ``forward(batch)``; on CUDA OOM undo the partial update, split in two and recurse.

    Returns the number of splits made. A batch of one row that still does not fit is re-raised.
    """
    if guard is not None:
        guard.snapshot()
    try:
        forward(batch)
        return 0
    except BaseException as exc:  # noqa: BLE001 - only OOM is handled, everything else re-raised
        if not is_oom(exc):
            raise
        halves = split(batch)
        if halves is None:
            raise
    # Out of the except block, so the exception's frames (and their tensors) are freed first.
    if guard is not None:
        guard.restore()
    torch.cuda.empty_cache()
    log.warning("CUDA out of memory on a batch of %d rows x %d tokens: splitting it in two "
                "(depth %d); a smaller --tokens-per-batch avoids this",
                batch.input_ids.shape[0], batch.input_ids.shape[1], depth + 1)
    if on_split is not None:
        on_split(batch)
    splits = 1
    for half in halves:
        splits += run_splitting_on_oom(half, forward, split, guard, on_split, depth + 1)
    return splits
