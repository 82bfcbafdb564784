"""The one conftest of the test tree: fixtures every folder may use.

Shared helpers are modules of ``tests.support`` (imported by name, not through conftest);
this file only holds pytest fixtures.
"""
from __future__ import annotations

import pytest
import torch

from tests.support.paths import HPO


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: the models are tiny, so more threads only contend on a small
    machine, and a single thread keeps floating-point reductions in one order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hpo_plan():
    """examples/hpo/hpo.mlo compiled once (not run: tests that train compile their own)."""
    import mlodsl

    return mlodsl.compile(str(HPO))
