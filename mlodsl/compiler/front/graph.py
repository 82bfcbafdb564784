"""Small graph algorithms over the ``depends`` graph, in pure Python (private).

``mlodsl check`` must answer in well under half a second, and importing networkx alone
costs about a quarter of a second, so the checker runs these few iterative algorithms on a
plain adjacency dict ``{node: [successor, ...]}`` (source order kept, so diagnostics are
deterministic). :func:`mlodsl.compiler.front.check.dependency_graph` builds the networkx graph
for later stages, and the tests check these functions against networkx.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

__all__ = ["back_edges", "levels", "reachable", "reachable_all", "reverse"]

Graph = Mapping[Hashable, Sequence[Hashable]]


def back_edges(graph: Graph) -> list[tuple[list, int]]:
    """The edges that close a cycle, found by depth-first search in insertion order.

    Returns ``(cycle, k)`` pairs: ``cycle`` is the node path ``[v, ..., u, v]`` that the
    back edge ``u -> v`` closes, and ``k`` is the index of that edge in ``graph[u]``.
    The graph is acyclic exactly when the list is empty. Iterative: any depth is fine.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in graph}
    found: list[tuple[list, int]] = []
    for root in graph:
        if color[root] != WHITE:
            continue
        path = [root]
        color[root] = GREY
        stack = [(root, 0)]
        while stack:
            node, i = stack[-1]
            succs = graph.get(node, ())
            if i < len(succs):
                stack[-1] = (node, i + 1)
                nxt = succs[i]
                state = color.get(nxt, BLACK)
                if state == GREY:
                    start = path.index(nxt)
                    found.append((path[start:] + [nxt], i))
                elif state == WHITE:
                    color[nxt] = GREY
                    path.append(nxt)
                    stack.append((nxt, 0))
            else:
                color[node] = BLACK
                path.pop()
                stack.pop()
    return found


def levels(graph: Graph) -> dict:
    """Level of each node of an acyclic graph: 0 without successors, else 1 + their max."""
    level: dict = {}
    for root in graph:
        if root in level:
            continue
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in level:
                continue
            succs = [s for s in graph.get(node, ()) if s in graph]
            if expanded:
                level[node] = 1 + max((level.get(s, 0) for s in succs), default=-1)
                continue
            stack.append((node, True))
            stack.extend((s, False) for s in succs if s not in level)
    return level


def reachable(graph: Graph, start) -> set:
    """Every node reachable from ``start`` by one or more edges (``start`` only via a cycle)."""
    seen: set = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(graph.get(node, ()))
    return seen


def reachable_all(graph: Graph) -> dict:
    """``{node: reachable(graph, node)}`` for every node, in about linear time on a DAG.

    On an acyclic graph each node's set is the union of its successors' sets (set unions
    run in C), taken in level order; with a cycle it falls back to one search per node.
    """
    if back_edges(graph):
        return {n: reachable(graph, n) for n in graph}
    level = levels(graph)
    out: dict = {}
    for node in sorted(graph, key=level.__getitem__):
        succs = graph.get(node, ())
        out[node] = set(succs).union(*(out[s] for s in succs if s in out))
    return out


def reverse(graph: Graph) -> dict:
    """The graph with every edge reversed (same node order)."""
    rev: dict = {n: [] for n in graph}
    for node, succs in graph.items():
        for s in succs:
            rev.setdefault(s, []).append(node)
    return rev
