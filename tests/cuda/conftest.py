"""CUDA tests: importable helpers, one CPU thread for the CPU-side references.

Every module here is skipped without CUDA; ``MLODSL_TEST_DEVICE=cpu`` runs them on the CPU
instead (see ``cuda_helpers``).
"""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
# cuda_helpers, and the programs it shares with the hypergradient and systems suites
for folder in (HERE, HERE.parent / "hypergrad", HERE.parent / "systems"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
