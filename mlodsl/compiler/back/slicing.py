"""Gradient slices of loss graphs: drop the terms that cannot reach the parameters asked for.

Several hypergradient methods evaluate a lower's loss only to differentiate it with respect to
its *uppers'* parameters: ``darts`` and ``sama`` take ``grad_lambda g(w +- eps v, lambda)``. In
the seed's program the lower's loss is

    g(w, lambda) = cross_entropy(net(x; w), y) + sum(lambda * w^2) / 2

and the first term, the whole network's forward pass, contributes nothing to that gradient. A
Python ``training_step`` is opaque, so a library that only sees Python (Betty) must run the
forward pass anyway; a compiled loss is an fx graph, so the compiler can see which terms read
which problems and leave the others out.

:func:`gradient_slice` returns a graph whose output has the same gradient with respect to the
parameters of the problems in ``wrt`` as the loss graph's output, though not the same value:

    slice(a + b) = slice(a) + slice(b)      slice(a - b) = slice(a) - slice(b)
    slice(-a)    = -slice(a)                slice(c * a) = c * slice(a),  slice(a / c) = slice(a) / c
    slice(t)     = 0  (dropped)             when t reads none of ``wrt``
    slice(t)     = t  (kept whole)          otherwise

where ``c`` reads none of ``wrt`` (its value is still computed). The rules are applied only
along the *additive spine* that starts at the output: a loss is a one-element tensor, so every
operand on the spine has at most one element and broadcasting cannot change what a dropped
term would have contributed. Below the spine (inside a function call, a module, a reduction)
nothing is rewritten. Example::

    loss(x, y) = F.cross_entropy(classifier(x), y) + weighted_l2(classifier, hpo())
    slice for {hpo}:  weighted_l2(classifier, hpo())       # no forward pass of the network

Whether a term reads a problem is read off the graph: a ``get_attr``/``call_module`` node
whose target starts at the problem's module, and everything computed from one. A module that
reaches another problem's parameters *without* the graph passing them (a closure over another
module) would escape this; the runtime therefore checks each slice once against the full loss
(:class:`mlodsl.compiler.back.plan.GraphLoss`) and falls back to the full loss if they disagree.
"""
from __future__ import annotations

import operator
from typing import Iterable

import torch.fx as fx

from mlodsl.compiler.back.loss_graph import module_slot

__all__ = ["gradient_slice", "dependent_nodes"]

_ADD, _SUB, _MUL, _DIV = operator.add, operator.sub, operator.mul, operator.truediv
_NEG, _POS = operator.neg, operator.pos


def dependent_nodes(graph: fx.Graph, wrt: Iterable[str]) -> set[fx.Node]:
    """The nodes of ``graph`` whose value depends on a parameter of a problem in ``wrt``."""
    slots = {module_slot(p) for p in wrt}
    dep: set[fx.Node] = set()
    for node in graph.nodes:  # fx keeps nodes in topological order
        reads = node.op in ("get_attr", "call_module") and \
            str(node.target).split(".")[0] in slots
        if reads or any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    return dep


def gradient_slice(gm: fx.GraphModule, wrt: Iterable[str]) -> fx.GraphModule | None:
    """A graph with the same gradient in ``wrt``'s parameters as ``gm`` and fewer terms.

    Returns None when there is nothing to gain: the output is not a single node, it reads none
    of ``wrt`` (its gradient there is zero: the caller keeps the full loss, which says so), or
    no term could be dropped.
    """
    wrt = list(wrt)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node):
        return None
    dep = dependent_nodes(graph, wrt)
    if result not in dep:
        return None

    new = fx.Graph()
    values: dict[fx.Node, fx.Node] = {}
    dropped = [0]
    for node in graph.nodes:  # the slice takes the same arguments, even those it leaves unused
        if node.op == "placeholder":
            values[node] = new.node_copy(node)

    def value(node: fx.Node) -> fx.Node:
        """The node copied whole (with everything it needs)."""
        if node not in values:
            values[node] = new.node_copy(node, value)
        return values[node]

    def arg(a):
        return value(a) if isinstance(a, fx.Node) else a

    def emit(target, args, like: fx.Node) -> fx.Node:
        n = new.call_function(target, tuple(args))
        n.meta.update(like.meta)
        return n

    def depends(a) -> bool:
        return isinstance(a, fx.Node) and a in dep

    def spine(node: fx.Node) -> fx.Node:
        """A node with ``node``'s gradient in ``wrt`` (``node`` depends on ``wrt``)."""
        if node.op != "call_function" or node.kwargs:
            return value(node)
        target, args = node.target, node.args
        if target in (_ADD, _SUB) and len(args) == 2:
            a, b = args
            da, db = depends(a), depends(b)
            if da and db:
                return emit(target, (spine(a), spine(b)), node)
            dropped[0] += 1
            if da:
                return spine(a)
            return spine(b) if target is _ADD else emit(_NEG, (spine(b),), node)
        if target in (_NEG, _POS) and len(args) == 1:
            return emit(target, (spine(args[0]),), node)
        if target in (_MUL, _DIV) and len(args) == 2:
            a, b = args
            da, db = depends(a), depends(b)
            if da and not db:
                return emit(target, (spine(a), arg(b)), node)
            if db and not da and target is _MUL:
                return emit(target, (arg(a), spine(b)), node)
        return value(node)

    out = spine(result)
    if not dropped[0]:
        return None
    new.output(out)
    sliced = fx.GraphModule(gm, new, class_name="LossSlice")
    # GraphModule(root, graph) copies the submodules the graph names; point them back at the
    # live modules, so the runtime's functional parameter substitution reaches the slice too.
    for name, child in gm.named_children():
        setattr(sliced, name, child)
    return sliced
