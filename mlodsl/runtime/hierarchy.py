"""The hierarchy of a multilevel program: which problem depends on which, through which method.

:func:`build_graph` checks Betty's ``dependencies`` (``l2u`` edges define the DAG, ``u2l`` edges
must be matched by a path back) and :func:`edges_from_configs` reads each edge's method,
unroll length and warm-up from the problems' ``Config`` objects when the compiler has not given
:class:`~mlodsl.runtime.edges.Edge` objects. :class:`Hierarchy` answers the questions the
stepping and the hypergradient methods ask about the result (problems below one, the method of
an edge, whether a problem's steps are unrolled) and caches the answers.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import networkx as nx

from mlodsl.diagnostics import MLOError
from mlodsl.methods import METHODS
from mlodsl.runtime.config import ConfigConflictWarning, edge_settings
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.problem import Problem
from mlodsl.runtime.schedule import Schedule

__all__ = ["Hierarchy", "build_graph", "edges_from_configs"]


def _name_of(problems: Mapping[str, Any], item: Any, where: str) -> str:
    name = item.name if isinstance(item, Problem) else item
    if not isinstance(name, str) or name not in problems:
        raise MLOError(f"dependencies[{where!r}] names {name!r}, which is not in "
                       f"problems ({', '.join(problems)})")
    return name


def build_graph(problems: Mapping[str, Any], dependencies: Mapping[str, Mapping],
                edges: Iterable[Edge] | None) -> nx.DiGraph:
    """The dependency DAG (an edge ``upper -> lower``: "upper depends on lower"), checked.

    ``dependencies`` is Betty's ``{"l2u": {lower: [uppers]}, "u2l": {upper: [lowers]}}``
    (problems or names); ``edges``, when given, add their ``upper -> lower`` pairs.
    """
    unknown = set(dependencies) - {"u2l", "l2u"}
    if unknown:
        raise MLOError(f"dependencies has unknown keys {sorted(unknown)}; use 'u2l' and 'l2u'")
    graph = nx.DiGraph()
    graph.add_nodes_from(problems)
    for e in edges or ():
        for end in (e.upper, e.lower):
            _name_of(problems, end, "edges")
        graph.add_edge(e.upper, e.lower)
    for lower, uppers in dependencies.get("l2u", {}).items():
        lo = _name_of(problems, lower, "l2u")
        for upper in uppers:
            up = _name_of(problems, upper, "l2u")
            if up == lo:
                raise MLOError(f"problem '{lo}' depends on itself (l2u edge to itself)")
            graph.add_edge(up, lo)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, _ in cycle] + [cycle[0][0]]
        raise MLOError("dependency cycle: " + " depends on ".join(names),
                       hint="the l2u edges must form a DAG (uppers above lowers)")
    for upper, lowers in dependencies.get("u2l", {}).items():
        up = _name_of(problems, upper, "u2l")
        for lower in lowers:
            lo = _name_of(problems, lower, "u2l")
            if up == lo:
                raise MLOError(f"problem '{up}' has a u2l edge to itself")
            if not nx.has_path(graph, up, lo):
                raise MLOError(
                    f"u2l edge {up} -> {lo} has no l2u path back: '{lo}' is not below "
                    f"'{up}', so '{up}' cannot be differentiated through it",
                    hint=f"add l2u {{{lo}: [{up}]}} or remove the u2l edge")
    return graph


def edges_from_configs(problems: Mapping[str, Any], graph: nx.DiGraph) -> list[Edge]:
    """Method, unroll length and warm-up per edge, from the problems' ``Config`` objects.

    The rule is :func:`mlodsl.runtime.config.edge_settings`: the lower's explicitly set fields
    first (Betty's reading), then the upper's (the seed's), then the defaults; a disagreement
    is a :class:`~mlodsl.runtime.config.ConfigConflictWarning`. A lower that is an
    ``IterativeProblem`` is unrolled unless a config names another method. With Betty's
    gradient accumulation an unroll of ``unroll_steps`` updates is ``unroll_steps * k`` steps.
    """
    edges = []
    for upper, lower in graph.edges:
        settings = edge_settings(problems[upper].config, problems[lower].config,
                                 lower_iterative=problems[lower].iterative,
                                 upper_has_uppers=graph.in_degree(upper) > 0)
        for message in settings.conflict_messages(upper, lower):
            warnings.warn(message, ConfigConflictWarning, stacklevel=4)
        unrolled = settings.method == "unroll" or problems[lower].iterative
        every = settings.every * problems[lower].steps_per_update(unrolled)
        edges.append(Edge(upper, lower, every=every, warmup=settings.warmup,
                          method=settings.method, args=settings.args))
    return edges


class Hierarchy:
    """The checked DAG, its edges and the schedule's levels, with cached queries.

    Args:
        problems: the problems by name, in declaration order (the order breaks ties).
        graph: the DAG from :func:`build_graph`.
        edges: one :class:`Edge` per DAG edge.
        schedule: the program's schedule (for the problems' levels).
    """

    def __init__(self, problems: Mapping[str, Any], graph: nx.DiGraph, edges: Iterable[Edge],
                 schedule: Schedule):
        self.order = list(problems)
        self.graph = graph
        self.edges: dict[tuple[str, str], Edge] = {(e.upper, e.lower): e for e in edges}
        self.schedule = schedule
        self.iterative = {n for n, p in problems.items() if p.iterative}
        self.unrolled = {e.lower for e in self.edges.values() if e.method == "unroll"} | {
            n for n in self.iterative if schedule.uppers(n)}
        self._below: dict[str, list[str]] = {}
        self._ancestors: dict[tuple[str, frozenset], list[str]] = {}

    def descendants_bottom_up(self, name: str) -> list[str]:
        """Problems below ``name`` in the DAG, lowest level first (ties in problem order)."""
        if name not in self._below:
            levels = self.schedule.levels()
            below = nx.descendants(self.graph, name)
            self._below[name] = sorted(below, key=lambda n: (levels[n], self.order.index(n)))
        return self._below[name]

    def ancestors_in(self, name: str, scope: set[str]) -> list[str]:
        """Problems above ``name`` (that depend on it, transitively) within ``scope``."""
        key = (name, frozenset(scope))
        cached = self._ancestors.get(key)
        if cached is None:
            cached = self._ancestors[key] = sorted(nx.ancestors(self.graph, name) & scope,
                                                   key=self.order.index)
        return list(cached)

    def edge_for(self, upper: str, lower: str) -> Edge:
        """The edge whose method pushes cotangents through ``lower`` for ``upper``.

        The edge ``upper -> lower`` when there is one; otherwise the first edge into
        ``lower`` from a problem inside ``upper``'s sub-DAG.
        """
        edge = self.edges.get((upper, lower))
        if edge is None:
            scope = set(nx.descendants(self.graph, upper)) | {upper}
            edge = next(self.edges[(u, lower)] for u in self.order
                        if u in scope and (u, lower) in self.edges)
        return edge

    def is_unrolled(self, name: str) -> bool:
        """Whether ``name``'s steps are taken differentiably for an upper to unroll through."""
        return name in self.unrolled

    def unroll_settings(self, name: str) -> tuple[bool, bool]:
        """``(first_order, checkpoint)`` for the differentiable steps of problem ``name``.

        Read from the ``unroll`` edges into it (second order wins if two edges disagree, and
        checkpointing is used if any edge asks for it); an ``IterativeProblem`` whose edges
        chose another method takes the defaults.
        """
        specs = [e for e in self.edges.values() if e.lower == name and e.method == "unroll"]
        if not specs:
            defaults = METHODS["unroll"].bind({})
            return defaults["first_order"], defaults["checkpoint"]
        return (all(e.args.get("first_order", False) for e in specs),
                any(e.args.get("checkpoint", False) for e in specs))

    def window_length(self, name: str) -> int:
        """Differentiable steps in a window of ``name``: the longest ``every`` into it."""
        return max([e.every for e in self.edges.values() if e.lower == name] or [1])

    def methods_feeding(self, name: str) -> str:
        """The hypergradient methods that feed problem ``name``'s gradient, for messages."""
        scope = set(self.descendants_bottom_up(name)) | {name}
        used = [f"{e.upper}->{e.lower} via {e.method}" for e in self.edges.values()
                if e.upper in scope or e.lower == name]
        return "hypergradients: " + ", ".join(used) if used else "plain gradient, no lowers"
