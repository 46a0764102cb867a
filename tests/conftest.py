"""Test-wide fixtures: a fixed seed for every test (torch, numpy, random)."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy generator seeded per test (same data on every run)."""
    return np.random.default_rng(1234)
