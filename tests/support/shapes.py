"""The program shapes the multilevel hypergradient tests run, with their closed forms.

Every shape is a :class:`tests.support.multilevel.Program` of small float64 levels. Quadratic
losses have affine best responses, so the nested problem is solved exactly by one Newton step
per level (:mod:`tests.support.multilevel`); the few non-quadratic ones say so.
"""
from __future__ import annotations

import torch

from tests.support.multilevel import DT, Level, Program, randn, spd


def three_level(seed: int = 3, middle: str = "linear", direct: bool = True) -> Program:
    """``top`` over ``mid`` over ``low``; ``top`` also reads ``low`` (and ``low`` reads ``top``).

    ``middle`` chooses how the middle's loss reads the bottom:

    * ``"linear"``: ``g_mid = a'Da/2 - a'Eb + k'w`` (the default chain is exact);
    * ``"quadratic"``: ``g_mid = a'Da/2 - a'Eb + |w - q|^2/2`` (frozen Jacobians miss the
      bottom's response; the exact mode does not);
    * ``"quartic"``: as quadratic plus ``sum (w - q)^4 / 4`` (the middle is not quadratic);
    * ``"only_below"``: ``g_mid = |w - q|^2/2``: the middle's loss reads only the level below
      (its frozen Hessian is zero: the default hypergradient through it is zero).

    ``low``: ``g_low = w'Aw/2 - w'(B a + C b)``; ``top``: ``f = |w - r|^2/2 + |a - s|^2/2 +
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
        return v["low"] @ A @ v["low"] / 2 - v["low"] @ rhs

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
              Level("low", nw, low)]
    start = {"top": randn(g, nb), "mid": randn(g, na), "low": randn(g, nw)}
    return Program(levels, start)


THREE_LEVEL_READS = {"top": ["top", "mid", "low"], "mid": ["mid", "low", "top"],
                     "low": ["low", "mid", "top"]}
