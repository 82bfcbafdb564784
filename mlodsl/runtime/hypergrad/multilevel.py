"""The exact multilevel mode: a middle level's Jacobian from its *total* objective.

The default chain (``multilevel="frozen"``, :mod:`.chain`) differentiates a middle level ``M``'s
best response from its own loss ``g_M(theta_M, theta_below, theta_above)`` with the levels
below it held fixed. But ``M`` is trained against levels that respond to it: its best response
minimises the *total* objective

    G_M(theta_M, theta_above) = g_M(theta_M, theta_below*(theta_M, theta_above), theta_above)

and its Jacobian is ``dtheta_M*/dtheta_T = -(d^2 G_M / dtheta_M^2)^{-1} d^2 G_M / dtheta_M dtheta_T``.
With ``multilevel="exact"`` on the edge into ``M``, that edge's method (``cg``, ``neumann``,
``darts``, ``sama``) runs on these total second derivatives instead of ``g_M``'s own.

Every level ``K`` is linearised at the current point: its response to directions ``d`` of the
levels above it (inside the top's sub-DAG) is ``dtheta_K = J_K d`` with
``J_K = -S_K (d^2 g_K / dtheta_K dtheta_above)``, ``S_K`` the inverse (or its approximation)
of ``K``'s edge method: ``cg``/``neumann`` on the Hessian, the identity (``darts``), the
optimizer's preconditioner (``sama``), zero (``first_order``); for a ``K`` that is itself
``exact``, all of these are total, recursively. A total second derivative of ``M`` along a
direction ``x`` of ``(theta_M, theta_above)`` is then

    d  = (x, J_below x)                       (the levels below respond: one solve per level)
    h  = d^2 Lambda_M [d]                     (Lambda_M = g_M - sum_L <s_L, dg_L/dtheta_L>)
    out = h_{M, above} + J_below^T h_below    (pushed back down the chain: one solve per level)

with the adjoints ``s_L = S_L c_L``, ``c`` being ``g_M``'s gradient in the levels below pushed
down the chain. The residuals ``dg_L/dtheta_L`` vanish along the best responses, so
``Lambda_M = G_M`` there and its second derivatives along ``d`` are ``G_M``'s, the curvature of
the lower best responses included (a third-order product per level below). Exact with
converged inverses for any smooth losses, except that a level below that is itself exact
keeps no curvature term (zero when the levels below it are quadratic). Cost per total
Hessian-vector product: one HVP of ``g_M``, one third-order product and two applications of
its method's inverse (forward and back) per level below; each level's loss is evaluated once
per hypergradient and its graph reused.

Levels below an exact middle must be implicit (``unroll`` and ``reinforce`` responses are not
linear maps of the current point); :func:`check_exact` refuses them when the engine is built.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime.vectors import leaves, scale

__all__ = ["is_exact", "exact_push", "check_exact"]

#: Methods whose response is a linear map at the current point (usable below an exact middle).
LINEAR_METHODS = ("cg", "neumann", "darts", "sama", "first_order")

Vector = list[torch.Tensor]
Direction = dict[str, Vector]


def is_exact(engine, lower: str, args: dict) -> bool:
    """Whether the edge's arguments ask for the exact mode and ``lower`` has levels below."""
    return args.get("multilevel") == "exact" and bool(engine.descendants_bottom_up(lower))


def check_exact(engine) -> None:
    """Refuse an exact edge into a middle level with a level below it that is not implicit."""
    for spec in engine.edges.values():
        if spec.args.get("multilevel") != "exact":
            continue
        for name in engine.descendants_bottom_up(spec.lower):
            method, _ = engine.method_for(spec.upper, name)
            if method not in LINEAR_METHODS or engine.is_unrolled(name):
                raise MLOError(
                    f"edge {spec.upper} -> {spec.lower}: multilevel='exact' needs the levels "
                    f"below '{spec.lower}' to respond implicitly, but '{name}' uses "
                    f"{'unrolled steps' if engine.is_unrolled(name) else method}",
                    hint=f"use cg, neumann, darts or sama into '{name}', or "
                    f"multilevel='frozen' on {spec.upper} -> {spec.lower}")


def exact_push(engine, top, lower, targets, v: Sequence[torch.Tensor]
               ) -> list[torch.Tensor | None]:
    """The contributions of ``v`` (the cotangent on ``lower``) to ``targets``' gradients,
    through ``lower``'s total best-response Jacobian (one per target parameter, in order)."""
    scope = set(engine.descendants_bottom_up(top.name)) | {top.name}
    lin = _Linearisation(engine, top.name, scope)
    out = lin.push(lower.name, [t.detach() for t in v])
    flat: list[torch.Tensor | None] = []
    for t in targets:
        flat.extend(out.get(t.name) or [None] * len(t.current_parameters()))
    return flat


class _Level:
    """One level's loss at the current point, with its gradient in every variable it may read
    (its own parameters, those of the levels above it in scope and, when exact, below it)."""

    def __init__(self, engine, name: str, variables: list[str]):
        problem = engine.problems[name]
        self.variables = variables
        self.leaves = {n: leaves(engine.problems[n].current_parameters()) for n in variables}
        shown = {n: t for n, t in self.leaves.items() if n != name}
        # without autocast: every (total) Hessian-vector product goes through this graph
        with torch.enable_grad(), engine.precision.full_precision():
            loss = engine.evaluate_loss(problem, problem.cur_batch, params=self.leaves[name],
                                        shown=shown)
            flat = [t for n in variables for t in self.leaves[n]]
            grads = (torch.autograd.grad(loss, flat, create_graph=True, allow_unused=True)
                     if loss.requires_grad else [None] * len(flat))
        self.grads = self._split(grads)
        # d<s, dg/dtheta_name>/d(variables) with a graph, for the s of the last curvature call
        self._phi_key: int | None = None
        self._grad_phi = None

    def _split(self, flat) -> Direction:
        out, i = {}, 0
        for n in self.variables:
            k = len(self.leaves[n])
            out[n] = list(flat[i:i + k])
            i += k
        return out

    def hvp(self, direction: Direction) -> Direction:
        """``d^2 g [direction]`` in every variable (zeros where nothing depends)."""
        pairs = [(g, d) for n, ds in direction.items() if n in self.grads
                 for g, d in zip(self.grads[n], ds) if g is not None and g.requires_grad]
        flat = [t for n in self.variables for t in self.leaves[n]]
        if not pairs:
            return {n: [torch.zeros_like(t) for t in self.leaves[n]] for n in self.variables}
        with torch.enable_grad():
            out = torch.autograd.grad([g for g, _ in pairs], flat,
                                      grad_outputs=[d.to(g.dtype) for g, d in pairs],
                                      retain_graph=True, allow_unused=True)
        out = [torch.zeros_like(t) if o is None else o for o, t in zip(out, flat)]
        return self._split(out)

    def curvature(self, name: str, s: Vector, direction: Direction) -> Direction:
        """``d^2 <s, d g / d theta_name> [direction]`` in every variable: the third derivative
        of the loss contracted with a fixed ``s`` (the best response's curvature term)."""
        key = id(s)
        if self._phi_key != key:
            flat = [t for n in self.variables for t in self.leaves[n]]
            pairs = [(g, v) for g, v in zip(self.grads[name], s)
                     if g is not None and g.requires_grad]
            grad_phi = None
            if pairs:
                with torch.enable_grad():
                    phi = sum((g * v.to(g.dtype)).sum() for g, v in pairs)
                    grad_phi = torch.autograd.grad(phi, flat, create_graph=True,
                                                   allow_unused=True, retain_graph=True)
            self._phi_key, self._grad_phi = key, grad_phi
        flat = [t for n in self.variables for t in self.leaves[n]]
        zero = {n: [torch.zeros_like(t) for t in self.leaves[n]] for n in self.variables}
        if self._grad_phi is None:
            return zero
        ds = self._split([None] * len(flat))
        for n, vec in direction.items():
            if n in ds:
                ds[n] = list(vec)
        pairs = [(g, d) for g, d in zip(self._grad_phi, [t for n in self.variables
                                                         for t in ds[n]])
                 if g is not None and g.requires_grad and d is not None]
        if not pairs:
            return zero
        with torch.enable_grad():
            out = torch.autograd.grad([g for g, _ in pairs], flat,
                                      grad_outputs=[d.to(g.dtype) for g, d in pairs],
                                      retain_graph=True, allow_unused=True)
        return self._split([torch.zeros_like(t) if o is None else o for o, t in zip(out, flat)])


class _Linearisation:
    """Every level of a top's sub-DAG, linearised at the current point (see module doc)."""

    def __init__(self, engine, top: str, scope: set[str]):
        self.engine, self.top, self.scope = engine, top, scope
        self.levels: dict[str, _Level] = {}
        self.order = list(engine.problems.keys())
        self._adjoints: dict[str, dict[str, Vector]] = {}

    # -- structure ---------------------------------------------------------------------------
    def above(self, name: str) -> list[str]:
        return self.engine.ancestors_in(name, self.scope)

    def below(self, name: str) -> list[str]:
        """Levels below ``name``, lowest first."""
        return list(self.engine.descendants_bottom_up(name))

    def method(self, name: str) -> tuple[str, dict]:
        return self.engine.method_for(self.top, name)

    def exact(self, name: str) -> bool:
        return is_exact(self.engine, name, self.method(name)[1])

    def level(self, name: str) -> _Level:
        if name not in self.levels:
            variables = [name, *self.above(name)]
            if self.exact(name):
                variables += [n for n in self.order if n in set(self.below(name))]
            self.levels[name] = _Level(self.engine, name, variables)
        return self.levels[name]

    # -- the (total) second derivatives of one level --------------------------------------
    def second(self, name: str, x: Direction) -> Direction:
        """``d^2 G_name [x]`` on ``name`` and the levels above it: the total objective's when
        the edge into ``name`` is exact, else its own loss's."""
        level = self.level(name)
        keep = [name, *self.above(name)]
        if not self.exact(name):
            h = level.hvp(x)
            return {n: h[n] for n in keep}
        below = self.below(name)
        responses = self.respond(below, x)
        d = {**x, **responses}
        h = level.hvp(d)
        # The curvature of the lower best responses: G = g - sum <s_L, dg_L/dtheta_L> along
        # the responses (the residuals vanish there), s_L the adjoints of g's own gradient.
        for low, s_low in self.adjoints(name).items():
            corr = self.level(low).curvature(low, s_low, d)
            for n, vec in corr.items():
                if n in h:
                    h[n] = [a - b for a, b in zip(h[n], vec)]
        out = {n: h[n] for n in keep}
        back = self.pull(below, {n: h[n] for n in below}, onto=set(keep))
        for n, vec in back.items():
            out[n] = [a + b for a, b in zip(out[n], vec)]
        return out

    def adjoints(self, name: str) -> dict[str, Vector]:
        """``s_L = S_L c_L`` for the levels ``L`` below the exact level ``name`` whose own
        Jacobians are frozen: ``c`` is ``g_name``'s gradient in them, pushed down the chain
        (lowest first), as :meth:`pull` does. (An exact level below keeps no such term: the
        curvature of its own response is not formed.)"""
        cache = self._adjoints
        if name not in cache:
            level = self.level(name)
            below = self.below(name)
            inside = set(below) | {name} | set(self.above(name))
            c = {n: [torch.zeros_like(t) if g is None else g.detach()
                     for g, t in zip(level.grads[n], level.leaves[n])] for n in below}
            out: dict[str, Vector] = {}
            for low in below:
                x = self.solve(low, c[low])
                if x is None:
                    continue
                if not self.exact(low):
                    out[low] = [t.detach() for t in x]
                mixed = self.second(low, {low: x})
                for a in self.above(low):
                    if a in c and a in inside:
                        c[a] = [u - v for u, v in zip(c[a], mixed[a])]
            cache[name] = out
        return cache[name]

    def solve(self, name: str, rhs: Vector) -> Vector | None:
        """``S_name rhs``: the edge method's inverse of the (total) Hessian; None for zero."""
        method, args = self.method(name)

        def hess(u):
            return self.second(name, {name: u})[name]

        if method == "cg":
            from mlodsl.runtime.hypergrad.cg import conjugate_gradient
            alpha = args["alpha"]
            return conjugate_gradient(lambda u: scale(alpha, hess(u)), scale(alpha, rhs),
                                      args["iterations"], args["tol"])
        if method == "neumann":
            from mlodsl.runtime.hypergrad.neumann import neumann_inverse_hvp
            return neumann_inverse_hvp(hess, rhs, args["iterations"], args["alpha"])
        if method == "darts":
            return list(rhs)
        if method == "sama":
            return self._sama(name, rhs)
        if method == "first_order":
            return None
        raise MLOError(f"multilevel='exact': '{name}' uses {method}, which has no linear "
                       "response (check_exact refuses it when the engine is built)")

    def _sama(self, name: str, rhs: Vector) -> Vector:
        from mlodsl.runtime.hypergrad.sama import _is_adam, adam_preconditioner
        problem = self.engine.problems[name]
        if not _is_adam(problem.optimizer):
            return list(rhs)
        own = self.level(name).grads[name]
        grads = [torch.zeros_like(p) if g is None else g.detach()
                 for g, p in zip(own, self.level(name).leaves[name])]
        precond = adam_preconditioner(problem.optimizer, problem.trainable_parameters(), grads)
        return [p * r for p, r in zip(precond, rhs)]

    # -- responses of levels, forward (J d) and back (J^T c) --------------------------------
    def respond(self, members: list[str], given: Direction) -> Direction:
        """``J d`` for every level of ``members`` (lowest first), highest first, each from the
        directions of the levels above it (``given`` and the responses found so far)."""
        d = dict(given)
        out: Direction = {}
        for name in reversed(members):
            push = {a: d[a] for a in self.above(name) if a in d}
            if not push:
                continue
            mixed = self.second(name, push)[name]
            x = self.solve(name, mixed)
            if x is None:
                continue
            out[name] = d[name] = [-t for t in x]
        return out

    def pull(self, members: list[str], cotangent: Direction, onto: set[str]) -> Direction:
        """``J^T c``: cotangents on ``members`` (lowest first) pushed up the chain; the part
        that lands on ``onto``."""
        c = {n: list(v) for n, v in cotangent.items()}
        for name in members:
            if name not in c:
                continue
            for target, vec in self.push(name, c[name]).items():
                if target in c:
                    c[target] = [a + b for a, b in zip(c[target], vec)]
                else:
                    c[target] = list(vec)
        return {n: c[n] for n in onto if n in c}

    def push(self, name: str, v: Vector) -> Direction:
        """``J_name^T v`` onto every level above ``name``: ``-(d^2 G / d above d name) S v``."""
        x = self.solve(name, v)
        if x is None:
            return {}
        mixed = self.second(name, {name: x})
        return {a: [-t for t in mixed[a]] for a in self.above(name)}
