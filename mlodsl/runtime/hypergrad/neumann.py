"""``neumann(iterations=1, alpha=1.0)``: inverse Hessian-vector product by a Neumann series.

With ``g(w, lambda)`` the lower's loss, ``H = d^2 g / dw^2`` at the lower's current parameters
and ``v = df/dw`` the upper's gradient there, the implicit function theorem gives the
contribution ``-(d^2 g / d lambda dw) H^{-1} v``. For ``0 < alpha < 2 / lambda_max(H)`` (``H``
positive definite) the series ``H^{-1} = alpha sum_k (I - alpha H)^k`` converges, and
``iterations = K`` Hessian-vector products give its truncation

    x_K = alpha * sum_{k=0..K} (I - alpha H)^k v        (K + 1 terms)
    contribution = -(d^2 g / d lambda dw) x_K

computed by the recursion ``p_0 = v, p_{k+1} = p_k - alpha H p_k, x = alpha sum_k p_k``. The
error of ``x_K`` shrinks like ``|1 - alpha mu|^(K+1)`` for the slowest eigenvalue ``mu``.

Reference: Lorraine, Vicol and Duvenaud, "Optimizing Millions of Hyperparameters by Implicit
Differentiation", AISTATS 2020, Algorithm 3 (same convention as Betty's ``neumann``).
"""
from __future__ import annotations

import torch

from mlodsl.runtime.hypergrad.registry import HypergradRequest, register
from mlodsl.runtime.vectors import axpy, detached, scale


def neumann_inverse_hvp(hvp, v, iterations: int, alpha: float) -> list[torch.Tensor]:
    """``alpha sum_{k=0..iterations} (I - alpha H)^k v`` with ``hvp(x) = H x``."""
    p = list(v)
    total = list(v)
    for _ in range(iterations):
        p = axpy(-alpha, hvp(p), p)
        total = [t + q for t, q in zip(total, p)]
    return scale(alpha, total)


@register("neumann")
def neumann(request: HypergradRequest, iterations: int = 1, alpha: float = 1.0
            ) -> list[torch.Tensor | None]:
    """Truncated Neumann series for ``H^{-1} v`` (see module docstring)."""
    w, grad_w = request.lower_grad_with_graph()
    x = neumann_inverse_hvp(lambda u: request.hvp(grad_w, u, params=w),
                            detached(request.v), iterations, alpha)
    return request.mixed_vjp(grad_w, x)
