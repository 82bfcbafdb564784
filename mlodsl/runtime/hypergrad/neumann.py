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

The series diverges for a larger ``alpha``; the method then warns once per edge, at the edge's
``.mlo`` position, with a safe ``alpha`` (:func:`series_growth`). A compiled program's default
``alpha`` is the lower's learning rate (docs/hypergradients.md, "Choosing neumann's alpha").

Reference: Lorraine, Vicol and Duvenaud, "Optimizing Millions of Hyperparameters by Implicit
Differentiation", AISTATS 2020, Algorithm 3 (same convention as Betty's ``neumann``).
"""
from __future__ import annotations

import math
import warnings

import torch

from mlodsl.diagnostics import MLOWarning
from mlodsl.runtime.hypergrad.registry import HypergradRequest, register
from mlodsl.runtime.vectors import axpy, detached, norm, scale


def neumann_inverse_hvp(hvp, v, iterations: int, alpha: float,
                        watch: list | None = None) -> list[torch.Tensor]:
    """``alpha sum_{k=0..iterations} (I - alpha H)^k v`` with ``hvp(x) = H x``.

    ``watch``: a list that receives, per term, ``(|p_k|, |H p_k|)`` as 0-d tensors (no host
    synchronisation here), for :func:`series_growth`.
    """
    p = list(v)
    total = list(v)
    for _ in range(iterations):
        hp = hvp(p)
        if watch is not None:
            watch.append((norm(p), norm(hp)))
        p = axpy(-alpha, hp, p)
        total = [t + q for t, q in zip(total, p)]
    if watch is not None:
        watch.append((norm(p), None))
    return scale(alpha, total)


def series_growth(watch: list) -> tuple[float, float] | None:
    """``(growth per term, estimate of lambda_max(H))`` when the series' terms grew, else None.

    For a symmetric ``H`` whose eigenvalues all lie in ``(0, 2/alpha)``, every term is shorter
    than the one before (``|p_{k+1}| <= max|1 - alpha mu| |p_k| < |p_k|``), so a term longer
    than its predecessor proves that ``alpha`` is too large (or ``H`` is not positive definite)
    and the series diverges. ``|H p_k| / |p_k|`` (largest over the terms) is a lower bound on
    ``lambda_max``, close to it once the growing direction dominates. One host sync.
    """
    sizes = torch.stack([n for n, _ in watch]).tolist()
    images = torch.stack([h for _, h in watch[:-1]]).tolist()
    ratios = [b / a if a > 0 else (1.0 if b == 0 else math.inf)
              for a, b in zip(sizes, sizes[1:])]
    grown = [r if math.isfinite(r) else math.inf for r in ratios if not r <= 1.0 + 1e-6]
    if not grown:  # (a NaN ratio is not <= 1: it counts as growth)
        return None
    lam = max((h / n for n, h in zip(sizes, images) if n > 0 and math.isfinite(h / n)),
              default=math.inf)
    return max(grown), lam


def safe_alpha(lam: float) -> float:
    """``1 / lambda_max`` rounded down to one significant digit (well inside ``2/lambda_max``)."""
    if not math.isfinite(lam) or lam <= 0:
        return 0.0
    x = 1.0 / lam
    digits = math.floor(math.log10(x))
    return math.floor(x / 10 ** digits) * 10 ** digits


def _warn_growth(request: HypergradRequest, alpha: float, growth: float, lam: float) -> None:
    safe = safe_alpha(lam)
    bound = f"2/lambda_max(H) ~ {2 / lam:.3g}" if math.isfinite(lam) and lam > 0 \
        else "2/lambda_max(H)"
    advice = f"use neumann(alpha={safe:g})" if safe > 0 else "use a smaller alpha"
    warnings.warn(MLOWarning(
        f"{request.where()}: warning: the Neumann series of the hypergradient through "
        f"'{request.lower.name}' diverges (its terms grow x{growth:.3g} each): "
        f"alpha={float(alpha)!r} is above {bound}, so the hypergradient is wrong\n"
        f"  hint: {advice} (about 1/lambda_max), or cg(...), which needs no step size"),
        stacklevel=2)


@register("neumann")
def neumann(request: HypergradRequest, iterations: int = 1, alpha: float = 1.0
            ) -> list[torch.Tensor | None]:
    """Truncated Neumann series for ``H^{-1} v`` (see module docstring).

    Until it has warned once for this edge, it watches the series' terms (on the calls
    :meth:`~HypergradRequest.watching` picks) and warns (an
    :class:`~mlodsl.diagnostics.MLOWarning` at the edge's position) when they grow.
    """
    w, grad_w = request.lower_grad_with_graph()
    watch = [] if request.watching("neumann") else None
    x = neumann_inverse_hvp(lambda u: request.hvp(grad_w, u, params=w),
                            detached(request.v), iterations, alpha, watch)
    if watch:
        found = series_growth(watch)
        if found is not None:
            request.state["neumann_warned"] = True
            _warn_growth(request, alpha, *found)
    return request.mixed_vjp(grad_w, x)
