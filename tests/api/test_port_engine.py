"""Betty-style programs (written here, in Betty's idiom) for the Engine's surface.

Each test is a small program as a Betty user writes it, with ``betty.`` imports changed to
``mlodsl.``, and checks Betty's meaning: ``Engine(problems, config, dependencies)`` in that
order, ``engine.problems`` as the list given, ``device``, ``leaves``, ``train_iters``, the
problem-graph attributes (``parents``, ``children``, ``paths``, ``leaf``), ``add_parent`` /
``add_child``, a custom ``train_step`` calling ``leaf.step(global_step=...)``,
``_global_step``, and ``state_dict`` / ``load_state_dict``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mlodsl import MLOError
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem

X = torch.linspace(-1, 1, 16).reshape(8, 2)
Y = X.sum(dim=1, keepdim=True)


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x), y) + self.upper.module.weight.pow(2).sum()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.lower(x), y)


def linear(n_in=2, n_out=1):
    torch.manual_seed(0)
    return torch.nn.Linear(n_in, n_out)


def make(cls, name, config=None, lr=0.1):
    module = linear()
    return cls(name=name, module=module, optimizer=torch.optim.SGD(module.parameters(), lr=lr),
               train_data_loader=[(X, Y)], config=config or Config())


def bilevel(config=None, **kw):
    lower, upper = make(Lower, "lower"), make(Upper, "upper", config)
    deps = {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}}
    return Engine([upper, lower], config or EngineConfig(train_iters=2), deps, **kw), upper, lower


def test_positional_order_is_bettys_and_the_older_order_still_works():
    engine, upper, lower = bilevel()
    assert engine.config.train_iters == 2 and engine.train_iters == 2
    older = Engine(EngineConfig(train_iters=3), [make(Upper, "upper"), make(Lower, "lower")],
                   {"l2u": {"lower": ["upper"]}})
    assert older.train_iters == 3


def test_engine_problems_is_the_list_given_and_answers_to_names():
    engine, upper, lower = bilevel()
    assert list(engine.problems) == [upper, lower] and engine.problems[1] is lower
    assert isinstance(engine.problems, list) and len(engine.problems) == 2
    assert engine.problems["lower"] is lower and "upper" in engine.problems
    assert upper in engine.problems and engine.upper is upper
    assert [p.name for p in engine.problems] == engine.problems.keys() == ["upper", "lower"]


def test_device_leaves_and_train_iters():
    engine, upper, lower = bilevel()
    assert engine.device == torch.device("cpu")
    assert engine.leaves == [lower]
    engine.train_iters = 5
    engine.run()
    assert engine.global_step == 5 and lower.count == 5


def test_problem_graph_attributes_have_bettys_meaning():
    top, mid, low = make(Upper, "top"), make(Upper, "mid"), make(Lower, "low")
    top.training_step = lambda batch: F.mse_loss(top.mid(batch[0]), batch[1])
    deps = {"l2u": {low: [mid], mid: [top]}, "u2l": {top: [low]}}
    engine = Engine([top, mid, low], EngineConfig(train_iters=1), deps)
    assert (top.parents, top.children) == ([], [mid])
    assert (mid.parents, mid.children) == ([top], [low])
    assert (low.parents, low.children) == ([mid], [])
    assert (low.leaf, mid.leaf, top.leaf) == (True, False, False)
    # Betty's path for the u2l edge top -> low: down the l2u chain to the lower, then back.
    assert top.paths == [[top, mid, low, top]] and low.paths == []
    assert engine.dependencies is deps


def test_add_parent_and_add_child_declare_edges_before_the_engine():
    lower, upper = make(Lower, "lower"), make(Upper, "upper", Config(unroll_steps=2))
    lower.add_parent(upper)
    assert lower.parents == [upper]
    with pytest.raises(MLOError, match="already declared"):
        lower.add_parent(upper)
    engine = Engine([upper, lower], EngineConfig(train_iters=4))
    engine.run()
    assert (lower.count, upper.count) == (4, 2) and upper.children == [lower]
    with pytest.raises(MLOError, match="fixed once it is built"):
        upper.add_child(lower)
    lower, upper = make(Lower, "lower"), make(Upper, "upper")
    upper.add_child(lower)
    Engine([lower, upper], EngineConfig(train_iters=1)).run()
    assert (lower.count, upper.count) == (1, 1) and lower.parents == [upper]


class CountingEngine(Engine):
    """Betty's idiom: a custom train_step that steps each leaf with the global step."""

    seen = []

    def train_step(self):
        for leaf in self.leaves:
            leaf.step(global_step=self.global_step)
        self.seen.append((self.global_step, self.lower._global_step, self.upper._global_step))


def test_custom_train_step_with_leaf_step_cascades_and_sets_global_step():
    lower, upper = make(Lower, "lower"), make(Upper, "upper", Config(step=2))
    engine = CountingEngine([upper, lower], EngineConfig(train_iters=4),
                            {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}})
    engine.run()
    assert (lower.count, upper.count) == (4, 2)
    # upper last stepped at iterations 2 and 4 (its _global_step is that of its latest step)
    assert CountingEngine.seen == [(1, 1, 0), (2, 2, 2), (3, 3, 2), (4, 4, 4)]
    upper.step(global_step=5)  # a problem with lowers steps when they fill its quota: nothing
    assert upper.count == 2


def test_state_dict_round_trip():
    engine, upper, lower = bilevel()
    engine.run()
    state = copy.deepcopy(lower.state_dict())  # like torch's, it holds the live tensors
    assert set(state) == {"module", "optimizer"}
    before = [p.detach().clone() for p in lower.module.parameters()]
    with torch.no_grad():
        for p in lower.module.parameters():
            p.add_(1.0)
    lower.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(before, lower.module.parameters()))
