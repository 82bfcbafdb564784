"""Functional copies of ``torch.optim``'s update rules, for a captured iteration.

A captured iteration (:mod:`mlodsl.runtime.compiled.iteration`) cannot call
``optimizer.step()``: that mutates tensors behind torch.func's back. Instead each problem's
optimizer is read once into a :class:`FunctionalOptimizer`, whose :meth:`~FunctionalOptimizer.update`
is a pure function ``(params, grads, states, lrs) -> (params, states)``:

* ``states`` holds, per parameter, the same tensors ``torch.optim`` keeps in
  ``optimizer.state[p]`` under the same keys (``momentum_buffer``, ``exp_avg``, ``step``, ...),
  so the captured iteration writes them straight back and checkpoints see torch's own layout;
* ``lrs`` holds one 0-d tensor per param group: a learning-rate scheduler steps outside the
  graph and changes a tensor input, never the graph (no recompilation);
* every other hyperparameter (momentum, betas, eps, weight decay, ...) is a constant of the
  graph; :meth:`FunctionalOptimizer.signature` says when they changed (the caller recaptures).

The rules reproduce the single-tensor paths of ``torch.optim`` (2.x) to rounding: SGD
(momentum, dampening, nesterov, weight decay, maximize), Adam and AdamW (L2 or decoupled
weight decay, amsgrad, maximize), RMSprop (alpha, eps, weight decay, momentum, centered,
maximize) and Adagrad (lr decay, weight decay, eps, initial accumulator, maximize). The step
counter is a tensor, so bias corrections are computed in the parameters' precision rather
than in Python floats: relative differences of about 1e-7.

A rule needs its state to exist (torch creates it at the first ``step()``):
:meth:`FunctionalOptimizer.ready` says so, and the caller takes that first step eagerly.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["FunctionalOptimizer", "functional_optimizer", "NotCapturable"]


class NotCapturable(Exception):
    """A piece of the program that a captured iteration cannot hold; the message says why."""


def _sgd(p, g, s, lr, h):
    if h["maximize"]:
        g = -g
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * p
    s = dict(s)
    if h["momentum"] != 0:
        buf = s["momentum_buffer"] * h["momentum"] + (1 - h["dampening"]) * g
        s["momentum_buffer"] = buf
        g = g + h["momentum"] * buf if h["nesterov"] else buf
    return p - lr * g, s


def _adam(p, g, s, lr, h):
    beta1, beta2 = h["betas"]
    if h["maximize"]:
        g = -g
    step = s["step"] + 1
    if h["weight_decay"] != 0:
        if h["decoupled"]:
            p = p * (1 - lr * h["weight_decay"])
        else:
            g = g + h["weight_decay"] * p
    m = s["exp_avg"] + (1 - beta1) * (g - s["exp_avg"])  # torch's lerp_
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    out = {"step": step, "exp_avg": m, "exp_avg_sq": v}
    if h["amsgrad"]:
        v = out["max_exp_avg_sq"] = torch.maximum(s["max_exp_avg_sq"], v)
    bc1 = 1 - beta1 ** step
    bc2_sqrt = (1 - beta2 ** step).sqrt()
    denom = v.sqrt() / bc2_sqrt + h["eps"]
    return p - (lr / bc1) * m / denom, out


def _rmsprop(p, g, s, lr, h):
    alpha = h["alpha"]
    if h["maximize"]:
        g = -g
    out = {"step": s["step"] + 1}
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * p
    sq = out["square_avg"] = s["square_avg"] * alpha + (1 - alpha) * g * g
    if h["centered"]:
        ga = out["grad_avg"] = s["grad_avg"] + (1 - alpha) * (g - s["grad_avg"])
        avg = (sq - ga * ga).sqrt()
    else:
        avg = sq.sqrt()
    avg = avg + h["eps"]
    if h["momentum"] > 0:
        buf = out["momentum_buffer"] = s["momentum_buffer"] * h["momentum"] + g / avg
        return p - lr * buf, out
    return p - lr * g / avg, out


def _adagrad(p, g, s, lr, h):
    if h["maximize"]:
        g = -g
    step = s["step"] + 1
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * p
    clr = lr / (1 + (step - 1) * h["lr_decay"])
    total = s["sum"] + g * g
    return p - clr * g / (total.sqrt() + h["eps"]), {"step": step, "sum": total}


# rule, the hyperparameters it reads, the state keys it needs (given the hyperparameters)
_RULES: dict[type, tuple[Any, tuple[str, ...]]] = {
    torch.optim.SGD: (_sgd, ("momentum", "dampening", "nesterov", "weight_decay", "maximize")),
    torch.optim.Adam: (_adam, ("betas", "eps", "weight_decay", "amsgrad", "maximize",
                               "decoupled_weight_decay")),
    torch.optim.AdamW: (_adam, ("betas", "eps", "weight_decay", "amsgrad", "maximize",
                                "decoupled_weight_decay")),
    torch.optim.RMSprop: (_rmsprop, ("alpha", "eps", "weight_decay", "momentum", "centered",
                                     "maximize")),
    torch.optim.Adagrad: (_adagrad, ("lr_decay", "weight_decay", "eps", "maximize")),
}


def _state_keys(rule, h: dict) -> tuple[str, ...]:
    if rule is _sgd:
        return ("momentum_buffer",) if h["momentum"] != 0 else ()
    if rule is _adam:
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())
    if rule is _rmsprop:
        return (("step", "square_avg") + (("grad_avg",) if h["centered"] else ())
                + (("momentum_buffer",) if h["momentum"] > 0 else ()))
    return ("step", "sum")


class FunctionalOptimizer:
    """One problem's torch optimizer as a pure update rule over its trainable parameters.

    Args:
        optimizer: the user's ``torch.optim`` optimizer, used as given (its state is read and
            written under torch's own keys).
        params: the problem's trainable parameters, in the order the captured iteration uses.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]):
        kind = next((c for c in type(optimizer).__mro__ if c in _RULES), None)
        if kind is None:
            raise NotCapturable(f"optimizer {type(optimizer).__name__} has no functional "
                                f"update rule (SGD, Adam, AdamW, RMSprop, Adagrad have)")
        self.optimizer = optimizer
        self.kind = kind
        self.rule, self._fields = _RULES[kind]
        self.params = list(params)
        index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        missing = [i for i, p in enumerate(self.params) if id(p) not in index]
        if missing:
            raise NotCapturable("a trainable parameter is not in its problem's optimizer")
        self.group_index = [index[id(p)] for p in self.params]
        self.hyper = [self._read_hyper(g) for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            if g.get("differentiable"):
                raise NotCapturable(f"{kind.__name__}(differentiable=True)")
        self.state_keys = [_state_keys(self.rule, self.hyper[i]) for i in self.group_index]
        # on the parameters' device: a CPU tensor input keeps a CUDA graph from being used
        self._lrs = [torch.tensor(float(g["lr"]), dtype=_lr_dtype(self.params),
                                  device=self.params[0].device if self.params else None)
                     for g in optimizer.param_groups]
        self._lr_values = [float(g["lr"]) for g in optimizer.param_groups]

    def _read_hyper(self, group: dict) -> dict:
        h = {k: group.get(k) for k in self._fields}
        h["maximize"] = bool(group.get("maximize", False))
        if self.rule is _adam:
            h["betas"] = tuple(float(b) for b in group["betas"])
            decoupled = group.get("decoupled_weight_decay")
            h["decoupled"] = bool(decoupled if decoupled is not None
                                  else issubclass(self.kind, torch.optim.AdamW))
            h["amsgrad"] = bool(group.get("amsgrad", False))
        for k, v in h.items():
            if isinstance(v, torch.Tensor):  # a tensor hyperparameter is a graph constant
                h[k] = float(v)
        return h

    def signature(self) -> tuple:
        """The graph's constants (every hyperparameter but the learning rate), to compare."""
        fields = self._fields
        return tuple(tuple(g.get(k) for k in fields) for g in self.optimizer.param_groups)

    def ready(self) -> bool:
        """Whether torch has created every state tensor this rule reads (after a first step)."""
        state = self.optimizer.state
        return all(all(state.get(p, {}).get(k) is not None for k in keys)
                   for p, keys in zip(self.params, self.state_keys))

    def states(self) -> list[dict[str, torch.Tensor]]:
        """The live state tensors, per parameter (torch's own objects: updated in place)."""
        out = []
        for p, keys in zip(self.params, self.state_keys):
            s = self.optimizer.state[p]
            out.append({k: s[k] for k in keys})
        return out

    def from_window(self, window_state: list[dict]) -> list[dict[str, torch.Tensor]]:
        """An unrolled window's optimizer state (:mod:`mlodsl.runtime.optim`: a Python ``step``)
        under this rule's keys (``step`` as a tensor, as torch keeps it)."""
        out = []
        for p, keys, s in zip(self.params, self.state_keys, window_state):
            live = self.optimizer.state[p]
            out.append({k: torch.full_like(live[k], float(s[k])) if k == "step" else s[k]
                        for k in keys})
        return out

    @staticmethod
    def to_window(states: list[dict[str, torch.Tensor]]) -> list[dict]:
        """This rule's per-parameter states as an unrolled window keeps them (detached)."""
        return [{k: int(v.item()) if k == "step" else v.detach() for k, v in s.items()}
                for s in states]

    def learning_rates(self) -> list[torch.Tensor]:
        """One 0-d tensor per param group with its current ``lr`` (refilled when it changed)."""
        for i, g in enumerate(self.optimizer.param_groups):
            lr = float(g["lr"])
            if lr != self._lr_values[i]:
                self._lrs[i].fill_(lr)
                self._lr_values[i] = lr
        return self._lrs

    def update(self, params, grads, states, lrs) -> tuple[list[torch.Tensor], list[dict]]:
        """A pure step: the new parameters and the new per-parameter states."""
        new_params, new_states = [], []
        for p, g, s, gi in zip(params, grads, states, self.group_index):
            q, s = self.rule(p, g, s, lrs[gi], self.hyper[gi])
            new_params.append(q)
            new_states.append(s)
        return new_params, new_states


def _lr_dtype(params) -> torch.dtype:
    return params[0].dtype if params and params[0].is_floating_point() else torch.float32


def functional_optimizer(optimizer, params) -> FunctionalOptimizer:
    """A :class:`FunctionalOptimizer`, or :class:`NotCapturable` saying why there is none."""
    if optimizer is None:
        raise NotCapturable("the problem has no optimizer")
    return FunctionalOptimizer(optimizer, params)
