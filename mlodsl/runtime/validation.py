"""Validation: the user's metrics every ``valid_step`` iterations, and what they drive.

One validation pass (:func:`validate`) runs ``engine.validation()`` on rank 0 with every module
in eval mode (gradients stay enabled, as in Betty: a validation may fine-tune), turns the metrics into numbers, shares them with the other
ranks, logs them, steps the ``ReduceLROnPlateau`` schedulers on their metric
(:func:`step_plateau_schedulers`) and feeds early stopping (:class:`EarlyStopping`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import distributed as dist

__all__ = ["EarlyStopping", "validate", "step_plateau_schedulers", "set_train_mode"]


class EarlyStopping:
    """Stop when a validation metric has not improved for some validations.

    Reads ``early_stopping_metric``, ``early_stopping_mode`` (``"min"``: lower is better, or
    ``"max"``) and ``early_stopping_tolerance`` from ``config`` (an ``EngineConfig``) at each
    validation: a compiled program names its metric once it has seen the first validation.
    """

    def __init__(self, config: Any):
        self.config = config
        self.best: float | None = None
        self.bad = 0

    @property
    def metric(self) -> str:
        """The watched entry of the validation dict."""
        return self.config.early_stopping_metric

    def update(self, stats: Mapping[str, Any]) -> bool:
        """Take one validation's metrics; True when the run should stop."""
        metric = self.metric
        if metric not in stats:
            raise MLOError(f"early stopping watches '{metric}', but validation() returned "
                           f"only {sorted(stats)}", kind="run")
        value = float(stats[metric])
        better = self.best is None or (value < self.best
                                       if self.config.early_stopping_mode == "min"
                                       else value > self.best)
        if better:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        return self.bad >= self.config.early_stopping_tolerance

    def state_dict(self) -> dict:
        """``{"best": float | None, "bad": int}``."""
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s value (a missing best keeps the current one)."""
        if state["best"] is not None:
            self.best = state["best"]
        self.bad = int(state["bad"])


def set_train_mode(problems: Mapping[str, Any], mode: bool) -> None:
    """Put every problem's module in training (True) or eval (False) mode."""
    for p in problems.values():
        p.module.train(mode)


def validate(engine) -> dict | None:
    """One validation pass: the metrics as numbers (the same on every rank), or None.

    ``engine.validation()`` runs on rank 0 only, in eval mode (with gradients enabled).
    """
    stats = None
    if dist.is_main():
        set_train_mode(engine.problems, False)
        try:
            # Not under no_grad: a validation may fine-tune (Betty runs it as is).
            stats = engine.validation()
        finally:
            set_train_mode(engine.problems, True)
        if stats:
            if not isinstance(stats, Mapping):
                stats = {"metric": stats}
            stats = {k: (v.item() if isinstance(v, torch.Tensor) else v)
                     for k, v in stats.items()}
    if engine.distributed:
        stats = dist.broadcast_object(stats)
    return stats or None


def step_plateau_schedulers(problems: Mapping[str, Any], stats: Mapping[str, Any],
                            default_metric: str) -> None:
    """Step every ``ReduceLROnPlateau`` on its metric (``problem.scheduler_metric``, else
    ``default_metric``)."""
    for p in problems.values():
        sched = p.scheduler
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = p.scheduler_metric or default_metric
            if metric not in stats:
                raise MLOError(
                    f"problem '{p.name}': ReduceLROnPlateau watches '{metric}', but "
                    f"validation() returned only {sorted(stats)}", kind="run",
                    hint=f"set {p.name}.scheduler_metric to one of {sorted(stats)}")
            sched.step(float(stats[metric]))
