"""The checker's public helpers (levels, the depends graph, loss reads) and checks that the
golden corpus does not pin down by itself."""
from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from mlodsl.compiler.front import graph as g
from mlodsl.compiler.front.check import check, dependency_graph, errors, levels, loss_reads
from mlodsl.settings import ENGINE_FIELDS, PROBLEM_FIELDS, required_fields
from mlodsl.compiler.front.parse import parse

from tests.support.corpus import ROOT

HPO = (ROOT / "tests/programs/good/hpo.mlo").read_text()


def program(*problems: str, engine: str = "iterations = 10") -> str:
    """A program from problem headers and loss bodies: ``"b depends a | a(x) + b()"``."""
    out = ["from lib import M, d"]
    for spec in problems:
        header, loss = (s.strip() for s in spec.split("|"))
        name = header.split()[0]
        out.append(f"problem {header} {{\n module = M()\n optimizer = SGD(lr=1)\n"
                   f" data = d()\n loss(x, y) = {loss}\n}}")
        del name
    out.append(f"engine {{ {engine} }}")
    return "\n".join(out) + "\n"


def messages(src: str, severity: str | None = None) -> list[str]:
    return [d.message for d in check(parse(src))
            if severity is None or d.severity == severity]


def test_levels_and_graph_of_the_spec_program():
    prog = parse(HPO)
    assert levels(prog) == {"classifier": 0, "hpo": 1}
    graph = dependency_graph(prog)
    assert isinstance(graph, nx.DiGraph)
    assert list(graph.edges) == [("hpo", "classifier")]
    data = graph.edges["hpo", "classifier"]
    assert data["every"] == 1 and data["method"].func.name == "darts"
    assert loss_reads(prog.problem("classifier"), prog) == {"classifier", "hpo"}
    assert loss_reads(prog.problem("hpo")) >= {"F", "classifier", "hpo", "weighted_l2"}


def test_levels_of_a_diamond_and_every():
    src = program("a | a(x) + b() + c()", "b depends a every 4 | a(x) + b() + d()",
                  "c depends a | a(x) + c() + d()", "d depends b, c | b(x) + c(x) + d()")
    prog = parse(src)
    assert levels(prog) == {"a": 0, "b": 1, "c": 1, "d": 2}
    assert dependency_graph(prog).edges["b", "a"]["every"] == 4
    assert check(prog) == []


def test_levels_empty_with_a_cycle():
    prog = parse(program("a depends b | a(x) + b(x)", "b depends a | a(x) + b(x)"))
    assert levels(prog) == {}
    assert any(m.startswith("depends cycle: a -> b -> a") for m in messages(
        program("a depends b | a(x) + b(x)", "b depends a | a(x) + b(x)")))


def test_callable_loss_skips_reads_checks():
    src = program("a | a(x)", "b depends a | a(x) + b()").replace(
        "loss(x, y) = a(x)\n", "loss = f\n").replace("from lib import M, d", "from lib import M, d, f")
    prog = parse(src)
    assert loss_reads(prog.problem("a"), prog) == set()
    assert check(prog) == []


def test_warnings_are_not_errors():
    src = program("a | a(x)", "b depends a | b(x)")
    diags = check(parse(src))
    assert errors(diags) == []
    assert sorted(d.message for d in diags) == [
        "hypergradient through 'a' is zero: neither the loss of 'a' nor any level below it "
        "reads 'b'",
        "hypergradient through 'a' is zero: the loss of 'b' reads nothing at or below 'a'",
    ]


def test_zero_only_under_the_frozen_chain_points_to_the_exact_mode():
    """The middle never reads the top, but the level below it does: the default (frozen)
    chain's hypergradient through the middle is zero, the exact mode's is not."""
    levels = ("low | low(x) + mid() + top()", "mid depends low | low(x)",
              "top depends mid%s | low(x) + mid()")
    diags = check(parse(program(*(lv.replace("%s", "") for lv in levels))))
    (w,) = [d for d in diags if d.severity == "warning"]
    assert w.message == ("hypergradient through 'mid' is zero under the default (frozen) "
                         "chain: the loss of 'mid' never reads 'top', and 'mid''s Jacobian "
                         "holds the levels below it fixed, though 'low' reads 'top'")
    assert 'multilevel="exact"' in w.hint
    exact = program(*(lv.replace("%s", ' via cg(multilevel="exact")') for lv in levels))
    assert [d for d in check(parse(exact)) if d.severity == "warning"] == []


def test_reading_a_descendant_counts_as_at_or_below():
    src = program("a | a(x) + b()", "b depends a | b(x) + a(x) + c()", "c depends b | a(x) + c()")
    assert messages(src, "warning") == []


def test_all_errors_reported_sorted():
    src = program("a | zz(x)", "b depends q | a(x)").replace("iterations = 10", "iterations = 0")
    diags = check(parse(src))
    lines = [(d.span.line, d.span.column) for d in diags]
    assert lines == sorted(lines) and len(errors(diags)) >= 3


def test_names_scoping():
    src = program("a | a(x)").replace("data = d()", "data = d(y)")
    assert "unknown name 'y'" in messages(src)
    src = program("a | a(x)").replace("engine { iterations = 10 }",
                                      "engine { iterations = 10; validate = a.acc(d()) }")
    assert messages(src) == []
    # import a.b binds a; import a.b as c binds c only
    src = program("a | torch.sum(a(x)) + nn.f(x)").replace(
        "from lib import M, d", "from lib import M, d\nimport torch.linalg\nimport torch.nn as nn")
    assert messages(src) == []
    src = program("a | torch.nn.f(x)").replace("from lib import M, d",
                                               "from lib import M, d\nimport torch.nn as nn")
    assert messages(src) == ["unknown name 'torch'"]


def test_builtins_in_scope():
    src = program("a | max(a(x)) + len(y) + abs(sum(range(3)))").replace(
        "optimizer = SGD(lr=1)", "optimizer = NAdam(lr=1)\n scheduler = OneCycleLR(max_lr=1)\n"
        " after_step = clamp_min(0)")
    assert messages(src) == []


def test_let_literal_through_chain_is_checked():
    src = ("let n = 0\nlet m = n\n" + program("a | a(x)")).replace(
        "iterations = 10", "iterations = m")
    assert messages(src) == ["'iterations' of the engine must be a positive integer, got 0"]


def test_non_literal_values_are_accepted():
    src = program("a depends b via neumann(iterations=k) | a(x) + b()", "b | b(x) + a()")
    src = src.replace("from lib import M, d", "from lib import M, d, k")
    assert messages(src) == []


def test_hypergrad_without_depends_warns():
    src = program("a | a(x)").replace("data = d()", "data = d()\n hypergrad = cg()")
    assert messages(src, "warning") == [
        "'hypergrad' of 'a' has no effect: 'a' depends on nothing"]


def test_field_tables():
    assert required_fields(PROBLEM_FIELDS) == ["module", "optimizer", "data", "loss"]
    assert required_fields(ENGINE_FIELDS) == ["iterations"]
    assert {"checkpoint_keep", "on_nan"} <= set(ENGINE_FIELDS)
    assert set(PROBLEM_FIELDS) == {"module", "optimizer", "data", "batch_size", "loss",
                                   "hypergrad", "after_step", "scheduler", "grad_clip",
                                   "grad_accum", "level", "log_every"}


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 8))
    nodes = [f"p{i}" for i in range(n)]
    edges = draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)),
                          max_size=14, unique=True))
    adj = {v: [] for v in nodes}
    for u, v in edges:
        if u != v:
            adj[u].append(v)
    return adj


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_graph_helpers_agree_with_networkx(adj):
    G = nx.DiGraph()
    G.add_nodes_from(adj)
    G.add_edges_from((u, v) for u, lows in adj.items() for v in lows)
    found = g.back_edges(adj)
    assert (not found) == nx.is_directed_acyclic_graph(G)
    for cycle, _ in found:
        assert cycle[0] == cycle[-1]
        assert all(G.has_edge(a, b) for a, b in zip(cycle, cycle[1:]))
    every = g.reachable_all(adj)
    for v in adj:
        assert g.reachable(adj, v) - {v} == nx.descendants(G, v)
        assert every[v] == g.reachable(adj, v)
    if not found:
        lv = g.levels(adj)
        for v in adj:
            succ = list(G.successors(v))
            assert lv[v] == (0 if not succ else 1 + max(lv[s] for s in succ))


def test_long_chain_is_fine():
    n = 600
    parts = [f"p{i} depends p{i - 1} | p{i - 1}(x) + p{i}() + p{min(i + 1, n - 1)}()"
             for i in range(1, n)]
    src = program("p0 | p0(x) + p1()", *parts)
    prog = parse(src)
    assert levels(prog)[f"p{n - 1}"] == n - 1
    assert errors(check(prog)) == []
