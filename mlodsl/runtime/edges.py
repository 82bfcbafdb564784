"""The runtime's edge: "``upper`` depends on ``lower``", with everything the run needs to know.

One type for the schedule (who steps when: ``every``, ``warmup``), the engine (how the upper's
gradient goes through the lower: ``method`` and its ``args``) and the compiler's plan (where
the method came from: ``source``). The ``.mlo`` syntax node of an edge
(``mlodsl.compiler.ir.Edge``) stays the compiler's; lowering turns it into this. Torch-free.

    >>> Edge("outer", "inner", every=2)
    outer -> inner every 2 via darts(alpha=0.01)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlodsl.diagnostics import MLOError
from mlodsl.methods import METHODS, without_default_mode

__all__ = ["Edge"]


@dataclass(frozen=True)
class Edge:
    """``upper`` depends on ``lower``.

    Attributes:
        upper, lower: problem names.
        every: ``upper`` steps after each ``every`` steps of ``lower`` (the unroll length).
        warmup: the lower's first ``warmup`` steps do not count towards ``every``.
        method: the hypergradient method through ``lower`` (a name in ``mlodsl.methods``).
        args: the method's arguments, defaults filled in (checked against its signature);
            ``multilevel`` only when it is ``"exact"``.
        source: where the method came from, for ``mlodsl compile`` ("via", "default", ...).
        where: where the edge is written (``FILE:LINE:COL``) in a compiled program, for the
            warnings a method gives while it runs; None for a program built in Python.
        note: how a default argument was derived, for ``mlodsl compile``
            ("alpha = the lr of 'classifier'"); empty when nothing was derived.
        origins: where the other settings came from, for ``mlodsl compile``: ``"every"``,
            ``"warm-up"`` and method argument names, each to a phrase like
            ``"header of 'hpo'"`` (absent: the edge's own syntax, or the default).
    """

    upper: str
    lower: str
    every: int = 1
    warmup: int = 0
    method: str = "darts"
    args: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)
    where: str | None = field(default=None, compare=False)  # "FILE:LINE:COL" in a .mlo program
    note: str = field(default="", compare=False)
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise MLOError(f"edge {self.upper} -> {self.lower}: unknown hypergradient method "
                           f"'{self.method}'")
        # Frozen: the normalised values are set through object.__setattr__ (dataclass idiom).
        args = without_default_mode(METHODS[self.method].bind(dict(self.args or {})))
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "every", int(self.every))
        object.__setattr__(self, "warmup", int(self.warmup))

    def call(self) -> str:
        """The method as a call: ``darts(alpha=0.01)``."""
        return f"{self.method}(" + ", ".join(f"{k}={v!r}" for k, v in self.args.items()) + ")"

    def describe_origins(self) -> str:
        """``method from via, every from header of 'hpo', ...``: every origin, for messages."""
        parts = [f"method from {self.source or 'default'}",
                 f"every from {self.origins.get('every', 'default')}"]
        if "warm-up" in self.origins:
            parts.append(f"warm-up {self.warmup} from {self.origins['warm-up']}")
        parts += [f"{k} from {v}" for k, v in self.origins.items() if k not in ("every",
                                                                              "warm-up")]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{self.upper} -> {self.lower} every {self.every} via {self.call()}"
