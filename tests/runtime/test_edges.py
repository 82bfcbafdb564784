"""Edge: the one runtime edge type (schedule, engine and plan read it)."""
import pytest

from mlodsl import MLOError
from mlodsl.methods import METHODS
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.schedule import Schedule


def test_arguments_are_bound_with_defaults_and_checked():
    e = Edge("up", "lo", every=3, method="neumann", args={"iterations": 4})
    bound = METHODS["neumann"].bind({"iterations": 4})
    assert bound.pop("multilevel") == "frozen"  # the default mode is not repeated on edges
    assert e.args == bound and e.args["iterations"] == 4
    assert set(e.args) == {a.name for a in METHODS["neumann"].arguments} - {"multilevel"}
    exact = Edge("up", "lo", method="cg", args={"multilevel": "exact"})
    assert exact.args["multilevel"] == "exact" and "multilevel='exact'" in repr(exact)
    f = Edge("up", "lo", every=3, method="cg", args={"iterations": 2, "alpha": 0.5, "tol": 0.0})
    assert repr(f) == "up -> lo every 3 via cg(iterations=2, alpha=0.5, tol=0.0)"
    with pytest.raises(MLOError, match="unknown hypergradient method 'newton'"):
        Edge("up", "lo", method="newton")
    with pytest.raises(ValueError):
        Edge("up", "lo", method="neumann", args={"iterations": 0})


def test_the_schedule_reads_every_and_warmup_of_the_same_edges():
    edges = [Edge("up", "lo", every=2, warmup=1, method="unroll", source="via")]
    s = Schedule(["lo", "up"], edges)
    assert [s.iteration() for _ in range(5)] == [["lo"], ["lo"], ["lo", "up"], ["lo"],
                                                 ["lo", "up"]]
    assert s.edge("up", "lo") is edges[0]
