"""Signatures of the hypergradient methods: names, arguments, defaults and valid ranges.

This table is torch-free. The ``.mlo`` checker reads it to validate ``via darts(alpha=...)``
before anything runs, the runtime registry (``mlodsl.runtime.hypergrad``) reads it to fill in
defaults, and ``Config`` maps Betty's field names (``darts_alpha``, ``cg_iterations``, ...) onto
it. Adding a method means adding a :class:`MethodSignature` here and a module in
``mlodsl/runtime/hypergrad/``.

Example::

    >>> METHODS["neumann"].bind({"iterations": 5})
    {'iterations': 5, 'alpha': 1.0}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Argument", "MethodSignature", "METHODS", "method_names", "BadMethodArgument",
           "Setting", "CONFIG_SETTINGS", "SETTING_ALIASES", "method_field"]


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
    implicit: bool = True  # False for methods that do not assume the lower is at its optimum
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


METHODS: dict[str, MethodSignature] = {
    m.name: m
    for m in [
        MethodSignature(
            "darts",
            (_pos_float("alpha", 0.01, "darts_alpha", "finite-difference radius (scaled by 1/|v|)"),),
            "inverse Hessian as identity; mixed second derivative by central finite difference",
        ),
        MethodSignature(
            "neumann",
            (_pos_int("iterations", 1, "neumann_iterations", "terms of the Neumann series"),
             _pos_float("alpha", 1.0, "neumann_alpha", "step of the Neumann series")),
            "inverse Hessian-vector product by a truncated Neumann series",
        ),
        MethodSignature(
            "cg",
            (_pos_int("iterations", 1, "cg_iterations", "conjugate-gradient iterations"),
             _pos_float("alpha", 1.0, "cg_alpha", "scale of the linear system (rescales only)"),
             Argument("tol", float, 0.0, minimum=0.0, doc="stop early when the residual norm "
                      "falls below tol times the initial one (0: never)")),
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
            implicit=False,
        ),
        MethodSignature(
            "reinforce",
            (Argument("baseline_decay", float, 0.9, minimum=0.0, maximum=1.0,
                      doc="decay of the running-mean reward baseline"),),
            "score-function estimator for uppers that reach the lower by sampling",
            implicit=False,
        ),
        MethodSignature(
            "sama",
            (_pos_float("alpha", 1.0, "sama_adam_alpha", "finite-difference radius"),),
            "SAMA's scalable first-order approximation (Choe et al., 2023)",
        ),
        MethodSignature(
            "first_order",
            (),
            "ignore the implicit term: only the direct gradient of the upper's loss",
            implicit=False,
        ),
    ]
}


def method_names() -> list[str]:
    """The names of every registered hypergradient method."""
    return list(METHODS)


# ----------------------------------------------------------------------------- Config settings

@dataclass(frozen=True)
class Setting:
    """One field of the Python API's per-problem ``Config`` (Betty 0.2.1's vocabulary).

    The same table checks ``Config(...)`` in Python and the ``problem P <key=value, ...>``
    header of a ``.mlo`` program, so a setting means one thing on both routes.

    ``role`` says what the setting governs: ``"edge"`` (the method, unroll length or warm-up of
    the edges between the problem and its uppers/lowers), ``"method"`` (an argument of one
    hypergradient method, see :attr:`Argument.config_field`), or ``"step"`` (how the problem
    itself steps: clipping, accumulation, precision, logging). ``field`` names the ``.mlo``
    problem field with the same meaning, if any (a header and that field must agree).
    """

    name: str
    type: type
    default: Any
    role: str = "step"
    minimum: float | None = None
    choices: tuple = ()
    field: str | None = None
    doc: str = ""
    exclusive_minimum: bool = False
    maximum: float | None = None

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to the setting's type, or raise BadMethodArgument."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, bool) if self.type is bool else (
            isinstance(value, self.type) and not isinstance(value, bool))
        if not ok:
            raise BadMethodArgument(f"'{self.name}' must be {self.type.__name__}, got {value!r}",
                                    self.name)
        if self.choices and value not in self.choices:
            from mlodsl.diagnostics import did_you_mean
            options = ", ".join(repr(c) for c in self.choices)
            what = (f"unknown hypergradient method {value!r} (methods: {options})"
                    if self.name == "type" else f"'{self.name}' must be one of {options}, "
                    f"got {value!r}")
            raise BadMethodArgument(what,
                                    self.name, did_you_mean(str(value), [str(c) for c in
                                                                         self.choices]))
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum
                                         else value < self.minimum):
            rel = ">" if self.exclusive_minimum else ">="
            raise BadMethodArgument(f"'{self.name}' must be {rel} {self.minimum}, got {value!r}",
                                    self.name)
        if self.maximum is not None and value > self.maximum:
            raise BadMethodArgument(f"'{self.name}' must be <= {self.maximum}, got {value!r}",
                                    self.name)
        return value


def _method_knobs() -> list[Setting]:
    """The settings that are arguments of a method (``darts_alpha``, ``cg_iterations``, ...)."""
    out = []
    for sig in METHODS.values():
        for arg in sig.arguments:
            if arg.config_field and arg.config_field != "first_order":
                out.append(Setting(arg.config_field, arg.type, arg.default, "method", arg.minimum,
                                   doc=f"{sig.name}(): {arg.doc}",
                                   exclusive_minimum=arg.exclusive_minimum,
                                   maximum=arg.maximum))
    return out


#: Every ``Config`` field, in Betty's order, then mlodsl's extensions. ``step`` is accepted as
#: an alias of ``unroll_steps`` (the seed's spelling): :data:`SETTING_ALIASES`.
CONFIG_SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("type", str, "darts", "edge", choices=tuple(METHODS),
            doc="hypergradient method of the edges between this problem and its lowers/uppers"),
    Setting("unroll_steps", int, 1, "edge", minimum=1,
            doc="the lower's steps per step of the upper (the edge's `every`)"),
    Setting("first_order", bool, True, "edge",
            doc="unroll: drop second-order terms through the unrolled steps"),
    Setting("retain_graph", bool, False, doc="accepted for Betty; mlodsl keeps what it needs"),
    Setting("allow_unused", bool, True, doc="accepted for Betty; unused gradients are zero"),
    Setting("gradient_accumulation", int, 1, minimum=1, field="grad_accum",
            doc="Betty's: one batch per step, an update every k-th step (the field "
            "grad_accum instead takes k batches in one step)"),
    Setting("gradient_clipping", float, 0.0, minimum=0.0, field="grad_clip",
            doc="max gradient norm (0: no clipping)"),
    Setting("precision", str, "fp32", choices=("fp32", "fp16", "bf16"),
            doc="the problem's autocast precision"),
    Setting("initial_dynamic_scale", float, 4096.0, minimum=0.0, doc="fp16 loss scale at start"),
    Setting("scale_factor", float, 2.0, minimum=1.0, doc="fp16 loss-scale growth factor"),
    Setting("warmup_steps", int, 0, "edge", minimum=0,
            doc="the lower's first steps that do not count towards the upper's quota"),
    Setting("log_step", int, -1, field="log_every", doc="log every N steps (-1: never)"),
    Setting("log_local_step", bool, False, doc="accepted for Betty (log by local step)"),
    *[s for s in _method_knobs() if s.name in ("darts_alpha",)],
    Setting("darts_multitask", bool, False, doc="accepted for Betty"),
    *[s for s in _method_knobs() if s.name in ("sama_adam_alpha",)],
    Setting("sama_multitask", bool, False, doc="accepted for Betty"),
    *[s for s in _method_knobs() if s.name in ("neumann_iterations", "neumann_alpha",
                                               "cg_iterations", "cg_alpha")],
    # mlodsl extensions
    Setting("cg_tol", float, 0.0, "method", minimum=0.0, doc="cg(): relative residual tolerance"),
    Setting("unroll_checkpoint", bool, False, "method",
            doc="unroll(): recompute the unrolled steps in backward"),
    Setting("reinforce_baseline_decay", float, 0.9, "method", minimum=0.0, maximum=1.0,
            doc="reinforce(): decay of the reward baseline"),
]}

#: Other spellings of settings: the seed's ``step`` for ``unroll_steps``.
SETTING_ALIASES: dict[str, str] = {"step": "unroll_steps"}

#: The ``Config`` fields that are method arguments without Betty's ``<method>_`` prefix.
EXTRA_METHOD_FIELDS: dict[str, dict[str, str]] = {
    "cg": {"tol": "cg_tol"}, "unroll": {"checkpoint": "unroll_checkpoint"},
    "reinforce": {"baseline_decay": "reinforce_baseline_decay"}}


def method_field(method: str, argument: str) -> str | None:
    """The ``Config`` field that sets ``method``'s ``argument`` (None when there is none)."""
    arg = METHODS[method].argument(argument)
    if arg is not None and arg.config_field:
        return arg.config_field
    return EXTRA_METHOD_FIELDS.get(method, {}).get(argument)
