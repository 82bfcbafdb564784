"""The schedule: who steps when, on 2-, 3- and 4-level DAGs, through the Python API."""
from mlodsl import Config
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.schedule import Schedule

from tests.support.toy_problems import engine_for, make_problem


def run_counts(problems, l2u, iterations):
    e = engine_for(problems, l2u, iterations)
    e.run()
    return {name: p.count for name, p in e.problems.items()}


def test_two_levels_step_every_unroll():
    lower = make_problem("lower")
    upper = make_problem("upper", reads=("lower",), config=Config(type="darts", step=3))
    counts = run_counts([upper, lower], {"lower": ["upper"]}, 12)
    assert counts == {"upper": 4, "lower": 12}


def test_three_levels_cascade():
    # A middle problem's Config governs both its edges; Betty's reading (each lower says how
    # often its uppers step) is the unambiguous one here.
    a = make_problem("a", config=Config(unroll_steps=2))
    b = make_problem("b", reads=("a",), config=Config(unroll_steps=3))
    c = make_problem("c", reads=("b",))
    counts = run_counts([a, b, c], {"a": ["b"], "b": ["c"]}, 12)
    assert counts == {"a": 12, "b": 6, "c": 2}


def test_four_levels_diamond_dag():
    # d depends on b and c; both depend on a; e depends on d.
    a = make_problem("a")
    b = make_problem("b", reads=("a",), config=Config(step=2))
    c = make_problem("c", reads=("a",), config=Config(step=1))
    d = make_problem("d", reads=("b", "c"))
    e = make_problem("e", reads=("d",), config=Config(step=1))
    counts = run_counts([a, b, c, d, e], {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": ["e"]}, 8)
    # a: 8; b every 2 of a: 4; c every 1: 8; d when b made 2 (b's own Config, the lower's) and
    # c made 1: after iterations 4, 8; e every step of d.
    assert counts == {"a": 8, "b": 4, "c": 8, "d": 2, "e": 2}


def test_two_leaves_one_upper_waits_for_both():
    l1 = make_problem("l1")
    l2 = make_problem("l2")
    u = make_problem("u", reads=("l1", "l2"), config=Config(step=2))
    counts = run_counts([u, l1, l2], {"l1": ["u"], "l2": ["u"]}, 5)
    assert counts == {"u": 2, "l1": 5, "l2": 5}


def test_order_within_an_iteration_and_cascade():
    s = Schedule(["a", "b", "c"], [Edge("b", "a", 1), Edge("c", "b", 1)])
    assert s.iteration() == ["a", "b", "c"]
    assert s.levels() == {"a": 0, "b": 1, "c": 2}


def test_warmup_delays_the_upper():
    s = Schedule(["lo", "up"], [Edge("up", "lo", every=2, warmup=3)])
    steps = [s.iteration() for _ in range(7)]
    assert [i for i, st in enumerate(steps, 1) if "up" in st] == [5, 7]


def test_state_dict_round_trip():
    s = Schedule(["lo", "up"], [Edge("up", "lo", every=3)])
    s.iteration()
    s.iteration()
    t = Schedule(["lo", "up"], [Edge("up", "lo", every=3)])
    t.load_state_dict(s.state_dict())
    assert t.iteration() == ["lo", "up"]
    assert t.steps == {"lo": 3, "up": 1}
