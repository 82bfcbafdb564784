"""Fixtures of the example tests: one torch thread (the models are tiny; more threads only
contend on a small machine)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


