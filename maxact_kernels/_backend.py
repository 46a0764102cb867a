"""Backend choice and lazy import of the Triton kernels.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled or interpreted
(``TRITON_INTERPRET``), so the kernel modules are imported only when first needed: for CPU tensors the
variable is set first and the kernels run in Triton's interpreter (how the CPU tests exercise them).
Once imported one way, the kernels stay that way for the life of the process.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "reference")
# Modules holding @triton.jit kernels; the check below looks at the first one loaded.
_KERNEL_MODULES = (
    "maxact_kernels.triton_bits",
    "maxact_kernels.triton_rows",
    "maxact_kernels.triton_tokens",
    "maxact_kernels.triton_topk",
)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` for a requested backend on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"the triton backend runs on CUDA devices (or interpreted on the CPU), not {device}")
    return backend


def _kernels_interpreted() -> bool | None:
    """True/False if a kernel module is already imported (interpreted or compiled), None if none is."""
    for name in _KERNEL_MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            return bool(getattr(mod, "INTERPRETED"))
    return None


def load_triton_update(device: torch.device) -> ModuleType:
    """Import :mod:`maxact_kernels.triton_update` in the mode ``device`` needs (interpreter for the CPU)."""
    want_interpreter = device.type == "cpu"
    state = _kernels_interpreted()
    if state is None:
        if want_interpreter and os.environ.get("TRITON_INTERPRET") != "1":
            log.info("maxact_kernels: CPU tensors with backend='triton': setting TRITON_INTERPRET=1 (interpreter)")
            os.environ["TRITON_INTERPRET"] = "1"
    elif state != want_interpreter:
        if want_interpreter:
            raise RuntimeError(
                "maxact_kernels' Triton kernels were already imported compiled for the GPU in this process; "
                "backend='triton' on CPU tensors needs the interpreter: run it in a fresh process, or set "
                "TRITON_INTERPRET=1 before the first update, or use backend='reference' on the CPU"
            )
        raise RuntimeError(
            "maxact_kernels' Triton kernels were imported in interpreter mode (TRITON_INTERPRET=1, for CPU "
            "tensors); CUDA tensors need them compiled: use a fresh process without TRITON_INTERPRET"
        )
    module = importlib.import_module("maxact_kernels.triton_update")
    if _kernels_interpreted() != want_interpreter:
        mode = "interpreted" if _kernels_interpreted() else "compiled"
        raise RuntimeError(
            f"maxact_kernels' Triton kernels were imported {mode} (TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET')!r}), which does not suit tensors on {device}"
        )
    return module
