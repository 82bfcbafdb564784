"""Evaluate losses with some problems' parameters replaced, without touching live parameters.

Hypergradient methods need a problem's loss at perturbed parameters (``w + eps v``), at
unrolled "fast" weights, or with buffers that must not change. Everything here goes through
``torch.func.functional_call``'s re-parametrisation: a module's parameter attributes point at
other tensors for the duration of a ``with`` block, and the live ``nn.Parameter`` objects are
never written to. User code (``training_step``) runs unchanged inside the block: whether it
calls ``self.module(x)``, ``self.classifier(x)`` or reads ``self.classifier.module.fc0.weight``,
it sees the substituted tensors.

Buffers (BatchNorm running statistics) are protected by substituting clones: a forward in
training mode then updates the clone, which is thrown away. Only a problem's own training step
updates its live buffers, so running statistics advance exactly once per step.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

try:  # torch.func.functional_call's own machinery; public enough to rely on since 2.0
    from torch.nn.utils.stateless import _reparametrize_module
except ImportError:  # pragma: no cover - very old torch
    _reparametrize_module = None

__all__ = ["substitute", "ModuleView", "gradient_fingerprint", "same_fingerprint"]


class ModuleView:
    """What to substitute in one module: parameter tensors and/or cloned buffers.

    ``params`` maps the module's parameter names to tensors (any subset); with
    ``protect_buffers`` every buffer is replaced by a clone for the block's duration.
    """

    __slots__ = ("params", "protect_buffers")

    def __init__(self, params: Mapping[str, torch.Tensor] | None = None,
                 protect_buffers: bool = False):
        self.params = dict(params or {})
        self.protect_buffers = protect_buffers

    def mapping(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The name -> tensor mapping to re-parametrise ``module`` with."""
        out = dict(self.params)
        if self.protect_buffers:
            for name, buf in module.named_buffers():
                if buf is not None and name not in out:
                    out[name] = buf.clone()
        return out


@contextlib.contextmanager
def substitute(views: Sequence[tuple[nn.Module, ModuleView]]) -> Iterator[None]:
    """Re-parametrise each module with its view for the duration of the block.

    Modules whose view is empty are left alone (no overhead).
    """
    with contextlib.ExitStack() as stack:
        for module, view in views:
            mapping = view.mapping(module)
            if mapping:
                stack.enter_context(_reparametrize_module(module, mapping, tie_weights=True))
        yield


def gradient_fingerprint(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[tuple]:
    """Per parameter, ``(sum g, |g|, numel)`` of ``g = d loss / d params`` (None where unused).

    A few numbers per tensor instead of the gradient itself: checking a loss slice against the
    full loss (:meth:`Engine.evaluate_loss` with ``grad_wrt``) then holds no parameter-sized
    copy while the slice is evaluated. The graph is retained: ``params`` may be fast weights
    whose unrolled tape other gradients still need.
    """
    if not loss.requires_grad:
        return [None] * len(params)
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return [None if g is None else
            (float(g.detach().sum()), float(torch.linalg.vector_norm(g.detach())), g.numel())
            for g in grads]


def same_fingerprint(a: Sequence[tuple | None], b: Sequence[tuple | None],
                     rtol: float = 1e-3) -> bool:
    """Whether two :func:`gradient_fingerprint` results agree to rounding (None is zero).

    ``|sum g|`` is at most ``sqrt(numel) |g|``, so the sums are compared on that scale.
    """
    for fa, fb in zip(a, b):
        if fa is None and fb is None:
            continue
        sa, na, n = fa if fa is not None else (0.0, 0.0, fb[2])
        sb, nb, _ = fb if fb is not None else (0.0, 0.0, n)
        scale = max(na, nb)
        if abs(na - nb) > rtol * scale or abs(sa - sb) > rtol * scale * n ** 0.5:
            return False
    return True
