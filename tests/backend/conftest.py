"""Fixtures of the back-end tests (paths and helpers live in bk_helpers)."""
from __future__ import annotations

import pytest

import bk_helpers


@pytest.fixture(scope="session")
def hpo_plan():
    """hpo.mlo compiled once (not run: tests that train compile their own)."""
    import mlodsl
    return mlodsl.compile(str(bk_helpers.HPO))
