"""When an unrolled window may close: after every problem above it has used it.

A problem whose steps are unrolled (``unroll``, ``IterativeProblem``) keeps its steps on the
autograd tape as "fast" weights. Every problem *above* it differentiates through that tape:
its upper directly, and every problem further up through the levels in between (an upper two
levels up reaches the bottom's steps through the middle's unrolled steps, or directly when its
loss reads the bottom). Closing the window writes the fast weights back and drops the tape, so
it may happen only once all of them have taken their hypergradient; otherwise their paths into
the window silently contribute nothing.

:class:`WindowConsumers` keeps, for each unrolled problem, the problems above it that have not
stepped since its last step, and says which windows a step lets close. With stacked ``unroll``
edges (every 2 over every 2) the bottom's window then spans the top's whole window, as in the
explicit nested loop; with ``cg`` on top of an ``unroll`` edge it stays open across the
middle's (in-place) step until the top has stepped.

While a window is open, a problem it reads may step *in place* (a level below it, or one of
two uppers that step at different times): the tape would then see a changed tensor. Those
problems are shown to the unrolled step as copies (:meth:`WindowConsumers.copied_readers`), so
the tape keeps the values the step read, and gradients still reach the live parameters.

Example::

    >>> c = WindowConsumers({"top": ["mid"], "mid": ["low"], "low": []}, {"mid", "low"})
    >>> c.stepped("low"), c.stepped("mid"), c.stepped("top")
    ([], [], ['mid', 'low'])
"""
from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["WindowConsumers"]


class WindowConsumers:
    """The problems that still have to use each unrolled window.

    Args:
        lowers: ``{problem: [problems it depends on]}`` for every problem (the DAG).
        unrolled: the problems whose steps are unrolled.
    """

    def __init__(self, lowers: Mapping[str, Iterable[str]], unrolled: Iterable[str]):
        self._lowers = {n: list(ls) for n, ls in lowers.items()}
        self._uppers: dict[str, list[str]] = {n: [] for n in self._lowers}
        for n, ls in self._lowers.items():
            for low in ls:
                self._uppers[low].append(n)
        self.unrolled = [n for n in self._lowers if n in set(unrolled)]
        self._above = {n: self._reach(n, self._uppers) for n in self._lowers}
        self._below = {n: self._reach(n, self._lowers) for n in self._lowers}
        # unrolled problem -> problems above it that have not stepped since its last step
        self._pending: dict[str, set[str]] = {n: set() for n in self.unrolled}

    @staticmethod
    def _reach(name: str, edges: Mapping[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        stack = list(edges[name])
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(edges[n])
        return seen

    def stepped(self, name: str) -> list[str]:
        """Record a step of ``name``; return the unrolled windows that may close now.

        A window closes after the step of a problem above it once no problem above it is
        still to step (returned in declaration order: each window writes back only its own
        parameters, so the order does not matter).
        """
        if name in self._pending:
            self._pending[name] = set(self._above[name])
        ready = []
        for low in self.unrolled:
            if name in self._above[low]:
                self._pending[low].discard(name)
                if not self._pending[low]:
                    ready.append(low)
        return ready

    def copied_readers(self, name: str) -> list[str]:
        """Problems whose live parameters the unrolled steps of ``name`` should read as copies.

        Those that may step in place while ``name``'s window is still open: every problem
        below it (they step before each of its steps), and every problem above it with
        another problem above ``name`` that is not below it (that one may step later).
        """
        above = self._above[name]
        out = set(self._below[name])
        for a in above:
            if any(b != a and b not in self._below[a] for b in above):
                out.add(a)
        return [n for n in self._lowers if n in out]

    def above(self, name: str) -> list[str]:
        """Every problem above ``name`` (that depends on it, directly or not)."""
        return [n for n in self._lowers if n in self._above[name]]

    def pending(self) -> dict[str, list[str]]:
        """For each unrolled problem, the problems above it still to use its window."""
        return {n: sorted(s) for n, s in self._pending.items()}

    def reset(self) -> None:
        """Forget pending uses (every window is closed, e.g. after loading a checkpoint)."""
        for s in self._pending.values():
            s.clear()
