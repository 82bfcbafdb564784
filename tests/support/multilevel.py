"""Multilevel programs with closed-form hypergradients, run through mlodsl's Python API.

A :class:`Program` is a DAG of levels; each level ``K`` has one float64 parameter vector and a
loss ``g_K(values)`` written in torch over a dict ``{name: vector}`` of the levels it reads.
From it this module derives, independently of mlodsl's chain:

* :func:`nested_solution`: the fully solved nested problem: every level below the top at its
  best response to the levels above it, *with the levels below it responding* (each level
  minimises its total objective). Newton's method, differentiable, so
* :func:`exact_hypergradient`: ``dF/dtheta_top`` by autograd through the nested solution,
  ``F = g_top(values at the nested solution)``; :func:`finite_difference` confirms it by
  central differences of the same fully solved problem;
* :func:`frozen_hypergradient`: the default chain's formula, each level's Jacobian from its own
  loss with the levels below frozen (``J_K = -H_K^{-1} d^2 g_K / d theta_K d theta_T``), summed
  over every path; equal to the exact one when each middle's loss is linear in what is below.

Sibling levels that share a level below (Nash coupling) are not modelled: every level's
sub-DAG is solved as the tree the shapes in the tests are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime.config import edge_settings
from mlodsl.runtime.edges import Edge

DT = torch.float64
Values = Mapping[str, torch.Tensor]


@dataclass
class Level:
    """One level: its name, dimension, the levels it depends on, and its loss."""

    name: str
    dim: int
    loss: Callable[[Values], torch.Tensor]
    lowers: Sequence[str] = ()
    quadratic: bool = True  # whether one Newton step solves it exactly


@dataclass
class Program:
    """Levels in declaration order (a DAG through ``Level.lowers``) and their start values."""

    levels: list[Level]
    start: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        self.by_name = {lv.name: lv for lv in self.levels}

    def below(self, name: str) -> list[str]:
        """Levels strictly below ``name``, highest first."""
        out: list[str] = []
        stack = list(self.by_name[name].lowers)
        while stack:
            n = stack.pop(0)
            if n not in out:
                out.append(n)
                stack.extend(self.by_name[n].lowers)
        depth = self.depths()
        return sorted(out, key=lambda n: -depth[n])

    def depths(self) -> dict[str, int]:
        """Level numbers: 0 for leaves, 1 + the highest lower otherwise."""
        memo: dict[str, int] = {}

        def d(n):
            if n not in memo:
                memo[n] = 1 + max((d(m) for m in self.by_name[n].lowers), default=-1)
            return memo[n]

        return {lv.name: d(lv.name) for lv in self.levels}


# -- closed forms ----------------------------------------------------------------------------

def _newton_step(objective, x: torch.Tensor) -> torch.Tensor:
    xi = x if x.requires_grad else x.detach().requires_grad_(True)
    g = torch.autograd.grad(objective(xi), xi, create_graph=True)[0]
    rows = [torch.autograd.grad(g[i], xi, create_graph=True, retain_graph=True)[0]
            for i in range(len(g))]
    return xi - torch.linalg.solve(torch.stack(rows), g)


def _newton(objective, x0: torch.Tensor, steps: int, converge: int = 0) -> torch.Tensor:
    """Newton's method on ``objective`` from ``x0``: up to ``converge`` steps on values only
    (until the step is at rounding level), then ``steps`` differentiable ones.

    From a converged point one differentiable step has the fixed point's exact first
    derivative, two its second, three its third (the Newton map's own derivative vanishes
    there), whatever the steps before it.
    """
    x = x0.detach()
    for _ in range(converge):
        new = _newton_step(objective, x).detach()
        done = float(torch.linalg.vector_norm(new - x)) <= 1e-14 * (
            1 + float(torch.linalg.vector_norm(x)))
        x = new
        if done:
            break
    for _ in range(steps):
        x = _newton_step(objective, x)
    return x


def solve_below(program: Program, name: str, values: dict[str, torch.Tensor],
                steps: int = 1) -> dict[str, torch.Tensor]:
    """``values`` with every level below ``name`` at its (total) best response, differentiably.

    The direct lowers are solved highest first; solving one solves everything below it, and a
    level reached again later is re-solved against the values found so far (idempotent).
    """
    out = dict(values)
    depth = program.depths()
    for low in sorted(program.by_name[name].lowers, key=lambda n: -depth[n]):
        out.update(best_response(program, low, out, steps))
    return out


def best_response(program: Program, name: str, values: dict[str, torch.Tensor],
                  steps: int = 1) -> dict[str, torch.Tensor]:
    """Level ``name`` and everything below it at their best response to ``values`` (others)."""
    level = program.by_name[name]
    quadratic = level.quadratic and all(program.by_name[b].quadratic
                                        for b in program.below(name))

    def total(x):
        inner = solve_below(program, name, {**values, name: x}, steps)
        return level.loss(inner)

    # one Newton step solves a quadratic level; else converge, then three differentiable
    # steps (exact derivatives up to the third, for the levels above)
    x = (_newton(total, values[name], steps) if quadratic else
         _newton(total, values[name], 3, converge=40))
    return solve_below(program, name, {**values, name: x}, steps)


def nested_solution(program: Program, top: str, b: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """Every level below ``top`` at its best response to ``top = b`` (and the others' starts)."""
    values = dict(program.start)
    if b is not None:
        values[top] = b
    return solve_below(program, top, values)


def objective(program: Program, top: str, b: torch.Tensor) -> torch.Tensor:
    """``F(b)``: the top's loss at the fully solved nested problem."""
    return program.by_name[top].loss(nested_solution(program, top, b))


def exact_hypergradient(program: Program, top: str) -> torch.Tensor:
    """``dF/db`` by autograd through the nested solution (the closed form)."""
    b = program.start[top].detach().clone().requires_grad_(True)
    return torch.autograd.grad(objective(program, top, b), b)[0].detach()


def finite_difference(program: Program, top: str, eps: float = 1e-5) -> torch.Tensor:
    """Central differences of ``F`` (confirms :func:`exact_hypergradient`)."""
    b0 = program.start[top].detach()
    out = torch.zeros_like(b0)
    for i in range(len(b0)):
        e = torch.zeros_like(b0)
        e[i] = eps
        out[i] = (objective(program, top, b0 + e).detach()
                  - objective(program, top, b0 - e).detach()) / (2 * eps)
    return out


def _hessian_blocks(loss, values: dict[str, torch.Tensor], rows: str, cols: Sequence[str]):
    """``d^2 loss / d rows d col`` for each col, as dense matrices."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in values.items()}
    out = {c: torch.zeros(len(values[rows]), len(values[c]), dtype=DT) for c in cols}
    value = loss(leaves)
    g = torch.autograd.grad(value, leaves[rows], create_graph=True, allow_unused=True)[0]
    if g is None or not g.requires_grad:  # the loss does not read rows, or only linearly
        return out
    for i in range(len(g)):
        grads = torch.autograd.grad(g[i], [leaves[c] for c in cols], retain_graph=True,
                                    allow_unused=True)
        for c, gi in zip(cols, grads):
            if gi is not None:
                out[c][i] = gi
    return out


def frozen_hypergradient(program: Program, top: str, values: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
    """The default chain's hypergradient at ``values`` (default: the nested solution).

    Cotangents ``c[K] = d g_top / d theta_K`` are pushed from the lowest level up, each onto
    the levels above it (inside the top's sub-DAG) by ``J_K = -H_K^{-1} (d^2 g_K/d K d T)``,
    with ``H_K`` the Hessian of ``g_K`` alone: the levels below ``K`` frozen.
    """
    values = dict(values if values is not None else nested_solution(program, top))
    scope = [top, *program.below(top)]
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in values.items()}
    f = program.by_name[top].loss(leaves)
    grads = torch.autograd.grad(f, [leaves[n] for n in scope], allow_unused=True)
    c = {n: (torch.zeros_like(values[n]) if g is None else g) for n, g in zip(scope, grads)}
    depth = program.depths()
    for k in sorted(scope[1:], key=lambda n: depth[n]):  # lowest first
        above = [n for n in scope if k in program.below(n)]
        blocks = _hessian_blocks(program.by_name[k].loss, values, k, [k, *above])
        # pinv: a loss that does not read its own parameters has a zero Hessian, and the
        # chain's contribution through it is zero
        x = torch.linalg.pinv(blocks[k]) @ c[k]
        for t in above:
            c[t] = c[t] - blocks[t].T @ x
    return c[top]


def linearised_chain(program: Program, top: str, identity: Sequence[str] = (),
                     total: Sequence[str] = (), values: dict[str, torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """The chain with dense matrices: what mlodsl computes, written out independently.

    Each level ``K`` below ``top`` responds to the levels above it (inside the top's sub-DAG)
    by ``J_K = -S_K M_K``: ``M_K`` its second derivative in (itself, them), ``S_K = H_K^{-1}``
    (``cg``, ``neumann`` converged) or the identity (``K`` in ``identity``: ``darts``, ``sama``
    with SGD). For ``K`` in ``total`` (the exact mode) ``H_K`` and ``M_K`` are those of the
    total objective with the levels below ``K`` responding (``P' (d^2 L_K) P``, with
    ``P = [I; R]``, ``R`` their linear responses and ``L_K`` the Lagrangian of
    :func:`_lagrangian`, whose extra terms carry the responses' curvature). Cotangents are then
    summed over every path. With ``total`` every middle level and no ``identity``, this is
    :func:`exact_hypergradient`; with no ``total`` it is :func:`frozen_hypergradient`.
    """
    values = dict(values if values is not None else nested_solution(program, top))
    scope = [top, *program.below(top)]
    depth = program.depths()
    dims = {n: len(values[n]) for n in scope}
    above = {k: [n for n in scope if k in program.below(n)] for k in scope}
    J: dict[str, dict[str, torch.Tensor]] = {}

    def responses(k: str, free: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """``R[L][X] = d theta_L / d theta_X`` for L below k, X in free (top-down)."""
        R: dict[str, dict[str, torch.Tensor]] = {}
        for low in sorted(program.below(k), key=lambda n: -depth[n]):
            R[low] = {}
            for x in free:
                acc = torch.zeros(dims[low], dims[x], dtype=DT)
                for a in above[low]:
                    d_a = (torch.eye(dims[x], dtype=DT) if a == x else
                           R[a][x] if a in R else None)
                    if d_a is not None:
                        acc = acc + J[low][a] @ d_a
                R[low][x] = acc
        return R

    S: dict[str, torch.Tensor] = {}
    for k in sorted(scope[1:], key=lambda n: depth[n]):  # lowest first: J of those below known
        free = [k, *above[k]]
        cols = free + (program.below(k) if k in total else [])
        loss = program.by_name[k].loss
        if k in total:
            loss = _lagrangian(program, k, values, J, S, [n for n in program.below(k)
                                                          if n not in total], depth)
        blocks = {r: _hessian_blocks(loss, values, r, cols) for r in cols}
        if k in total:  # P' (d^2 g_k) P, P = d(cols)/d(free) along the linearised responses
            R = responses(k, free)
            P = {r: {x: (R[r][x] if r not in free else torch.eye(dims[x], dtype=DT) if r == x
                         else torch.zeros(dims[r], dims[x], dtype=DT)) for x in free}
                 for r in cols}
            second = {(x, y): sum(P[r][x].T @ blocks[r][c] @ P[c][y] for r in cols for c in cols)
                      for x in free for y in free}
        else:
            second = {(x, y): blocks[x][y] for x in free for y in free}
        H = second[(k, k)]
        S[k] = torch.eye(dims[k], dtype=DT) if k in identity else torch.linalg.pinv(H)
        J[k] = {a: -S[k] @ second[(k, a)] for a in above[k]}

    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in values.items()}
    grads = torch.autograd.grad(program.by_name[top].loss(leaves), [leaves[n] for n in scope],
                                allow_unused=True)
    c = {n: (torch.zeros(dims[n], dtype=DT) if g is None else g) for n, g in zip(scope, grads)}
    for k in sorted(scope[1:], key=lambda n: depth[n]):
        for a in above[k]:
            c[a] = c[a] + J[k][a].T @ c[k]
    return c[top]


def _lagrangian(program: Program, k: str, values, J, S, frozen_below: list[str], depth):
    """``g_k - sum_L <s_L, d g_L / d theta_L>`` over the (frozen) levels ``L`` below ``k``.

    ``s_L = S_L c_L``, ``c`` the gradient of ``g_k`` pushed down the chain: along the best
    responses the subtracted residuals vanish, and this function's second derivatives along
    the linearised responses are the total objective's, curvature of the responses included.
    """
    below = program.below(k)
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in values.items()}
    grads = torch.autograd.grad(program.by_name[k].loss(leaves), [leaves[n] for n in below],
                                allow_unused=True)
    c = {n: (torch.zeros_like(values[n]) if g is None else g.detach())
         for n, g in zip(below, grads)}
    s = {}
    for low in sorted(below, key=lambda n: depth[n]):  # lowest first
        s[low] = S[low] @ c[low]
        for a, j in J[low].items():
            if a in c:
                c[a] = c[a] + j.T @ c[low]

    def loss(v):
        out = program.by_name[k].loss(v)
        for low in frozen_below:
            (g,) = torch.autograd.grad(program.by_name[low].loss(v), v[low], create_graph=True)
            out = out - g @ s[low]
        return out

    return loss


# -- running the program through mlodsl -----------------------------------------------------

class VecModule(nn.Module):
    """A module whose only parameter is one vector (plus, optionally, one it never uses)."""

    def __init__(self, value: torch.Tensor, unused: bool = False):
        super().__init__()
        self.p = nn.Parameter(value.detach().clone().to(DT))
        if unused:
            self.spare = nn.Parameter(torch.ones(2, dtype=DT))

    def forward(self):
        return self.p


class LevelProblem(ImplicitProblem):
    """A level of a :class:`Program` as an mlodsl problem (reads others as ``self.<name>()``)."""

    def __init__(self, level: Level, reads: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.level = level
        self.reads = list(reads)  # the loss may use any of them (unused ones carry no graph)

    def training_step(self, batch):
        vals = {n: (self.module() if n == self.name else getattr(self, n)()) for n in self.reads}
        return self.level.loss(vals)


class _Recorder(Engine):
    """An engine that records each problem's total gradient before its optimizer step."""

    def before_optimizer_step(self, problem):
        super().before_optimizer_step(problem)
        self.recorded.setdefault(problem.name, []).append(
            problem.module.p.grad.detach().clone())


def build_engine(program: Program, configs: Mapping[str, dict],
                 reads: Mapping[str, Sequence[str]] | None = None,
                 lrs: Mapping[str, float] | None = None,
                 values: Mapping[str, torch.Tensor] | None = None, unused: Sequence[str] = (),
                 optimizers: Mapping[str, Callable] | None = None, iterations: int = 1,
                 own_configs: bool = False) -> Engine:
    """An engine running ``program``; ``reads[name]`` is what a level's loss is given
    (default: every level).

    ``configs[name]`` holds ``Config`` fields (``type``, ``unroll_steps``, method knobs) for the
    edges from ``name`` to its lowers, which become explicit edges, so that a test states each
    edge's method whatever ``Config``'s reading rule. With ``own_configs`` they are instead each
    level's own ``Config`` (the Python API's route: Betty's reading, a lower's fields govern
    the edges into it). Parameters start at ``values`` (default: the nested solution);
    learning rates default to 0 (levels stay at their best responses while the top's
    hypergradient is recorded).
    """
    values = dict(values) if values is not None else nested_solution(
        program, program.levels[0].name)
    lrs = dict(lrs or {})
    problems = {}
    for lv in program.levels:
        mod = VecModule(values[lv.name], unused=lv.name in unused)
        lr = lrs.get(lv.name, 0.0)
        make = (optimizers or {}).get(lv.name) or (
            lambda params, lr=lr: torch.optim.SGD(params, lr=lr))
        problems[lv.name] = LevelProblem(
            lv, (reads or {}).get(lv.name, list(program.by_name)), name=lv.name, module=mod,
            optimizer=make(mod.parameters()), train_data_loader=[0],
            config=Config(**configs.get(lv.name, {})) if own_configs else Config())
    engine_config = EngineConfig(train_iters=iterations, valid_step=0)
    if own_configs:
        l2u: dict = {}
        for lv in program.levels:
            for low in lv.lowers:
                l2u.setdefault(problems[low], []).append(problems[lv.name])
        engine = _Recorder(config=engine_config, problems=list(problems.values()),
                           dependencies={"l2u": l2u})
    else:
        edges = []
        for lv in program.levels:
            # the fields as if the upper's Config alone had set them (nothing on the lower)
            settings = edge_settings(Config(**configs.get(lv.name, {})), Config())
            for low in lv.lowers:
                edges.append(Edge(lv.name, low, every=settings.every, method=settings.method,
                                  args=settings.args))
        engine = _Recorder(config=engine_config, problems=list(problems.values()), edges=edges)
    engine.recorded = {}
    return engine


def run_and_record(engine: Engine, name: str, iterations: int | None = None
                   ) -> list[torch.Tensor]:
    """Run the engine; the total gradients of problem ``name``, one per step it took."""
    if iterations is not None:
        engine.config.train_iters = iterations
    engine.run()
    return engine.recorded.get(name, [])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|``."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# -- ingredients for quadratic programs ----------------------------------------------------

def spd(n: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A random symmetric positive definite matrix with eigenvalues in about [scale, 3 scale]."""
    m = torch.randn(n, n, generator=gen, dtype=DT)
    return scale * (m @ m.T / n + torch.eye(n, dtype=DT))


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal float64 numbers from ``gen``."""
    return torch.randn(*shape, generator=gen, dtype=DT)


def explicit_loop(program: Program, order: Sequence[str], lrs: Mapping[str, float],
                  record: str | None = None, values: Mapping[str, torch.Tensor] | None = None):
    """The hand-written nested loop: SGD steps in ``order``, every one differentiable.

    Each problem's gradient is autograd's, with respect to its current tensor, so it goes
    through every earlier step still on the tape. Returns the gradient of the first step of
    ``record`` (with respect to its starting value, a leaf), or with ``record=None`` the
    values after every step.
    """
    vals = {k: v.detach().clone().requires_grad_(True)
            for k, v in (values if values is not None else program.start).items()}
    for name in order:
        loss = program.by_name[name].loss(vals)
        (g,) = torch.autograd.grad(loss, vals[name], create_graph=True)
        if name == record:
            return g.detach()
        vals[name] = vals[name] - lrs[name] * g
    if record is not None:
        raise ValueError(f"{record!r} never steps in {order}")
    return {k: v.detach() for k, v in vals.items()}
