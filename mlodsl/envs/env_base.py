"""The base class of environments (see :mod:`mlodsl.envs`)."""
from __future__ import annotations

from typing import Any

__all__ = ["Env"]


class Env:
    """Something the problems share: a task sampler, a simulator, a replay buffer.

    Subclass it with your own methods. The engine calls :meth:`configure_device` and then
    :meth:`initialize` when it is built; ``train_data_loader``, when set, is the environment's
    own data (used as given: one process here, so nothing to shard).
    """

    train_data_loader: Any = None
    device: Any = None

    def initialize(self) -> None:
        """Called once by the engine, after the device is set and the problems are attached."""

    def configure_device(self, device: Any) -> None:
        """Set the device the environment should put its tensors on (the engine's)."""
        self.device = device

    def patch_module(self, module):
        """Move ``module`` to the environment's device and return it."""
        return module.to(self.device) if self.device is not None else module

    def patch_data_loader(self, loader: Any) -> Any:
        """The data loader as the environment should use it (unchanged on one process)."""
        return loader
