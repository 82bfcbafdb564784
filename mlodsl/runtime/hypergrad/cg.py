"""``cg(iterations=1, alpha=1.0, tol=0.0)``: inverse Hessian-vector product by conjugate gradient.

With ``g(w, lambda)`` the lower's loss, ``H`` its Hessian in ``w`` and ``v = df/dw``, the
implicit term is ``-(d^2 g / d lambda dw) x`` with ``x`` solving ``H x = v``. We run plain
conjugate gradient, started at ``x_0 = 0``, on the scaled system

    (alpha H) y = alpha v,        x = y

whose iterates are *identical* to those on ``H x = v`` in exact arithmetic (CG is invariant
under scaling the system): ``alpha`` only rescales the intermediate quantities, never the answer.
(Betty 0.2.1 mixes scaled and unscaled products and diverges for ``cg_alpha != 1``.) Each
iteration costs one Hessian-vector product:

    r_0 = p_0 = b,   a_k = <r_k, r_k> / <p_k, A p_k>,   x_{k+1} = x_k + a_k p_k,
    r_{k+1} = r_k - a_k A p_k,   b_k = <r_{k+1}, r_{k+1}> / <r_k, r_k>,   p_{k+1} = r_{k+1} + b_k p_k

With ``tol > 0`` the loop stops once ``|r_k| <= tol |r_0|`` (one host synchronisation per
iteration; ``tol = 0`` never synchronises). CG assumes ``H`` positive definite; on an
indefinite Hessian a non-positive curvature ``<p, A p> <= 0`` makes the step meaningless, so
such a direction contributes nothing (checked without synchronising), and the method warns
once per edge, at the edge's position, that it happened (checked with one synchronisation on
the first 10 calls and every 10th after, until it has warned).

Reference: Hestenes and Stiefel, "Methods of Conjugate Gradients for Solving Linear Systems",
1952; used for hypergradients by Pedregosa, "Hyperparameter optimization with approximate
gradient", ICML 2016, and Rajeswaran et al., "Meta-Learning with Implicit Gradients", NeurIPS 2019.
"""
from __future__ import annotations

import warnings

import torch

from mlodsl.diagnostics import MLOWarning
from mlodsl.runtime.hypergrad.registry import HypergradRequest, register
from mlodsl.runtime.vectors import axpy, detached, dot, scale


def conjugate_gradient(matvec, b, iterations: int, tol: float = 0.0,
                       watch: list | None = None) -> list[torch.Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` (``matvec(x) = A x``).

    ``watch``: a list that receives, per iteration, whether its curvature ``<p, A p>`` was
    non-positive (a 0-d bool tensor: no host synchronisation here).
    """
    x = [torch.zeros_like(t) for t in b]
    r = list(b)
    p = list(b)
    rr = dot(r, r)
    stop = (tol * tol) * rr
    for _ in range(iterations):
        ap = matvec(p)
        curvature = dot(p, ap)
        # A zero residual or non-positive curvature gives a zero step instead of NaN/garbage.
        ok = curvature > 0
        if watch is not None:
            watch.append(~ok & (rr > 0))  # (a zero residual is convergence, not a failure)
        a = torch.where(ok, rr / torch.where(ok, curvature, torch.ones_like(curvature)),
                        torch.zeros_like(rr))
        x = axpy(a, p, x)
        r = axpy(-a, ap, r)
        rr_new = dot(r, r)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)),
                           torch.zeros_like(rr))
        p = axpy(beta, p, r)
        rr = rr_new
        if tol > 0 and bool(rr <= stop):
            break
    return x


@register("cg")
def cg(request: HypergradRequest, iterations: int = 1, alpha: float = 1.0, tol: float = 0.0
       ) -> list[torch.Tensor | None]:
    """Conjugate gradient on ``(alpha H) x = alpha v`` (see module docstring)."""
    w, grad_w = request.lower_grad_with_graph()
    b = scale(alpha, detached(request.v))
    watch = [] if request.watching("cg") else None
    x = conjugate_gradient(lambda u: scale(alpha, request.hvp(grad_w, u, params=w)),
                           b, iterations, tol, watch)
    if watch and bool(torch.stack(watch).any()):  # one sync (see request.watching)
        request.state["cg_warned"] = True
        warnings.warn(MLOWarning(
            f"{request.where()}: warning: cg met non-positive curvature of the loss of "
            f"'{request.lower.name}' (its Hessian is not positive definite there: not convex, "
            "or far from its minimum); those directions were left out, so the hypergradient "
            "is approximate\n"
            "  hint: let the lower converge more per upper step (a larger 'every'), or use "
            "darts() or first_order()"), stacklevel=2)
    return request.mixed_vjp(grad_w, x)
