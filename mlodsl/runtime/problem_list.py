"""``engine.problems``: Betty's list of problems that also answers to their names.

Betty programs treat ``engine.problems`` as the list they passed (``for p in
engine.problems``, ``engine.problems[0]``); mlodsl code and ``.mlo`` validation look problems
up by name (``engine.problems["classifier"]``, ``"hpo" in engine.problems``). One object does
both: iterating yields problems, an integer index is a position, a string is a name.

Example::

    >>> class P:  # anything with a ``name``
    ...     def __init__(self, name): self.name = name
    >>> ps = ProblemList([P("lower"), P("upper")])
    >>> ps[0].name, ps["upper"].name, "lower" in ps, ps.keys()
    ('lower', 'upper', True, ['lower', 'upper'])
"""
from __future__ import annotations

from typing import Any, Iterable

__all__ = ["ProblemList"]


class ProblemList(list):
    """A list of problems with look-up by name (``keys``/``values``/``items``/``get`` too)."""

    def __init__(self, problems: Iterable[Any] = ()):
        super().__init__(problems)
        self._by_name: dict[str, Any] | None = None

    def _index(self) -> dict[str, Any]:
        # Name look-ups are on the hot path (every hypergradient step): cache the index,
        # dropped by any change to the list (the mutating methods below).
        if self._by_name is None:
            self._by_name = {p.name: p for p in list.__iter__(self)}
        return self._by_name

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._index()[key]
            except KeyError:
                raise KeyError(f"no problem named {key!r} (problems: "
                               f"{', '.join(self.keys())})") from None
        return super().__getitem__(key)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, str):
            return item in self._index()
        return any(p is item for p in list.__iter__(self))

    def get(self, name: str, default: Any = None) -> Any:
        """The problem called ``name``, or ``default``."""
        return self._index().get(name, default)

    def keys(self) -> list[str]:
        """The problems' names, in order."""
        return [p.name for p in list.__iter__(self)]

    def values(self) -> list[Any]:
        """The problems, in order (as iterating does)."""
        return list(list.__iter__(self))

    def items(self) -> list[tuple[str, Any]]:
        """``(name, problem)`` pairs, in order."""
        return [(p.name, p) for p in list.__iter__(self)]


def _invalidating(name: str):
    base = getattr(list, name)

    def method(self, *args, **kwargs):
        self._by_name = None
        return base(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


for _name in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
              "__setitem__", "__delitem__", "__iadd__", "__imul__"):
    setattr(ProblemList, _name, _invalidating(_name))
