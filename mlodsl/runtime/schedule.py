"""Who steps when: the schedule of a multilevel program, as a small explicit object.

Pure Python (no torch), shared by the Python API and the compiler, and printed by
``mlodsl compile``. The rule (LANGUAGE.md section 4):

* each iteration steps every level-0 problem (one that depends on nothing) once, in order;
* after any step of a problem ``L``, every upper ``U`` with an edge ``U -> L`` counts it; ``U``
  steps as soon as each of its lowers has stepped ``every`` times since ``U``'s last step;
* this cascades through any number of levels and any DAG shape.

Edges are the runtime's :class:`~mlodsl.runtime.edges.Edge`; the schedule reads their
``every`` and ``warmup`` (the lower's first ``warmup`` steps do not count towards the upper's
quota: Betty's ``warmup_steps``).

Example::

    >>> s = Schedule(["inner", "outer"], [Edge("outer", "inner", every=2)])
    >>> [s.iteration() for _ in range(2)]
    [['inner'], ['inner', 'outer']]
"""
from __future__ import annotations

from typing import Iterable, Sequence

from mlodsl.runtime.edges import Edge

__all__ = ["Schedule"]


class Schedule:
    """Step counters plus the rule that turns them into the order of steps.

    ``order`` lists the problems in their declaration order; it breaks ties (which leaf steps
    first, which of two ready uppers steps first).
    """

    def __init__(self, order: Sequence[str], edges: Iterable[Edge]):
        self.order = list(order)
        self.edges = list(edges)
        position = {name: i for i, name in enumerate(self.order)}
        for e in self.edges:
            for end in (e.upper, e.lower):
                if end not in position:
                    raise ValueError(f"schedule edge names unknown problem {end!r}")
            if e.every < 1:
                raise ValueError(f"edge {e.upper} -> {e.lower}: every must be >= 1")
        self._lowers = {n: [e for e in self.edges if e.upper == n] for n in self.order}
        self._uppers = {n: sorted((e for e in self.edges if e.lower == n),
                                  key=lambda e: position[e.upper]) for n in self.order}
        self.leaves = [n for n in self.order if not self._lowers[n]]
        self.steps = {n: 0 for n in self.order}
        self._since = {(e.upper, e.lower): 0 for e in self.edges}
        self.iterations = 0

    # -- structure -------------------------------------------------------------------------
    def lowers(self, name: str) -> list[str]:
        """The problems ``name`` depends on directly."""
        return [e.lower for e in self._lowers[name]]

    def uppers(self, name: str) -> list[str]:
        """The problems that depend directly on ``name``."""
        return [e.upper for e in self._uppers[name]]

    def edge(self, upper: str, lower: str) -> Edge:
        """The edge ``upper -> lower``."""
        for e in self._lowers[upper]:
            if e.lower == lower:
                return e
        raise KeyError((upper, lower))

    def levels(self) -> dict[str, int]:
        """Level of each problem: 0 for leaves, else 1 + the highest level of its lowers."""
        memo: dict[str, int] = {}

        def level(n: str) -> int:
            if n not in memo:
                memo[n] = 1 + max((level(l) for l in self.lowers(n)), default=-1)
            return memo[n]

        return {n: level(n) for n in self.order}

    # -- dynamics --------------------------------------------------------------------------
    def record_step(self, name: str) -> list[str]:
        """Count one step of ``name``; return the uppers that became ready, in order.

        The returned uppers' own counters are reset here: the caller must step them.
        """
        self.steps[name] += 1
        for e in self._uppers[name]:
            if self.steps[name] > e.warmup:
                self._since[(e.upper, name)] += 1
        ready = []
        for e in self._uppers[name]:
            upper = e.upper
            if all(self._since[(upper, l.lower)] >= l.every for l in self._lowers[upper]):
                for l in self._lowers[upper]:
                    self._since[(upper, l.lower)] = 0
                ready.append(upper)
        return ready

    def cascade(self, name: str) -> list[str]:
        """Count one step of ``name``; return it and the uppers that step after it, in order."""
        out: list[str] = []

        def step(n: str) -> None:
            out.append(n)
            for upper in self.record_step(n):
                step(upper)

        step(name)
        return out

    def iteration(self) -> list[str]:
        """Advance one engine iteration; return the problems to step, in order."""
        out: list[str] = []
        for leaf in self.leaves:
            out.extend(self.cascade(leaf))
        self.iterations += 1
        return out

    def pending(self, upper: str) -> dict[str, int]:
        """Steps each lower of ``upper`` has made since ``upper``'s last step."""
        return {e.lower: self._since[(upper, e.lower)] for e in self._lowers[upper]}

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Counters needed to resume exactly where the schedule stopped."""
        return {"steps": dict(self.steps), "iterations": self.iterations,
                "since": [[u, l, c] for (u, l), c in self._since.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters written by :meth:`state_dict`."""
        self.steps.update(state["steps"])
        self.iterations = int(state["iterations"])
        for u, l, c in state["since"]:
            self._since[(u, l)] = int(c)

    def describe(self) -> str:
        """A few lines saying who steps when, for ``mlodsl compile``."""
        levels = self.levels()
        lines = [f"each iteration steps: {', '.join(self.leaves)}"]
        for name in sorted(self.order, key=lambda n: (levels[n], self.order.index(n))):
            lowers = self._lowers[name]
            if lowers:
                parts = [f"{e.lower} has stepped {e.every}x" + (f" (after {e.warmup} warm-up)"
                                                               if e.warmup else "")
                         for e in lowers]
                lines.append(f"{name} (level {levels[name]}) steps when " + " and ".join(parts))
        return "\n".join(lines)
