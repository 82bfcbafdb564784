"""Loss evaluation with parameter substitution: every loss of a run is computed here.

A problem's loss reads other problems' modules. :class:`LossEvaluator` evaluates it with every
module showing its problem's *current* tensors (fast weights while an upper unrolls through
it, :class:`~mlodsl.runtime.window.UnrolledWindow`), optionally with the problem's own
parameters replaced (a hypergradient method's perturbed or fresh copies), without touching the
live parameters (:func:`mlodsl.runtime.functional.substitute`). Buffers (BatchNorm statistics)
advance only during the problem's own step. The problem's precision applies (autocast).

It also owns the check of gradient "surrogates": a problem may offer a cheaper scalar with the
same gradient in some problems' parameters (``Problem.target_loss``); each one is compared once
with the full loss before it is trusted.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch

from mlodsl.runtime.functional import (ModuleView, gradient_fingerprint, same_fingerprint,
                                       substitute)

__all__ = ["LossEvaluator"]


class LossEvaluator:
    """Evaluates the problems' losses functionally (see the module docstring).

    Args:
        problems: every problem of the engine, by name.
        precision: the engine's :class:`~mlodsl.runtime.precision.Precision` (autocast).
    """

    def __init__(self, problems: Mapping[str, Any], precision: Any):
        self.problems = problems
        self.precision = precision
        # (problem, wrt) -> whether its gradient slice agreed with the full loss (checked once)
        self.surrogates_ok: dict[tuple[str, tuple[str, ...]], bool] = {}

    def __call__(self, problem: Any, batch: Any, params: Sequence[torch.Tensor] | None = None,
                 own_step: bool = False, with_metrics: bool = False,
                 grad_wrt: Sequence[str] | None = None, first_order: bool = False,
                 shown: Mapping[str, Sequence[torch.Tensor]] | None = None):
        """``problem``'s loss on ``batch`` (and its metrics with ``with_metrics``).

        ``params``: the problem's own trainable parameters replaced by these. ``own_step``: the
        problem's own buffers are live (its training step). ``grad_wrt`` (problem names): only
        the gradient in those problems' parameters will be used, once, so a checked surrogate
        may stand in. ``first_order``: the loss will not be differentiated through its
        gradient (a compiled program may run a ``torch.compile``d graph). ``shown``: tensors
        other problems are shown instead of their current parameters, by problem name (copies
        an unrolled step reads, :mod:`mlodsl.runtime.consumers`; the exact multilevel mode's
        fresh leaves).
        """
        if grad_wrt is not None:
            def compute(b):
                return self._target_loss(problem, b, tuple(grad_wrt))
        else:
            def compute(b):
                return problem.compute_loss(b, first_order=first_order)
        views = []
        for other in self.problems.values():
            mapping = None
            fast = other.unrolled_window.fast
            if other is problem and params is not None:
                mapping = dict(zip(other.trainable_names(), params))
            elif shown and other.name in shown:
                mapping = dict(zip(other.trainable_names(), shown[other.name]))
            elif fast is not None:
                mapping = dict(zip(other.trainable_names(), fast))
            protect = not (own_step and other is problem) and other.has_buffers()
            if mapping or protect:  # nothing to substitute: no view, no overhead
                views.append((other.module, ModuleView(mapping, protect_buffers=protect)))
        if not views:
            with self.precision.autocast(problem):
                loss, metrics = compute(batch)
        else:
            with substitute(views), self.precision.autocast(problem):
                loss, metrics = compute(batch)
        return (loss, metrics) if with_metrics else loss

    def _target_loss(self, problem: Any, batch: Any, wrt: tuple[str, ...]):
        """``problem.target_loss``, checked once per ``(problem, wrt)`` against the full loss.

        A surrogate whose gradient disagrees (a module that reads another problem's parameters
        behind the graph's back, say) is never used again; the run goes on with the full loss
        and a warning says why.
        """
        key = (problem.name, wrt)
        verdict = self.surrogates_ok.get(key)
        surrogate = problem.target_loss(batch, wrt) if verdict is not False else None
        if surrogate is None:  # none offered (Python problems), or one that failed its check
            if verdict is None:
                self.surrogates_ok[key] = False
            return problem.compute_loss(batch, first_order=True)
        if verdict is None:  # the first one: compare with the full loss's gradient
            params = [p for name in wrt for p in self.problems[name].current_parameters()]
            mine = gradient_fingerprint(surrogate, params)
            full, metrics = problem.compute_loss(batch, first_order=True)
            verdict = self.surrogates_ok[key] = same_fingerprint(
                gradient_fingerprint(full, params), mine)
            if not verdict:
                warnings.warn(f"the gradient slice of '{problem.name}''s loss for "
                              f"{', '.join(wrt)} disagreed with the full loss; using the full "
                              "loss from now on", RuntimeWarning, stacklevel=2)
                return full, metrics
        return surrogate, {}
