"""Device names: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, checked before anything runs."""
from __future__ import annotations

import torch

from mlodsl.diagnostics import MLOError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a user's device spelling into a ``torch.device``, or raise a clear MLOError.

    ``None`` and ``"auto"`` pick CUDA when available, else the CPU. Asking for CUDA on a machine
    without it is an error here, not a crash deep inside a forward pass.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise MLOError(f"unknown device {device!r}",
                       hint="use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MLOError(f"device {str(device)!r} was requested but CUDA is not available on "
                           "this machine", hint="use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MLOError(f"device {str(device)!r} does not exist: this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    return dev
