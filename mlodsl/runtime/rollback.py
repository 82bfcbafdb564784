"""Betty's ``roll_back``: after an upper steps, its lowers redo their last step from where
their window started, against the updated upper (a warm start).

:class:`RollBack` owns the cached lower states; the engine tells it when a problem is about
to step (:meth:`RollBack.before_step`) and when an upper has stepped
(:meth:`RollBack.after_upper`). Its cache is part of the training state (checkpoints).
"""
from __future__ import annotations

import copy
from typing import Callable

from mlodsl.runtime.schedule import Schedule

__all__ = ["RollBack"]


class RollBack:
    """The cached states of lowers at the start of their upper's window."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.cache: dict[str, dict] = {}

    def before_step(self, problem) -> None:
        """Cache ``problem``'s module and optimizer if this step opens an upper's window."""
        uppers = self.schedule.uppers(problem.name)
        if not uppers:
            return
        if all(self.schedule.pending(u)[problem.name] == 0 for u in uppers):
            self.cache[problem.name] = {
                "module": copy.deepcopy(problem.module.state_dict()),
                "optimizer": copy.deepcopy(problem.optimizer.state_dict())}

    def after_upper(self, upper: str, problems: dict, redo: Callable) -> None:
        """After ``upper`` stepped: each cached lower returns to its window's start and
        ``redo(problem)`` takes one step against the updated upper; the redo replaces a step,
        it does not add one."""
        for lower in self.schedule.lowers(upper):
            cache = self.cache.pop(lower, None)
            if cache is None:
                continue
            problem = problems[lower]
            problem.module.load_state_dict(cache["module"])
            problem.optimizer.load_state_dict(cache["optimizer"])
            redo(problem)
            problem.forget_step()

    def state_dict(self) -> dict:
        """The cache (module and optimizer state dicts per lower)."""
        return self.cache

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s value."""
        self.cache = dict(state)
