"""Fixtures of the kernel tests: both backends on the CPU (Triton through its interpreter)."""

import pytest
import torch

BACKENDS = ("reference", "triton")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def triton_modules():
    """The interpreted Triton kernel modules (imported the way ActivationStats imports them)."""
    from maxact_kernels._backend import load_triton_update

    load_triton_update(torch.device("cpu"))
    from maxact_kernels import triton_rows, triton_tokens, triton_topk

    return triton_rows, triton_tokens, triton_topk
