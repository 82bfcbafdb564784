"""The divergence guard: no step is taken, and no checkpoint written, from non-finite values.

``EngineConfig.on_nan`` chooses what happens:

* ``"stop"`` (default): losses, and the gradients that carry hypergradients, are collected
  during an iteration and checked once at its end (one host synchronisation); a non-finite
  one stops the run with an error naming the problem, the hypergradient methods that fed it
  and the last good checkpoint. Parameters are checked before every checkpoint.
* ``"skip"``: each step's loss and gradient are checked before the update (one host
  synchronisation per step); a non-finite one skips the step (no parameter update, no
  scheduler step) and logs it. In a distributed run every rank skips the same steps.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import distributed as dist

__all__ = ["DivergenceGuard", "tensor_norms"]


def tensor_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One norm per tensor (a fused kernel): non-finite exactly when an entry is."""
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors]))


class DivergenceGuard:
    """Collects and checks the finiteness of a run's losses, gradients and parameters.

    Args:
        engine: the engine it guards (its config, precision, log, iteration and last
            checkpoint are read when a check is made).
        hierarchy: the engine's :class:`~mlodsl.runtime.hierarchy.Hierarchy` (which problems
            carry hypergradients, and through which methods, for the messages).
    """

    def __init__(self, engine, hierarchy):
        self.engine = engine
        self.hierarchy = hierarchy
        self.pending: list[tuple[str, str, torch.Tensor]] = []

    @property
    def stops(self) -> bool:
        """Whether a non-finite value stops the run (``on_nan="stop"``) rather than a step."""
        return self.engine.config.on_nan == "stop"

    def watch_loss(self, problem, loss: torch.Tensor) -> None:
        """Remember a loss for the end-of-iteration check (``"stop"`` only)."""
        if self.stops:
            self.pending.append((problem.name, "loss", loss.detach()))

    def allow_step(self, problem, loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> bool:
        """Whether ``problem`` may apply this step's (averaged, unscaled) gradient ``grads``.

        ``"stop"``: always True; the gradients' finiteness joins the end-of-iteration check
        (no sync here). ``"skip"``: one host sync; a non-finite loss or gradient skips the
        step and logs it.
        """
        engine = self.engine
        stop = self.stops
        scaled = engine.precision.scaler(problem) is not None  # the scaler skips inf steps
        # With "stop", only gradients with hypergradients in them are read (a pass over every
        # gradient, a few percent of a small step): a leaf's gradient is backpropagation of its
        # own loss, which is checked, and a non-finite gradient from a finite loss shows up as
        # a non-finite loss one step later. Checkpoints are never written from non-finite
        # parameters (check_parameters).
        read = grads and not scaled and (
            not stop or self.hierarchy.descendants_bottom_up(problem.name))
        norms = tensor_norms(grads) if read else None
        if stop:
            if norms is not None:
                self.pending.append((problem.name, "gradient", norms))
            return True
        ok = torch.isfinite(loss.detach()).all()
        if norms is not None:
            ok = ok & torch.isfinite(norms).all()
        ok = bool(ok)
        if engine.distributed:  # every rank must skip the same steps, or parameters drift
            ok = not dist.any_flag(not ok)
        if ok:
            return True
        engine.history.info(f"skipped a step of problem '{problem.name}' at iteration "
                            f"{engine.global_step}: non-finite loss or gradient "
                            f"({self.hierarchy.methods_feeding(problem.name)})")
        return False

    def check_parameters(self) -> None:
        """Before a checkpoint: every problem's parameters are finite, or the run stops here.

        The per-step checks read losses and hypergradient-carrying gradients only; this one
        pass over the parameters makes sure no checkpoint ever holds a diverged state.
        """
        if not self.stops:
            return
        for problem in self.engine.problems.values():
            params = problem.trainable_parameters()
            if params:
                self.pending.append((problem.name, "parameters", tensor_norms(params)))
        self.check()

    def check(self) -> None:
        """Check everything collected (one host sync); raise on the first non-finite value."""
        if not self.pending:
            return
        checks, self.pending = self.pending, []
        # One isfinite over everything (one host sync); per-check flags only on failure.
        if len({t.device for _, _, t in checks}) == 1 and bool(
                torch.isfinite(torch.cat([t.reshape(-1) for _, _, t in checks])).all()):
            return
        flags = torch.stack([torch.isfinite(t).all().cpu() for _, _, t in checks])
        if bool(flags.all()):
            return
        name, what = next((n, w) for (n, w, _), ok in zip(checks, flags.tolist()) if not ok)
        where = {"gradient": f"the gradient of problem '{name}' (hypergradients included)",
                 "parameters": f"the parameters of problem '{name}'"}.get(
                     what, f"the loss of problem '{name}'")
        saved = self.engine.last_checkpoint_step
        last = (f"; the last good checkpoint is iteration {saved}" if saved is not None else "")
        raise MLOError(f"{where} became NaN or infinite at iteration "
                       f"{self.engine.global_step} "
                       f"({self.hierarchy.methods_feeding(name)}){last}", kind="run",
                       hint="lower the learning rates, clip gradients (grad_clip), use "
                       "on_nan='skip', or check the loss for log(0) and division by zero")
