"""The program shapes the multilevel hypergradient tests run, with their closed forms.

Every shape is a :class:`tests.support.multilevel.Program` of small float64 levels. Quadratic
losses have affine best responses, so the nested problem is solved exactly by one Newton step
per level (:mod:`tests.support.multilevel`); the few non-quadratic ones say so.
"""
from __future__ import annotations

import torch

from tests.support.multilevel import Level, Program, randn, spd


def three_level(seed: int = 3, middle: str = "linear", direct: bool = True,
                bottom: str = "quadratic") -> Program:
    """``top`` over ``mid`` over ``low``; ``top`` also reads ``low`` (and ``low`` reads ``top``).

    ``middle`` chooses how the middle's loss reads the bottom:

    * ``"linear"``: ``g_mid = a'Da/2 - a'Eb + k'w`` (the default chain is exact);
    * ``"quadratic"``: ``g_mid = a'Da/2 - a'Eb + |w - q|^2/2`` (frozen Jacobians miss the
      bottom's response; the exact mode does not);
    * ``"quartic"``: as quadratic plus ``sum (w - q)^4 / 4`` (the middle is not quadratic);
    * ``"only_below"``: ``g_mid = |w - q|^2/2``: the middle's loss reads only the level below
      (its frozen Hessian is zero: the default hypergradient through it is zero).

    ``low``: ``g_low = w'Aw/2 - w'(B a + C b)`` (``bottom="quartic"``: plus
    ``sum w^4 / 4``, so that its best response is not affine in ``a``); ``top``: ``f = |w - r|^2/2 + |a - s|^2/2 +
    c|b|^2/2`` (without ``direct``, ``f`` reads ``a`` and ``b`` only, and ``low`` does not read
    ``b``).
    """
    g = torch.Generator().manual_seed(seed)
    nw, na, nb = 5, 3, 2
    A, D = spd(nw, g), spd(na, g)
    B, C, E = randn(g, nw, na), randn(g, nw, nb), randn(g, na, nb)
    k, q, r, s = randn(g, nw), randn(g, nw), randn(g, nw), randn(g, na)
    cb = 0.3

    def low(v):
        rhs = B @ v["mid"] + (C @ v["top"] if direct else 0)
        out = v["low"] @ A @ v["low"] / 2 - v["low"] @ rhs
        if bottom == "quartic":
            out = out + (v["low"] ** 4).sum() / 4
        return out

    def mid(v):
        w = v["low"]
        if middle == "only_below":
            return ((w - q) ** 2).sum() / 2
        a = v["mid"]
        own = a @ D @ a / 2 - a @ E @ v["top"]
        if middle == "linear":
            return own + k @ w
        out = own + ((w - q) ** 2).sum() / 2
        if middle == "quartic":
            out = out + ((w - q) ** 4).sum() / 4
        return out

    def top(v):
        b, a = v["top"], v["mid"]
        out = ((a - s) ** 2).sum() / 2 + cb * (b ** 2).sum() / 2
        if direct:
            out = out + ((v["low"] - r) ** 2).sum() / 2
        return out

    levels = [Level("top", nb, top, ("mid",)),
              Level("mid", na, mid, ("low",), quadratic=middle != "quartic"),
              Level("low", nw, low, quadratic=bottom == "quadratic")]
    start = {"top": randn(g, nb), "mid": randn(g, na), "low": randn(g, nw)}
    return Program(levels, start)


THREE_LEVEL_READS = {"top": ["top", "mid", "low"], "mid": ["mid", "low", "top"],
                     "low": ["low", "mid", "top"]}


def four_level(seed: int = 5, middles: str = "linear") -> Program:
    """``top`` over ``m2`` over ``m1`` over ``low``; ``top`` reads ``m2`` and ``low``, ``low``
    reads ``m1`` and ``top`` (a direct path top -> low besides the one through the middles).

    ``g_low = w'Aw/2 - w'(B a + C b)``, ``g_m1 = a'Da/2 - a'Ec + (k'w | |w - q|^2/2)``,
    ``g_m2 = c'Fc/2 - c'Gb + (l'a | |a - s|^2/2)``, ``f = |c - r|^2/2 + |w - t|^2/2 +
    0.3|b|^2/2``: ``middles="linear"`` (the default chain is exact) or ``"quadratic"``.
    """
    g = torch.Generator().manual_seed(seed)
    nw, na, nc, nb = 4, 3, 3, 2
    A, D, F = spd(nw, g), spd(na, g), spd(nc, g)
    B, C, E, G = randn(g, nw, na), randn(g, nw, nb), randn(g, na, nc), randn(g, nc, nb)
    k, q, l, s, r, t = (randn(g, n) for n in (nw, nw, na, na, nc, nw))
    quad = middles == "quadratic"

    def low(v):
        w = v["low"]
        return w @ A @ w / 2 - w @ (B @ v["m1"] + C @ v["top"])

    def m1(v):
        a, w = v["m1"], v["low"]
        return a @ D @ a / 2 - a @ E @ v["m2"] + (((w - q) ** 2).sum() / 2 if quad else k @ w)

    def m2(v):
        c, a = v["m2"], v["m1"]
        return c @ F @ c / 2 - c @ G @ v["top"] + (((a - s) ** 2).sum() / 2 if quad else l @ a)

    def top(v):
        return (((v["m2"] - r) ** 2).sum() / 2 + ((v["low"] - t) ** 2).sum() / 2
                + 0.3 * (v["top"] ** 2).sum() / 2)

    levels = [Level("top", nb, top, ("m2",)), Level("m2", nc, m2, ("m1",)),
              Level("m1", na, m1, ("low",)), Level("low", nw, low)]
    start = {"top": randn(g, nb), "m2": randn(g, nc), "m1": randn(g, na), "low": randn(g, nw)}
    return Program(levels, start)


def two_lowers(seed: int = 7) -> Program:
    """A diamond's top: ``top`` over ``l1`` and ``l2``, each reading ``top``
    (``g_li = w_i'A_i w_i/2 - w_i'C_i b``), ``f = |w1 - r1|^2/2 + |w2 - r2|^2/2 +
    0.3|b|^2/2``."""
    g = torch.Generator().manual_seed(seed)
    n1, n2, nb = 4, 3, 2
    A1, A2 = spd(n1, g), spd(n2, g)
    C1, C2 = randn(g, n1, nb), randn(g, n2, nb)
    r1, r2 = randn(g, n1), randn(g, n2)

    def l1(v):
        w = v["l1"]
        return w @ A1 @ w / 2 - w @ C1 @ v["top"]

    def l2(v):
        w = v["l2"]
        return w @ A2 @ w / 2 - w @ (C2 @ v["top"])

    def top(v):
        return (((v["l1"] - r1) ** 2).sum() / 2 + ((v["l2"] - r2) ** 2).sum() / 2
                + 0.3 * (v["top"] ** 2).sum() / 2)

    levels = [Level("top", nb, top, ("l1", "l2")), Level("l1", n1, l1), Level("l2", n2, l2)]
    return Program(levels, {"top": randn(g, nb), "l1": randn(g, n1), "l2": randn(g, n2)})


def two_uppers(seed: int = 11) -> Program:
    """A diamond's bottom: ``low`` under ``u1`` and ``u2`` (``g_low = w'Aw/2 - w'(C1 b1 +
    C2 b2)``, ``f_i = |P_i w - r_i|^2/2 + 0.3|b_i|^2/2``)."""
    g = torch.Generator().manual_seed(seed)
    nw, n1, n2 = 5, 2, 3
    A = spd(nw, g)
    C1, C2, P1, P2 = randn(g, nw, n1), randn(g, nw, n2), randn(g, 3, nw), randn(g, 4, nw)
    r1, r2 = randn(g, 3), randn(g, 4)

    def low(v):
        w = v["low"]
        return w @ A @ w / 2 - w @ (C1 @ v["u1"] + C2 @ v["u2"])

    def u1(v):
        return ((P1 @ v["low"] - r1) ** 2).sum() / 2 + 0.3 * (v["u1"] ** 2).sum() / 2

    def u2(v):
        return ((P2 @ v["low"] - r2) ** 2).sum() / 2 + 0.3 * (v["u2"] ** 2).sum() / 2

    levels = [Level("u1", n1, u1, ("low",)), Level("u2", n2, u2, ("low",)),
              Level("low", nw, low)]
    return Program(levels, {"u1": randn(g, n1), "u2": randn(g, n2), "low": randn(g, nw)})
