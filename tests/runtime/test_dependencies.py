"""Every dependency error of the Python API is a clear MLOError naming the problems."""
import pytest

from mlodsl import Engine, EngineConfig, MLOError

from tests.support.toy_problems import make_problem


def build(problems, l2u=None, u2l=None):
    return Engine(EngineConfig(train_iters=1), problems, {"l2u": l2u or {}, "u2l": u2l or {}})


def test_cycle_is_reported_in_order():
    a, b, c = make_problem("a"), make_problem("b"), make_problem("c")
    with pytest.raises(MLOError) as err:
        build([a, b, c], l2u={a: [b], b: [c], c: [a]})
    message = str(err.value)
    assert "cycle" in message
    # the cycle is printed as a chain that closes on itself, in dependency order
    chain = message.split("cycle: ")[1].split(" depends on ")
    assert chain[0] == chain[-1] and set(chain) == {"a", "b", "c"}
    for x, y in zip(chain, chain[1:]):
        assert (x, y) in {("b", "a"), ("c", "b"), ("a", "c")}


def test_problem_not_in_problems():
    a, b = make_problem("a"), make_problem("b")
    with pytest.raises(MLOError, match="'b'.*not in problems"):
        build([a], l2u={a: [b]})


def test_edge_to_itself():
    a = make_problem("a")
    with pytest.raises(MLOError, match="'a' depends on itself"):
        build([a], l2u={a: [a]})


def test_u2l_edge_to_itself():
    a = make_problem("a")
    with pytest.raises(MLOError, match="'a' has a u2l edge to itself"):
        build([a], u2l={a: [a]})


def test_u2l_without_l2u_path_back():
    a, b = make_problem("a"), make_problem("b")
    with pytest.raises(MLOError, match="u2l edge a -> b has no l2u path back"):
        build([a, b], u2l={a: [b]})


def test_u2l_with_indirect_path_is_fine():
    a, b, c = make_problem("a"), make_problem("b"), make_problem("c")
    build([a, b, c], l2u={c: [b], b: [a]}, u2l={a: [c]})


def test_unknown_dependency_key():
    a = make_problem("a")
    with pytest.raises(MLOError, match="unknown keys"):
        Engine(EngineConfig(), [a], {"up": {}})


def test_duplicate_and_reserved_names():
    with pytest.raises(MLOError, match="two problems are named 'a'"):
        build([make_problem("a"), make_problem("a")])
    with pytest.raises(MLOError, match="may not be named 'module'"):
        build([make_problem("module")])


def test_problem_reaches_other_problems_by_name():
    a, b = make_problem("a"), make_problem("b", reads=("a",))
    e = build([a, b], l2u={a: [b]})
    assert b.a is a and a.b is b and e.a is a
    with pytest.raises(AttributeError, match="no attribute 'zzz'"):
        _ = b.zzz
