"""Signatures of the hypergradient methods: names, arguments, defaults and valid ranges.

This table is torch-free. The ``.mlo`` checker reads it to validate ``via darts(alpha=...)``
before anything runs, the runtime registry (``mlodsl.runtime.hypergrad``) reads it to fill in
defaults, and ``Config`` maps Betty's field names (``darts_alpha``, ``cg_iterations``, ...) onto
it. Adding a method means adding a :class:`MethodSignature` here and a module in
``mlodsl/runtime/hypergrad/``.

Example::

    >>> METHODS["neumann"].bind({"iterations": 5})
    {'iterations': 5, 'alpha': 1.0, 'multilevel': 'frozen'}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Argument", "MethodSignature", "METHODS", "MULTILEVEL_MODES", "BadMethodArgument",
           "method_field", "EXTRA_METHOD_FIELDS", "without_default_mode"]


class BadMethodArgument(ValueError):
    """An argument that the method does not take, or a value outside its range."""

    def __init__(self, message: str, argument: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.argument = argument
        self.hint = hint


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a method: its type, default and valid range."""

    name: str
    type: type
    default: Any
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    config_field: str | None = None  # Betty's ``Config`` field with the same meaning
    doc: str = ""
    choices: tuple | None = None  # the only values allowed (for string settings)

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to the argument's type, or raise BadMethodArgument."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.type) and not isinstance(value, bool)
        if not ok:
            raise BadMethodArgument(
                f"argument '{self.name}' must be {self.type.__name__}, got {value!r}", self.name)
        if self.choices is not None and value not in self.choices:
            from mlodsl.diagnostics import did_you_mean
            raise BadMethodArgument(
                f"argument '{self.name}' must be one of "
                f"{', '.join(repr(c) for c in self.choices)}, got {value!r}", self.name,
                did_you_mean(str(value), [str(c) for c in self.choices]))
        if self.minimum is not None:
            too_small = value <= self.minimum if self.exclusive_minimum else value < self.minimum
            if too_small:
                rel = ">" if self.exclusive_minimum else ">="
                raise BadMethodArgument(
                    f"argument '{self.name}' must be {rel} {self.minimum}, got {value!r}", self.name)
        if self.maximum is not None and value > self.maximum:
            raise BadMethodArgument(
                f"argument '{self.name}' must be <= {self.maximum}, got {value!r}", self.name)
        return value


@dataclass(frozen=True)
class MethodSignature:
    """A hypergradient method's name, its arguments and a one-line description."""

    name: str
    arguments: tuple[Argument, ...] = ()
    summary: str = ""
    positional: bool = False  # whether positional arguments are allowed (in declaration order)

    def argument(self, name: str) -> Argument | None:
        """The argument called ``name``, or None."""
        for arg in self.arguments:
            if arg.name == name:
                return arg
        return None

    def bind(self, kwargs: Mapping[str, Any], args: tuple = ()) -> dict[str, Any]:
        """Validate call arguments and return the full dict with defaults filled in."""
        if args and len(args) > len(self.arguments):
            raise BadMethodArgument(
                f"{self.name}() takes at most {len(self.arguments)} arguments, got {len(args)}")
        bound: dict[str, Any] = {}
        for arg, value in zip(self.arguments, args):
            bound[arg.name] = arg.validate(value)
        names = [a.name for a in self.arguments]
        for key, value in kwargs.items():
            arg = self.argument(key)
            if arg is None:
                from mlodsl.diagnostics import did_you_mean
                known = ", ".join(names) or "no arguments"
                raise BadMethodArgument(
                    f"{self.name}() has no argument '{key}' (it takes {known})", key,
                    did_you_mean(key, names))
            if key in bound:
                raise BadMethodArgument(f"{self.name}() got argument '{key}' twice", key)
            bound[key] = arg.validate(value)
        for arg in self.arguments:
            bound.setdefault(arg.name, arg.default)
        return bound


def _pos_int(name, default, config_field=None, doc=""):
    return Argument(name, int, default, minimum=1, config_field=config_field, doc=doc)


def _pos_float(name, default, config_field=None, doc=""):
    return Argument(name, float, default, minimum=0.0, exclusive_minimum=True,
                    config_field=config_field, doc=doc)


#: How a middle level's best-response Jacobian is formed (docs/hypergradients.md, "What is
#: exact"). ``"frozen"`` (the default, as in Betty): from the level's own loss, the levels
#: below it held fixed. ``"exact"``: from its *total* objective, the levels below responding
#: through their own edges' methods; costs two solves per level below for every Hessian-vector
#: product, and is the nested problem's derivative when the inverses below are converged.
MULTILEVEL_MODES = ("frozen", "exact")


def without_default_mode(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` without ``multilevel`` when it is the default, ``"frozen"``: it is the chain's
    setting, not the method's, and edges and plans show it only where it changes something.

    >>> without_default_mode({"alpha": 0.01, "multilevel": "frozen"})
    {'alpha': 0.01}
    """
    return {k: v for k, v in args.items() if not (k == "multilevel" and v == "frozen")}


def _multilevel():
    return Argument("multilevel", str, "frozen", config_field="multilevel",
                    choices=MULTILEVEL_MODES,
                    doc="'exact': a middle level's Jacobian from its total objective, the "
                    "levels below it responding; 'frozen': from its own loss alone")


METHODS: dict[str, MethodSignature] = {
    m.name: m
    for m in [
        MethodSignature(
            "darts",
            (_pos_float("alpha", 0.01, "darts_alpha", "finite-difference radius (scaled by 1/|v|)"),
             _multilevel()),
            "inverse Hessian as identity; mixed second derivative by central finite difference",
        ),
        MethodSignature(
            "neumann",
            (_pos_int("iterations", 1, "neumann_iterations", "terms of the Neumann series"),
             _pos_float("alpha", 1.0, "neumann_alpha", "step of the Neumann series"),
             _multilevel()),
            "inverse Hessian-vector product by a truncated Neumann series",
        ),
        MethodSignature(
            "cg",
            (_pos_int("iterations", 1, "cg_iterations", "conjugate-gradient iterations"),
             _pos_float("alpha", 1.0, "cg_alpha", "scale of the linear system (rescales only)"),
             Argument("tol", float, 0.0, minimum=0.0, doc="stop early when the residual norm "
                      "falls below tol times the initial one (0: never)"),
             _multilevel()),
            "inverse Hessian-vector product by conjugate gradient",
        ),
        MethodSignature(
            "unroll",
            (Argument("first_order", bool, False, config_field="first_order",
                      doc="drop second-order terms: the lower's gradients are taken without "
                      "a graph (first-order MAML)"),
             Argument("checkpoint", bool, False,
                      doc="recompute the unrolled steps in backward instead of storing them")),
            "iterative differentiation through the lower's last `every` steps",
        ),
        MethodSignature(
            "reinforce",
            (Argument("baseline_decay", float, 0.9, minimum=0.0, maximum=1.0,
                      doc="decay of the running-mean reward baseline"),),
            "score-function estimator for uppers that reach the lower by sampling",
        ),
        MethodSignature(
            "sama",
            (_pos_float("alpha", 1.0, "sama_adam_alpha", "finite-difference radius"),
             _multilevel()),
            "SAMA's scalable first-order approximation (Choe et al., 2023)",
        ),
        MethodSignature(
            "first_order",
            (),
            "ignore the implicit term: only the direct gradient of the upper's loss",
        ),
    ]
}


#: The ``Config`` fields that set method arguments without Betty's ``<method>_`` spelling.
EXTRA_METHOD_FIELDS: dict[str, dict[str, str]] = {
    "cg": {"tol": "cg_tol"}, "unroll": {"checkpoint": "unroll_checkpoint"},
    "reinforce": {"baseline_decay": "reinforce_baseline_decay"}}


def method_field(method: str, argument: str) -> str | None:
    """The ``Config`` field that sets ``method``'s ``argument`` (None when there is none).

    >>> method_field("neumann", "iterations"), method_field("cg", "tol")
    ('neumann_iterations', 'cg_tol')
    """
    arg = METHODS[method].argument(argument)
    if arg is not None and arg.config_field:
        return arg.config_field
    return EXTRA_METHOD_FIELDS.get(method, {}).get(argument)
