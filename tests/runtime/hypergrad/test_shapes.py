"""Every method, both multilevel modes, on every shape, against closed forms.

Shapes (tests/support/shapes.py): three- and four-level chains whose top also reads the bottom
(direct and through-the-middle paths), middles linear, quadratic or quartic in the level below,
a middle that reads only the level below, a bottom that is not quadratic (its best response
is curved in the middle), and both diamonds (one upper over two lowers, one
lower under two uppers). Levels start at the fully solved nested problem, learning rates are 0.

Two closed forms (tests/support/multilevel.py), both derived independently of mlodsl:

* the exact hypergradient, by autograd through the nested solution, confirmed here by finite
  differences of the fully solved problem;
* the chain's formula with dense matrices (``linearised_chain``): each level's Jacobian from
  its own loss (frozen) or its total objective (exact mode), its inverse Hessian exact (cg,
  neumann) or the identity (darts, sama with SGD).

Each method must equal the formula of its mode to 1e-6 (neumann: in the limit of many
iterations), and cg/neumann must equal the exact hypergradient wherever their mode is exact:
the default when every middle is linear in the levels below, the exact mode always here.
"""
import pytest

from tests.support import shapes
from tests.support.multilevel import (build_engine, exact_hypergradient, finite_difference,
                                      frozen_hypergradient, linearised_chain, rel_err,
                                      run_and_record)

# name: (program builder, tops, uppers (whose Config picks the edges' method), middles,
#        whether the default chain is exact)
SHAPES = {
    "three-linear": (lambda: shapes.three_level(middle="linear"), ["top"], ["top", "mid"],
                     ["mid"], True),
    "three-quadratic": (lambda: shapes.three_level(middle="quadratic"), ["top"],
                        ["top", "mid"], ["mid"], False),
    "three-quartic": (lambda: shapes.three_level(middle="quartic"), ["top"], ["top", "mid"],
                      ["mid"], False),
    "three-only-below": (lambda: shapes.three_level(middle="only_below"), ["top"],
                         ["top", "mid"], ["mid"], False),
    "three-curved-bottom": (lambda: shapes.three_level(middle="quadratic", bottom="quartic"),
                            ["top"], ["top", "mid"], ["mid"], False),
    "four-linear": (lambda: shapes.four_level(middles="linear"), ["top"], ["top", "m2", "m1"],
                    ["m2", "m1"], True),
    "four-quadratic": (lambda: shapes.four_level(middles="quadratic"), ["top"],
                       ["top", "m2", "m1"], ["m2", "m1"], False),
    "two-lowers": (shapes.two_lowers, ["top"], ["top"], [], True),
    "two-uppers": (shapes.two_uppers, ["u1", "u2"], ["u1", "u2"], [], True),
}
PROGRAMS = {}


def _program(shape):
    if shape not in PROGRAMS:
        PROGRAMS[shape] = SHAPES[shape][0]()
    return PROGRAMS[shape]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_closed_forms_agree(shape):
    """The nested solution's derivative is confirmed by finite differences; the chain's dense
    formula in exact mode is that derivative; the frozen one is too iff the shape says so."""
    program, (_, tops, _, middles, frozen_exact) = _program(shape), SHAPES[shape]
    for top in tops:
        exact = exact_hypergradient(program, top)
        assert rel_err(finite_difference(program, top), exact) <= 1e-6
        assert rel_err(linearised_chain(program, top, total=middles), exact) <= 1e-9
        frozen = frozen_hypergradient(program, top)
        assert rel_err(linearised_chain(program, top), frozen) <= 1e-9
        if frozen_exact:
            assert rel_err(frozen, exact) <= 1e-9
        else:
            assert rel_err(frozen, exact) > 0.05  # the frozen approximation is visible


#: neumann's step for the exact mode's total Hessians (below 1/lambda_max of each; the
#: levels' own Hessians have eigenvalues in [1, 5], the total ones up to 12 for the quartic
#: middle and down to 0.16 for the middle that reads only below)
NEUMANN_ALPHA = {"three-quartic": 0.08, "three-only-below": 0.45}


def _config(method, exact, every=1, shape=None):
    mode = {"multilevel": "exact"} if exact else {}
    if method == "cg":  # converged: cg stops once the residual is at rounding level
        return dict(type="cg", cg_iterations=12, cg_tol=1e-13, unroll_steps=every, **mode)
    if method == "neumann":
        alpha = NEUMANN_ALPHA.get(shape, 0.12) if exact else 0.12
        return dict(type="neumann", neumann_iterations=250, neumann_alpha=alpha,
                    unroll_steps=every, **mode)
    return dict(type=method, unroll_steps=every, **mode)


# neumann's exact mode four levels deep would solve every level below for each product of
# every level above it (250 x 12 x 12 products): tested on three levels, where it is fast
CASES = [(shape, method, exact) for shape in SHAPES for method in ("cg", "neumann", "darts",
                                                                    "sama")
         for exact in (False, True)
         if not (exact and method == "neumann" and len(SHAPES[shape][3]) > 1)]


@pytest.mark.parametrize("shape,method,exact", CASES,
                         ids=[f"{s}-{m}-{'exact' if e else 'frozen'}" for s, m, e in CASES])
def test_every_method_in_its_mode(shape, method, exact):
    program, (_, tops, uppers, middles, frozen_exact) = _program(shape), SHAPES[shape]
    configs = {u: _config(method, exact, shape=shape) for u in uppers}
    if exact and method == "neumann":
        # a total Hessian-vector product solves every level below: neumann on the top edge,
        # cg below it, keeps this test fast
        configs.update({u: _config("cg", True) for u in uppers[1:]})
    identity = [] if method in ("cg", "neumann") else [
        n for n in program.by_name if n not in tops]
    for top in tops:
        engine = build_engine(program, configs)
        got = run_and_record(engine, top)[0]
        want = linearised_chain(program, top, identity=identity,
                                total=middles if exact else ())
        assert rel_err(got, want) <= 1e-6
        if method in ("cg", "neumann") and (exact or frozen_exact):
            assert rel_err(got, exact_hypergradient(program, top)) <= 1e-6


@pytest.mark.parametrize("exact", [False, True], ids=["frozen", "exact"])
def test_every_n_with_implicit_methods(exact):
    """``top`` steps after 3 steps of ``mid``, and ``mid`` after 2 of ``low``: at the nested
    solution the hypergradient does not depend on ``every``."""
    program = _program("three-quadratic")
    engine = build_engine(program, {"top": _config("cg", exact, every=3),
                                    "mid": _config("cg", exact, every=2)})
    got = run_and_record(engine, "top", iterations=6)
    want = (exact_hypergradient(program, "top") if exact
            else frozen_hypergradient(program, "top"))
    assert len(got) == 1 and rel_err(got[0], want) <= 1e-6
