"""Loss graphs: built from the IR as torch.fx graphs, computing what the expression says."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F

import mlodsl
from mlodsl.diagnostics import MLOError

from tests.support.paths import IMPORTS


def _nodes(gm, op):
    return [n for n in gm.graph.nodes if n.op == op]


def test_hpo_graph_structure(hpo_plan):
    gm = hpo_plan.losses["classifier"].graph
    assert [n.target for n in _nodes(gm, "placeholder")] == ["x", "y"]
    assert sorted(n.target for n in _nodes(gm, "call_module")) == ["classifier", "hpo"]
    assert [n.target for n in _nodes(gm, "get_attr")] == ["classifier"]
    targets = {n.target for n in _nodes(gm, "call_function")}
    assert F.cross_entropy in targets and operator.add in targets
    # The graph's submodules are the problems' own modules (functional substitution reaches them).
    assert gm.classifier is hpo_plan.problems["classifier"].module
    assert gm.hpo is hpo_plan.problems["hpo"].module
    assert hpo_plan.losses["classifier"].reads == ["classifier", "hpo"]
    # Every node built from the expression knows its .mlo position.
    call = _nodes(gm, "call_module")[0]
    assert call.meta["mlo_span"].line == 13


def test_hpo_graph_computes_the_python_expression(hpo_plan):
    from examples.hpo.parts import digits, weighted_l2

    x, y = digits("train").tensors
    x, y = x[:32], y[:32]
    net = hpo_plan.problems["classifier"].module
    decay = hpo_plan.problems["hpo"].module
    expected = F.cross_entropy(net(x), y) + weighted_l2(net, decay())
    for name in ("classifier", "hpo"):
        got = hpo_plan.problems[name].training_step((x, y))
        assert torch.allclose(got, expected, atol=0, rtol=1e-6)


SOURCE = """
import torch.nn.functional as F
problem net {
    module = Tiny(4, 2)
    optimizer = SGD(lr=0.1)
    data = batches
    loss(x, y) = (knob.scale * F.mse_loss(net(x), y, reduction="none")).mean() + net.weight.pow(2).sum() * 0.5
}
problem knob depends net {
    module = Knob(2.0)
    optimizer = SGD(lr=0.1)
    data = batches
    loss(x, y) = F.mse_loss(net(x), y)
}
engine { iterations = 1 }
"""


@pytest.fixture(scope="module")
def small_plan():
    from tests.programs.imports.bk_parts import Knob, Tiny, toy_batches
    return mlodsl.compile(SOURCE, namespace={"Tiny": Tiny, "Knob": Knob,
                                             "batches": toy_batches()})


def test_attribute_paths_and_methods(small_plan):
    gm = small_plan.losses["net"].graph
    assert {n.target for n in _nodes(gm, "get_attr")} == {"knob.scale", "net.weight"}
    assert {n.target for n in _nodes(gm, "call_method")} == {"mean", "pow", "sum"}
    x, y = small_plan.problems["net"].train_data_loader[0]
    net, knob = small_plan.problems["net"].module, small_plan.problems["knob"].module
    expected = (knob.scale * F.mse_loss(net(x), y, reduction="none")).mean() \
        + net.weight.pow(2).sum() * 0.5
    assert torch.allclose(small_plan.problems["net"].training_step((x, y)), expected)


def test_failure_inside_graph_points_at_the_node(small_plan):
    bad = (torch.zeros(3, 5), torch.zeros(3, 2))  # 5 features for a 4-input module
    with pytest.raises(MLOError) as info:
        small_plan.problems["net"].training_step(bad)
    d = info.value.diagnostics[0]
    assert info.value.kind == "run"
    assert d.span.line == 7 and "the loss of 'net' failed" in d.message
    assert SOURCE.splitlines()[6][d.span.column - 1:].startswith("net(x)")


def test_batch_shape_mismatch_is_a_diagnostic(small_plan):
    with pytest.raises(MLOError, match="a batch has 3"):
        small_plan.problems["net"].training_step((1, 2, 3))


def test_dict_batches_by_name():
    from tests.programs.imports.bk_parts import Tiny, dict_batches
    src = ("import torch.nn.functional as F\n"
           "problem p { module = Tiny(); optimizer = SGD(lr=0.1); data = d\n"
           "  loss(image, label) = F.mse_loss(p(image), label) }\n"
           "engine { iterations = 2 }\n")
    plan = mlodsl.compile(src, namespace={"Tiny": Tiny, "d": dict_batches()})
    history = plan.run(console=False)
    assert plan.engine.global_step == 2 and isinstance(history, list)


def test_callable_loss_reads_found_by_tracing():
    from tests.programs.imports.bk_parts import Knob, Tiny, inner_loss, toy_batches
    src = ("problem inner { module = Tiny(); optimizer = SGD(lr=0.1); data = b; loss = f }\n"
           "problem outer depends inner { module = Knob(); optimizer = SGD(lr=0.1); data = b\n"
           "  loss = f }\n"
           "engine { iterations = 1 }\n")
    plan = mlodsl.compile(src, namespace={"Tiny": Tiny, "Knob": Knob, "f": inner_loss,
                                          "b": toy_batches()})
    assert plan.losses["inner"].kind == "callable"
    assert plan.losses["inner"].reads == ["inner", "outer"]


def test_callable_loss_reading_an_unconnected_problem_is_rejected():
    path = IMPORTS / "unconnected_callable.mlo"
    with pytest.raises(MLOError) as info:
        mlodsl.compile(str(path))
    d = info.value.diagnostics[0]
    assert d.file == str(path) and (d.span.line, d.span.column) == (8, 17)
    assert "reads 'other', which is not connected to 'inner'" in d.message


def test_problems_named_like_graph_module_attributes():
    # `meta`, `graph` and `code` are attributes of torch.fx.GraphModule itself.
    import mlodsl
    source = """
import torch
problem meta {
    module = torch.nn.Linear(1, 1)
    optimizer = SGD(lr=0.1)
    data = [(torch.ones(4, 1), torch.zeros(4, 1))]
    loss(x, y) = ((meta(x) - y) ** 2).mean() + code.weight.sum() * 0
}
problem code depends meta {
    module = torch.nn.Linear(1, 1)
    optimizer = SGD(lr=0.1)
    data = [(torch.ones(4, 1), torch.zeros(4, 1))]
    loss(x, y) = ((meta(x) - y) ** 2).mean() + code.weight.sum() * 0
}
engine { iterations = 3 }
"""
    plan = mlodsl.compile(source)
    before = plan.problems["meta"].module.weight.detach().clone()
    plan.run()
    assert not torch.equal(before, plan.problems["meta"].module.weight.detach())
    assert plan.problems["code"].count == 3
