"""``sama(alpha=1.0)``: SAMA's first-order, optimizer-aware implicit hypergradient.

The lower's optimizer takes steps ``w <- w - u(grad_w g(w, lambda))`` with an update map ``u``
(``u(g) = lr g`` for SGD; Adam's is elementwise in ``g`` given its moments). At a fixed point,
differentiating ``u(grad_w g(w*(lambda), lambda)) = 0`` gives
``dw*/dlambda = -(P H)^{-1} P d^2g/dw dlambda`` with ``P = du/dg`` and ``H`` the Hessian. SAMA
approximates the "base Jacobian" ``(P H)^{-1}`` by the identity, which keeps ``P``:

    contribution = -(d^2 g / d lambda dw) P v
                 ~ ( grad_lambda g(w - eps P v) - grad_lambda g(w + eps P v) ) / (2 eps),
    eps = alpha / ||P v||

(one central finite difference, as in ``darts``; ``alpha`` is ``Config.sama_adam_alpha``).

``P`` ("the algorithmic adaptation for adaptive optimizers") is read from the lower's torch
optimizer:

* SGD (any options): ``P = I``, so ``sama`` coincides with ``darts(alpha)``, as in the paper and
  Betty 0.2.1.
* Adam / AdamW (amsgrad too): the exact diagonal ``du/dg`` of the *next* Adam step at the lower's
  current parameters, computed from its state ``(m, v, t)``, its group's ``lr, betas, eps,
  weight_decay`` and the gradient ``g`` on the lower's last batch (one extra gradient)::

      m' = b1 m + (1 - b1) g,  v' = b2 v + (1 - b2) g^2,
      u(g) = lr / (1 - b1^(t+1)) * m' / (sqrt(v' / (1 - b2^(t+1))) + eps)

  (``g`` includes Adam's L2 term; AdamW's decoupled decay does not depend on ``g``). Betty
  instead reconstructs the previous step's moments from a stored last gradient and ignores the
  bias corrections; the two agree up to those corrections once the moments settle.

Under mixed precision the finite difference's two evaluations and the gradient that sets ``P``
run without autocast, in the parameters' dtype (as in ``darts``; docs/systems.md).

Reference: Choe, Mehta, Ahn, Neubig, Xing et al., "Making Scalable Meta Learning Practical",
NeurIPS 2023, section 3.2 (base Jacobian as identity, algorithmic adaptation for Adam).
"""
from __future__ import annotations

import torch

from mlodsl.runtime.hypergrad.registry import HypergradRequest, register
from mlodsl.runtime.vectors import detached, leaves, norm

__all__ = ["sama", "adam_preconditioner"]


def adam_preconditioner(optimizer: torch.optim.Optimizer, params, grads) -> list[torch.Tensor]:
    """Diagonal of ``d u / d g`` for the next Adam/AdamW step of ``params`` (see module doc)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p, g in zip(params, grads):
        group = group_of[id(p)]
        state = optimizer.state.get(p, {})
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        decoupled = group.get("decoupled_weight_decay",
                              isinstance(optimizer, torch.optim.AdamW))
        step = state.get("step", 0)
        t = int(step.item() if isinstance(step, torch.Tensor) else step) + 1
        m = state.get("exp_avg", torch.zeros_like(p))
        v = state.get("exp_avg_sq", torch.zeros_like(p))
        with torch.enable_grad():
            gl = g.detach().requires_grad_(True)
            ge = gl + wd * p.detach() if (wd != 0 and not decoupled) else gl
            m2 = beta1 * m + (1 - beta1) * ge
            v2 = beta2 * v + (1 - beta2) * ge * ge
            if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
                v2 = torch.maximum(state["max_exp_avg_sq"], v2)
            root = torch.where(v2 > 0, v2, torch.ones_like(v2)).sqrt() * (v2 > 0)
            u = lr / (1 - beta1 ** t) * m2 / (root / (1 - beta2 ** t) ** 0.5 + eps)
            # u is elementwise in g, so the gradient of its sum is the Jacobian's diagonal.
            (diag,) = torch.autograd.grad(u.sum(), gl)
        out.append(diag)
    return out


def _is_adam(optimizer) -> bool:
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


@register("sama")
def sama(request: HypergradRequest, alpha: float = 1.0) -> list[torch.Tensor | None]:
    """Finite difference of the targets' gradient along the preconditioned ``P v``."""
    w = detached(request.lower_params())
    v = detached(request.v)
    optimizer = request.lower.optimizer
    with request.full_precision():
        if _is_adam(optimizer):
            wl = leaves(w)
            grads = request.grad_lower(request.lower_loss(wl), create_graph=False, params=wl)
            precond = adam_preconditioner(optimizer, request.lower.trainable_parameters(), grads)
            v = [p * x for p, x in zip(precond, v)]
        eps = alpha / (norm(v) + 1e-12)
        plus = [a + eps * b for a, b in zip(w, v)]
        minus = [a - eps * b for a, b in zip(w, v)]
        g_plus = request.grad_targets(request.lower_loss(plus, for_targets=True))
        g_minus = request.grad_targets(request.lower_loss(minus, for_targets=True))
    out: list[torch.Tensor | None] = []
    for gp, gm in zip(g_plus, g_minus):
        if gp is None and gm is None:
            out.append(None)
        else:
            out.append(((0 if gm is None else gm) - (0 if gp is None else gp)) / (2 * eps))
    return out
