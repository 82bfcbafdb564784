"""An unrolled window: the differentiable steps a problem takes between two uses by an upper.

A problem an upper differentiates through (``unroll``, or an ``IterativeProblem``) does not
update its live parameters in place while the upper is still to read them. Its steps go to
"fast" weights instead, functions of the live parameters and of the uppers' parameters on the
autograd tape, updated by a differentiable copy of the problem's torch optimizer
(:mod:`mlodsl.runtime.optim`). The window is that state, owned by its problem
(``problem.window``):

* :meth:`UnrolledWindow.open` starts it at the live parameters (the first differentiable step
  does this; opening an open window does nothing);
* :meth:`UnrolledWindow.step` takes one differentiable optimizer step on the fast weights,
  :meth:`UnrolledWindow.advance` installs a step computed elsewhere (activation checkpointing);
* :meth:`UnrolledWindow.close` writes the fast weights and the carried optimizer state back to
  the live parameters and the torch optimizer, dropping their graph (the engine calls it once
  the upper has stepped);
* :meth:`UnrolledWindow.state_dict`/:meth:`UnrolledWindow.load_state_dict`: the window as
  tensors and plain values (part of :class:`~mlodsl.runtime.state.TrainingState`).

While open, everything that evaluates a loss sees the fast weights as the problem's current
parameters (``Problem.current_parameters``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch

from mlodsl.runtime.optim import DifferentiableOptimizer, make_differentiable

__all__ = ["UnrolledWindow"]


class UnrolledWindow:
    """One problem's unrolled window: fast weights, differentiable optimizer, counters.

    Args:
        parameters: returns the problem's live trainable parameters (what the window starts
            from and writes back to).
        optimizer: returns the problem's torch optimizer (whose update rule is copied).
    """

    def __init__(self, parameters: Callable[[], list[torch.Tensor]],
                 optimizer: Callable[[], torch.optim.Optimizer]):
        self._parameters = parameters
        self._optimizer = optimizer
        self._fast: tuple[torch.Tensor, ...] | None = None
        self._diffopt: DifferentiableOptimizer | None = None
        self._tape: Any = None
        #: Differentiable steps taken since the window opened.
        self.steps = 0

    # -- what it holds ---------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether fast weights are live (the problem's steps are being unrolled)."""
        return self._fast is not None

    @property
    def fast(self) -> tuple[torch.Tensor, ...] | None:
        """The fast weights (one tensor per trainable parameter), or None when closed."""
        return self._fast

    @property
    def optimizer(self) -> DifferentiableOptimizer | None:
        """The differentiable copy of the problem's optimizer (None when closed)."""
        return self._diffopt

    # -- life cycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Start the window at the live parameters and optimizer state (no-op when open)."""
        if self._fast is not None:
            return
        params = self._parameters()
        self._fast = tuple(params)
        self._diffopt = make_differentiable(self._optimizer(), params)
        self._tape = None
        self.steps = 0

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One differentiable optimizer step of the fast weights along ``grads``."""
        self._fast = tuple(self._diffopt.step(self._fast, grads))
        self.steps += 1

    def advance(self, fast: Sequence[torch.Tensor], optimizer_state: list[dict]) -> None:
        """Install a step computed outside :meth:`step`: new fast weights and optimizer state."""
        self._fast = tuple(fast)
        self._diffopt.state = optimizer_state
        self.steps += 1

    def tape(self, make: Callable[[], Any]) -> Any:
        """The window's activation-checkpointing tape, made by ``make()`` on first use."""
        if self._tape is None:
            self._tape = make()
        return self._tape

    def close(self) -> list[torch.Tensor] | None:
        """Write the fast weights and optimizer state back; return the live parameters.

        Returns None (and does nothing) when the window is not open.
        """
        if self._fast is None:
            return None
        params = self._parameters()
        with torch.no_grad():
            for p, f in zip(params, self._fast):
                if f is not p:
                    p.copy_(f)
        self._diffopt.write_back()
        self._fast, self._diffopt, self._tape = None, None, None
        return params

    @contextlib.contextmanager
    def presenting(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        """Show ``tensors`` as the problem's fast weights for the duration of the block.

        Used when a checkpointed step is recomputed: every other problem then reads the
        tensors the step is being differentiated with respect to.
        """
        saved = self._fast
        self._fast = tuple(tensors)
        try:
            yield
        finally:
            self._fast = saved

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        """The window as tensors and plain values, or None when closed.

        ``{"fast": [tensors], "optimizer": [per-parameter state dicts], "steps": int}``; the
        tensors are the live ones (graph attached while the window is open).
        """
        if self._fast is None:
            return None
        return {"fast": list(self._fast), "optimizer": [dict(s) for s in self._diffopt.state],
                "steps": self.steps}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore :meth:`state_dict`'s value: None closes the window without writing back."""
        if state is None:
            self._fast, self._diffopt, self._tape = None, None, None
            return
        self._fast = None
        self.open()
        self._fast = tuple(state["fast"])
        self._diffopt.state = [dict(s) for s in state["optimizer"]]
        self.steps = int(state["steps"])
