"""Batches for a problem: an endless stream over the user's data, on the right device.

The user's data object is used as given: a ``DataLoader`` or any other iterable of batches.
When it runs out it is restarted (a new epoch), so a problem can step any number of times.

For exact resumption the stream remembers the random state its current epoch started from
(torch's global generator and any ``torch.Generator`` the loader's samplers own): restoring
that state, restarting the epoch and skipping ``position`` batches replays the same batches.
:func:`make_loader` batches a ``Dataset``, sharded with ``DistributedSampler`` when the run is
distributed.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from mlodsl.diagnostics import MLOError

__all__ = ["BatchStream", "to_device", "make_loader", "loader_generators"]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside ``batch`` (tuples, lists, dicts nest) to ``device``."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        # Asynchronous only towards an accelerator (stream-ordered before any kernel reads
        # it); a non-blocking copy *to the CPU* may be read before the data has arrived.
        return batch.to(device, non_blocking=torch.device(device).type != "cpu")
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
        # Random state at the start of the current epoch (see the module docstring).
        self._epoch_rng: dict | None = None

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
        for sampler in _samplers(self.data):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler reshuffles per epoch
                sampler.set_epoch(self.epoch)
        self._epoch_rng = {"torch": torch.get_rng_state(),
                           "generators": [g.get_state() for g in loader_generators(self.data)]}
        self.position = 0
        self._iter = iter(self.data)

    def state_dict(self) -> dict:
        """Epoch, position and the epoch's starting random state: enough to replay the batches.

        Holds only tensors and plain containers (checkpoints load with ``weights_only=True``).
        """
        state = {"epoch": self.epoch, "position": self.position, "started": self._iter is not None}
        if self._epoch_rng is not None:
            state["epoch_rng"] = {"torch": self._epoch_rng["torch"].clone(),
                                  "generators": [g.clone() for g in self._epoch_rng["generators"]]}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Fast-forward to a saved position, drawing the same shuffle as the saved run.

        Changes torch's global random state: the caller restores it afterwards (the checkpoint
        loader does, with the state saved at checkpoint time).
        """
        self.epoch = int(state["epoch"])
        if not state.get("started", True):
            self._iter, self._epoch_rng, self.position = None, None, 0
            return
        rng = state.get("epoch_rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            for gen, saved in zip(loader_generators(self.data), rng["generators"]):
                gen.set_state(saved)
        self._start_epoch()
        for _ in range(int(state["position"])):
            next(self._iter)
        self.position = int(state["position"])


def _samplers(data: Any) -> list:
    """The sampler objects inside a DataLoader (sampler, batch sampler, nested samplers)."""
    found, seen = [], set()
    stack = [getattr(data, "sampler", None), getattr(data, "batch_sampler", None)]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        stack.append(getattr(obj, "sampler", None))  # BatchSampler(RandomSampler(...))
    return found


def loader_generators(data: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` a DataLoader draws its shuffling (and worker seeds) from."""
    gens, seen = [], set()
    for obj in [data, *_samplers(data)]:
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and id(gen) not in seen:
            seen.add(id(gen))
            gens.append(gen)
    return gens


def make_loader(dataset: Any, batch_size: int, shuffle: bool = True, seed: int | None = 0,
                drop_last: bool = False, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``dataset``, sharded across ranks when the run is distributed.

    Distributed (``torch.distributed`` initialised with more than one process): a
    ``DistributedSampler`` gives each rank ``1/world_size`` of every epoch, shuffled with
    ``seed`` (the same permutation on every rank, reshuffled per epoch by the engine's
    ``set_epoch``), and ``batch_size`` is the per-rank batch. Otherwise: a plain loader whose
    shuffle draws from its own generator seeded with ``seed`` (None: torch's global one).
    Extra keyword arguments go to ``DataLoader``.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from mlodsl.runtime import distributed as dist

    if dist.world_size() > 1:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(),
                                     shuffle=shuffle, seed=0 if seed is None else int(seed),
                                     drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          **kwargs)
    generator = None
    if shuffle and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last, **kwargs)
