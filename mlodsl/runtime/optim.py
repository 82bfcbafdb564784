"""Differentiable copies of ``torch.optim``'s SGD, Adam and AdamW update rules.

``unroll`` (and ``IterativeProblem``) differentiates an upper's loss through the lower's last
optimizer steps, so those steps must be ordinary autograd operations on "fast" weights instead
of in-place updates of the live parameters. :func:`make_differentiable` reads the user's torch
optimizer - its hyperparameters per param group, read again at every step so a scheduler's
changes apply, and its per-parameter state (momentum buffers, Adam moments, step counts) - and
returns an object with

* ``step(params, grads) -> new_params``: one update, out of place, differentiable in
  ``params``, ``grads`` and the carried state;
* ``write_back()``: copy the (detached) state into the torch optimizer's ``state``, so the
  run continues with ``optimizer.step()`` exactly as if torch had taken these steps.

The updates reproduce ``torch.optim`` (single-tensor path) to rounding, including SGD's
momentum/dampening/nesterov/weight decay/maximize, Adam's L2 weight decay, AdamW's decoupled
weight decay and amsgrad. One deliberate difference: ``sqrt`` of a second moment that is
exactly zero gets a zero derivative (torch's would be infinite), so a parameter that never saw
a gradient does not turn the hypergradient into NaN; values are unaffected.

Reference: the update rules of ``torch.optim.SGD``/``Adam``/``AdamW`` (PyTorch 2.x docs);
differentiable optimizers as in Grefenstette et al., "Generalized Inner Loop Meta-Learning"
(the ``higher`` library), 2019.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mlodsl.diagnostics import MLOError

__all__ = ["make_differentiable", "DifferentiableOptimizer", "DifferentiableSGD",
           "DifferentiableAdam"]


def _scalar_dtype() -> torch.dtype:
    # The dtype torch.optim uses for its "step" counters.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` whose derivative at ``x == 0`` is 0 instead of inf (values are identical)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(),
                       torch.zeros_like(x))


class DifferentiableOptimizer:
    """Base: the param-group lookup, the carried state and the write-back.

    ``self.state[i]`` is a dict of tensors for parameter ``i`` (graph-connected while
    unrolling); subclasses implement :meth:`_update` for one parameter.
    """

    #: state keys that hold tensors shaped like the parameter
    tensor_keys: tuple[str, ...] = ()

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]):
        self.optimizer = optimizer
        self.params = list(params)
        group_of = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                group_of[id(p)] = group
        self.groups = []
        for p in self.params:
            if id(p) not in group_of:
                raise MLOError("a trainable parameter is not in its problem's optimizer "
                               "(unrolled steps update only what the optimizer updates)")
            self.groups.append(group_of[id(p)])
        self.state: list[dict] = [self._read_state(optimizer.state.get(p, {}))
                                  for p in self.params]

    def _read_state(self, torch_state: dict) -> dict:
        state = {k: torch_state[k] for k in self.tensor_keys if torch_state.get(k) is not None}
        if "step" in torch_state:
            step = torch_state["step"]
            state["step"] = int(step.item() if isinstance(step, torch.Tensor) else step)
        return state

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
             ) -> list[torch.Tensor]:
        """One optimizer step, out of place: returns the new parameters (state carried)."""
        new, self.state = self.apply(params, grads, self.state, self.groups)
        return new

    def apply(self, params, grads, states, groups) -> tuple[list[torch.Tensor], list[dict]]:
        """A pure step: ``(new_params, new_states)`` from ``states`` and hyperparameters ``groups``.

        Nothing is mutated, so the step can be recomputed (activation checkpointing).
        """
        out, new_states = [], []
        for p, g, group, state in zip(params, grads, groups, states):
            state = dict(state)
            out.append(p if g is None else self._update(p, g, group, state))
            new_states.append(state)
        return out, new_states

    def rule(self) -> "DifferentiableOptimizer":
        """A copy that can only :meth:`apply` the update rule: no parameters, no carried state.

        What a recomputation closure keeps (activation checkpointing): holding the optimizer
        itself would tie the closure to the newest state tensors, whose graph holds the closure
        again - a reference cycle through autograd that Python's collector cannot see, which
        would keep every unrolled window's tape alive.
        """
        rule = object.__new__(type(self))
        rule.optimizer, rule.params, rule.groups, rule.state = self.optimizer, [], [], []
        return rule

    def snapshot_groups(self) -> list[dict]:
        """Each parameter's hyperparameters now (a later scheduler step does not change them)."""
        return [{k: v for k, v in g.items() if k != "params"} for g in self.groups]

    def _update(self, p, g, group, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def write_back(self) -> None:
        """Copy the carried state, detached, into the torch optimizer's ``state``."""
        for p, state in zip(self.params, self.state):
            target = self.optimizer.state[p]
            for k in self.tensor_keys:
                if k in state:
                    target[k] = state[k].detach().clone()
            if "step" in state:
                old = target.get("step")
                if isinstance(old, torch.Tensor):
                    target["step"] = torch.tensor(float(state["step"]), dtype=old.dtype,
                                                  device=old.device)
                else:  # capturable/fused optimizers keep their step beside the parameter
                    group = next(g for g in self.optimizer.param_groups
                                 if any(q is p for q in g["params"]))
                    device = p.device if group.get("capturable") or group.get("fused") \
                        else None
                    target["step"] = torch.tensor(float(state["step"]), dtype=_scalar_dtype(),
                                                  device=device)


class DifferentiableSGD(DifferentiableOptimizer):
    """``torch.optim.SGD``: ``b <- mu b + (1 - dampening) g`` (``b = g`` on the first step),
    ``d = g + mu b`` (nesterov) or ``b``, ``w <- w - lr d``, with ``g += weight_decay w``."""

    tensor_keys = ("momentum_buffer",)

    def _update(self, p, g, group, state):
        lr, wd = group["lr"], group["weight_decay"]
        momentum, dampening = group["momentum"], group["dampening"]
        if group.get("maximize", False):
            g = -g
        if wd != 0:
            g = g + wd * p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            buf = g if buf is None else momentum * buf + (1 - dampening) * g
            state["momentum_buffer"] = buf
            g = g + momentum * buf if group["nesterov"] else buf
        return p - lr * g


class DifferentiableAdam(DifferentiableOptimizer):
    """``torch.optim.Adam``/``AdamW``: with ``t`` the step count,

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2`` (``vmax <- max(vmax, v)`` with
    amsgrad), ``w <- w - lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps)``; weight decay is
    ``g += wd w`` (Adam) or ``w <- (1 - lr wd) w`` first (AdamW, decoupled)."""

    tensor_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def _update(self, p, g, group, state):
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        decoupled = group.get("decoupled_weight_decay",
                              isinstance(self.optimizer, torch.optim.AdamW))
        if group.get("maximize", False):
            g = -g
        t = state.get("step", 0) + 1
        state["step"] = t
        if wd != 0:
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
        m = state.get("exp_avg")
        v = state.get("exp_avg_sq")
        m = (1 - beta1) * g if m is None else m + (1 - beta1) * (g - m)  # torch's lerp
        v = (1 - beta2) * g * g if v is None else beta2 * v + (1 - beta2) * g * g
        state["exp_avg"], state["exp_avg_sq"] = m, v
        if group.get("amsgrad", False):
            vmax = state.get("max_exp_avg_sq")
            vmax = v if vmax is None else torch.maximum(vmax, v)
            state["max_exp_avg_sq"] = vmax
            v = vmax
        bc1 = 1 - beta1 ** t
        bc2_sqrt = (1 - beta2 ** t) ** 0.5
        denom = _safe_sqrt(v) / bc2_sqrt + eps
        return p - (lr / bc1) * m / denom


_RULES = {torch.optim.SGD: DifferentiableSGD, torch.optim.Adam: DifferentiableAdam,
          torch.optim.AdamW: DifferentiableAdam}


def make_differentiable(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
                        ) -> DifferentiableOptimizer:
    """A differentiable copy of ``optimizer``'s update rule for ``params`` (see module doc)."""
    for cls in type(optimizer).__mro__:
        if cls in _RULES:
            return _RULES[cls](optimizer, params)
    raise MLOError(f"unrolled (differentiable) steps support SGD, Adam and AdamW, not "
                   f"{type(optimizer).__name__}",
                   hint="use one of these optimizers for a problem an upper unrolls through, "
                        "or an implicit method (darts, neumann, cg, sama)")
