"""Random state: seeding every generator at once, and saving and restoring them all.

"Every generator" means torch's (CPU and, when initialised, CUDA), Python's ``random`` and
numpy's global one. The engine seeds them before a fresh run (``EngineConfig.seed``), the
compiler before it builds a program's modules; checkpoints save and restore them (one set
per rank), as the ``rng`` part of :class:`~mlodsl.runtime.state.TrainingState`.
"""
from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed torch (every device), Python's ``random`` and numpy's global generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        return
    np.random.seed(seed % 2**32)


def rng_state() -> dict:
    """Every global random state of this process, as tensors and plain containers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def set_rng_state(state: dict) -> None:
    """Restore random states written by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    # Only onto the same number of GPUs: elsewhere CUDA streams start from the seed instead.
    if "cuda" in state and torch.cuda.is_available() and \
            len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["cached"]))
