"""The registry of hypergradient methods and the request object each method receives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from mlodsl.diagnostics import MLOError, did_you_mean
from mlodsl.methods import METHODS
from mlodsl.runtime.vectors import leaves

__all__ = ["HypergradRequest", "register", "get_method"]

_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn(request, **arguments)`` the implementation of method ``name``."""
    if name not in METHODS:
        raise ValueError(f"method {name!r} has no signature in mlodsl.methods.METHODS")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_method(name: str) -> Callable:
    """The implementation of method ``name``; an MLOError for an unknown name."""
    if name not in _REGISTRY:
        raise MLOError(f"unknown hypergradient method '{name}'",
                       hint=did_you_mean(name, _REGISTRY) or
                       "known methods: " + ", ".join(sorted(_REGISTRY)))
    return _REGISTRY[name]


@dataclass
class HypergradRequest:
    """Everything a method needs to turn ``v`` into contributions to the targets' gradients.

    Attributes:
        engine: the running engine (``engine.problems`` by name).
        lower: the problem whose best response is differentiated (``w`` are its parameters).
        targets: the problems whose parameters receive the contribution.
        v: cotangent on the lower's current parameters, one tensor per parameter.
        upper: the problem whose step asked for this hypergradient (for messages, logging).
        upper_loss: the upper's loss value (a detached scalar), used by ``reinforce``.
    """

    engine: Any
    lower: Any
    targets: Sequence[Any]
    v: Sequence[torch.Tensor]
    upper: Any = None
    upper_loss: torch.Tensor | None = None
    state: dict = field(default_factory=dict)

    def watching(self, check: str) -> bool:
        """Whether this call should run the self-check ``check`` (a diverging series, say):
        until the edge has warned for it (``state[check + "_warned"]``), on the edge's first
        10 calls and every 10th after. A check costs one host synchronisation; one that starts
        to fail late in training is still caught within 10 upper steps."""
        if self.state.get(f"{check}_warned"):
            return False
        calls = self.state[f"{check}_calls"] = int(self.state.get(f"{check}_calls", 0)) + 1
        return calls <= 10 or calls % 10 == 0

    def where(self) -> str:
        """The edge's position for messages: ``FILE:LINE:COL`` of its ``.mlo`` source when the
        program was compiled, else ``edge 'upper' -> 'lower'``."""
        upper = getattr(self.upper, "name", self.upper)
        return self.engine.edge_label(upper, self.lower.name)

    # -- what methods evaluate -----------------------------------------------------------
    def full_precision(self):
        """A block whose loss evaluations skip mixed precision's autocast (they run in the
        parameters' dtype): for the evaluations a method's accuracy hinges on."""
        return self.engine.precision.full_precision()

    def lower_params(self) -> list[torch.Tensor]:
        """The lower's current parameters (fast weights while unrolling)."""
        return self.lower.current_parameters()

    def target_params(self) -> list[torch.Tensor]:
        """The targets' current parameters, concatenated in target order."""
        out: list[torch.Tensor] = []
        for t in self.targets:
            out.extend(t.current_parameters())
        return out

    def lower_loss(self, params: Sequence[torch.Tensor] | None = None,
                   for_targets: bool = False) -> torch.Tensor:
        """The lower's loss on the batch of its last step, at ``params`` (default: current).

        Evaluated functionally: live parameters and buffers are not modified. With
        ``for_targets`` the caller promises to differentiate the result only with respect to
        the targets, and gets a scalar with that gradient, possibly not the loss's value: a
        compiled loss leaves out the terms that read no target (:mod:`mlodsl.compiler.back.slicing`).
        """
        wrt = tuple(t.name for t in self.targets) if for_targets else None
        return self.engine.evaluate_loss(self.lower, self.lower.cur_batch, params=params,
                                         grad_wrt=wrt)

    def lower_grad_with_graph(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(w, grad_w g(w, targets))`` at fresh leaves ``w`` equal to the lower's parameters.

        The gradient keeps its graph, so it can be differentiated again with respect to ``w``
        (Hessian-vector products) and to the targets (the mixed second derivative).
        Evaluating at fresh leaves keeps the graph away from the lower's own history (its
        unrolled fast weights). The loss is evaluated without mixed precision's autocast: every
        Hessian-vector product and the mixed derivative are taken through this graph, and their
        rounding compounds over the iterations of ``cg``/``neumann`` (docs/systems.md).
        """
        w = leaves(self.lower_params())
        with self.full_precision():
            loss = self.lower_loss(w)
        return w, self.grad_lower(loss, create_graph=True, params=w)

    def grad_lower(self, loss: torch.Tensor, create_graph: bool = True,
                   params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``d loss / d w`` (zeros for parameters the loss does not reach).

        A zero entry has no graph: :meth:`hvp` and :meth:`mixed_vjp` treat it as a constant,
        so a parameter the loss never reads contributes nothing instead of failing.
        """
        params = list(params) if params is not None else self.lower_params()
        if not loss.requires_grad:  # the loss reads none of the lower's parameters
            return [torch.zeros_like(p) for p in params]
        grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]

    def mixed_vjp(self, lower_grad: Sequence[torch.Tensor], vector: Sequence[torch.Tensor],
                  retain_graph: bool = False) -> list[torch.Tensor | None]:
        """``-(d/d targets) <lower_grad, vector>``: the implicit term for a solved ``H^{-1} v``."""
        grads = self.grad_targets(list(lower_grad), list(vector), retain_graph=retain_graph)
        return [None if g is None else -g for g in grads]

    def grad_targets(self, outputs, grad_outputs=None, retain_graph: bool = False
                     ) -> list[torch.Tensor | None]:
        """``d outputs / d targets`` (None where unused).

        The graph is kept when a target has fast weights: their unrolled tape is shared with
        the upper's own backward and with other methods.
        """
        targets = self.target_params()
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        gos = list(grad_outputs) if isinstance(grad_outputs, (list, tuple)) else \
            [grad_outputs] * len(outs)
        pairs = [(o, g) for o, g in zip(outs, gos) if o.requires_grad]
        if not pairs:  # the lower's loss reads no target
            return [None] * len(targets)
        keep = retain_graph or any(t.grad_fn is not None for t in targets)
        return list(torch.autograd.grad([o for o, _ in pairs], targets,
                                        grad_outputs=[g for _, g in pairs],
                                        retain_graph=keep or None, allow_unused=True))

    def hvp(self, lower_grad: Sequence[torch.Tensor], vector: Sequence[torch.Tensor],
            params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Hessian-vector product of the lower's loss, from a gradient built with a graph.

        Entries of ``lower_grad`` without a graph (parameters the loss does not read, or reads
        only linearly) are constant in ``w``: their rows of ``H`` are zero.
        """
        params = list(params) if params is not None else self.lower_params()
        pairs = [(g, x) for g, x in zip(lower_grad, vector) if g.requires_grad]
        if not pairs:
            return [torch.zeros_like(p) for p in params]
        out = torch.autograd.grad([g for g, _ in pairs], params,
                                  grad_outputs=[x for _, x in pairs],
                                  retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]
