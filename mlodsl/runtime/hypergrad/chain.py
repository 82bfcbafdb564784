"""The total gradient of a problem's loss, chained through every path of the DAG below it.

A problem ``P`` with lowers has objective ``f_P(theta_P, theta_K for K below P)`` where each
lower's parameters are (approximately) its best response to the problems above it. In reverse
mode, the cotangent ``c[K] = df/dtheta_K`` of each problem ``K`` below ``P`` is pushed, by the
method of the edge into ``K``, onto the problems whose parameters ``K``'s best response depends
on (its ancestors inside ``P``'s sub-DAG). Processing the lowest levels first makes every
``c[K]`` complete before it is pushed, so the result is the sum over all paths from ``P`` down.

For ``P`` two levels above ``L`` through ``M`` this gives
``df/dP = d_P f + J_M^T (d_M f + J_{L<-M}^T d_L f) + J_{L<-P}^T d_L f``, where
``J_{L<-M} = dtheta_L*/dtheta_M`` is what the method of the edge into ``L`` approximates.

Unrolled problems (live "fast" weights, see ``unroll``) are explicit functions of the problems
above them on the autograd tape, so ``autograd.grad`` already returns *total* derivatives
through them: a member with fast weights is never pushed by a method, and what a method would
add to a fast member (other than ``problem`` itself) is dropped, because the same paths reach
the leaves through the tape. Every path is then counted exactly once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mlodsl.runtime import distributed
from mlodsl.runtime.hypergrad.multilevel import exact_push, is_exact
from mlodsl.runtime.hypergrad.registry import HypergradRequest, get_method

__all__ = ["total_gradient"]


def total_gradient(engine, problem, loss: torch.Tensor, create_graph: bool = False
                   ) -> list[torch.Tensor]:
    """``d loss / d theta_problem``, hypergradients through all lowers included."""
    below = engine.descendants_bottom_up(problem.name)
    own = problem.current_parameters()
    if not below:
        grads = _grad(loss, own, create_graph)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, own)]

    members = [engine.problems[n] for n in below]
    inputs = list(own)
    for member in members:
        inputs.extend(member.current_parameters())
    # Methods below may differentiate through fast weights' tapes again: keep them.
    unrolled = {m.name for m in members if m.unrolled_window.is_open}
    raw = _grad(loss, inputs, create_graph, retain=bool(unrolled))

    cotangent: dict[str, list[torch.Tensor | None]] = {}
    offset = len(own)
    cotangent[problem.name] = list(raw[:offset])
    for member in members:
        n = len(member.current_parameters())
        cotangent[member.name] = list(raw[offset:offset + n])
        offset += n

    scope = set(below) | {problem.name}
    detached_loss = loss.detach()
    for name in below:  # lowest level first
        v = cotangent[name]
        if name in unrolled or all(g is None for g in v):
            continue  # an unrolled lower's paths are on the tape (module docstring)
        lower = engine.problems[name]
        targets = [engine.problems[t] for t in engine.ancestors_in(name, scope)]
        method, args = engine.method_for(problem.name, name)
        v = [torch.zeros_like(p) if g is None else g.detach()
             for g, p in zip(v, lower.current_parameters())]
        if getattr(engine, "distributed", False):
            # Data parallel: push the cotangent of the combined upper batch on every rank, so
            # that for methods linear in v (darts, sama) the ranks' averaged contributions are
            # the combined-batch hypergradient, not an average of per-rank ones.
            v = [t.clone() for t in v]
            distributed.average_tensors(v)
        if is_exact(engine, name, args):  # the middle's total objective (multilevel.py)
            contributions = exact_push(engine, problem, lower, targets, v)
        else:
            request = HypergradRequest(
                engine=engine, lower=lower, targets=targets, v=v,
                upper=problem, upper_loss=detached_loss,
                state=engine.method_state(problem.name, name))
            # 'multilevel' is the chain's setting, not the method's (frozen: its own loss)
            contributions = get_method(method)(
                request, **{k: a for k, a in args.items() if k != "multilevel"})
        _distribute(cotangent, targets, contributions, skip=unrolled - {problem.name})

    return [torch.zeros_like(p) if g is None else g
            for g, p in zip(cotangent[problem.name], own)]


def _grad(loss, inputs, create_graph, retain=False):
    # An upper that reaches its lowers only through sampling (reinforce) may have a loss
    # with no graph at all: every direct gradient is then zero.
    if not loss.requires_grad:
        return [None] * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True, create_graph=create_graph,
                               retain_graph=True if retain or create_graph else None)


def _distribute(cotangent, targets, contributions: Sequence[torch.Tensor | None],
                skip=frozenset()) -> None:
    i = 0
    for target in targets:
        slot = cotangent[target.name]
        for j in range(len(slot)):
            c = contributions[i]
            i += 1
            if c is None or target.name in skip:
                continue
            slot[j] = c if slot[j] is None else slot[j] + c
