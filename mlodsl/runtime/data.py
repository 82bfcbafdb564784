"""Batches for a problem: an endless stream over the user's data, on the right device.

The user's data object is used as given: a ``DataLoader`` or any other iterable of batches.
When it runs out it is restarted (a new epoch), so a problem can step any number of times.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from mlodsl.diagnostics import MLOError

__all__ = ["BatchStream", "to_device"]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside ``batch`` (tuples, lists, dicts nest) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, (list, tuple)):
        moved = [to_device(b, device) for b in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class BatchStream:
    """An endless iterator over ``data`` that counts epochs and batches within the epoch."""

    def __init__(self, data: Any, device: torch.device):
        try:
            iter(data)
        except TypeError as err:
            raise MLOError(f"training data of type {type(data).__name__} is not iterable",
                           hint="pass a DataLoader or any iterable of batches") from err
        self.data = data
        self.device = device
        self.epoch = 0
        self.position = 0  # batches taken in the current epoch
        self._iter: Iterator | None = None

    def next(self) -> Any:
        """The next batch, restarting the data when an epoch ends."""
        if self._iter is None:
            self._start_epoch()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            try:
                batch = next(self._iter)
            except StopIteration:
                raise MLOError("training data yielded no batch at all (is it empty, or is "
                               "batch_size larger than the data set with drop_last?)") from None
        self.position += 1
        return to_device(batch, self.device)

    def _start_epoch(self) -> None:
        sampler = getattr(self.data, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler reshuffles per epoch
            sampler.set_epoch(self.epoch)
        self.position = 0
        self._iter = iter(self.data)

    def state_dict(self) -> dict:
        """Epoch and position, enough to fast-forward to the same batch on resume."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Fast-forward to a saved position (the data's own shuffling RNG must be restored too)."""
        self.epoch = int(state["epoch"])
        self._start_epoch()
        for _ in range(int(state["position"])):
            next(self._iter)
        self.position = int(state["position"])
