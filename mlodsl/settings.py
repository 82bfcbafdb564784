"""Every setting of mlodsl, its rule and its default, in one torch-free table.

Four tables, one per place a user sets something:

* :data:`PROBLEM_FIELDS` - the fields of a ``.mlo`` ``problem`` block (LANGUAGE.md section 5);
* :data:`ENGINE_FIELDS` - the fields of the ``.mlo`` ``engine`` block (section 6);
* :data:`CONFIG_SETTINGS` - :class:`~mlodsl.runtime.config.Config`, per problem (Betty's
  names and defaults);
* :data:`ENGINE_CONFIG_SETTINGS` - :class:`~mlodsl.runtime.config.EngineConfig`.

Each :class:`Setting` names a :class:`Rule`: the values it accepts and the one phrase that
says so. The checker applies the rule to literal values (``mlodsl check``), lowering to the
values a program computes, and ``Config``/``EngineConfig`` to their arguments; all three say
``WHERE must be PHRASE, got VALUE`` (:meth:`Rule.message`), so one mistake reads the same
wherever it is caught. A setting whose rule is None takes any value (an expression the back
end evaluates, or a Betty field that Betty does not check either).

Like :mod:`mlodsl.methods`, this module imports neither torch nor the compiler: the runtime
and the checker both read it.

Example::

    >>> ENGINE_FIELDS["iterations"].rule.message("'iterations' of the engine", 0)
    "'iterations' of the engine must be a positive integer, got 0"
    >>> CONFIG_SETTINGS["darts_alpha"].default
    0.01
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mlodsl.diagnostics import did_you_mean
from mlodsl.methods import METHODS, MULTILEVEL_MODES

__all__ = ["Rule", "Setting", "SettingError", "PROBLEM_FIELDS", "ENGINE_FIELDS",
           "CONFIG_SETTINGS", "ENGINE_CONFIG_SETTINGS", "EARLY_STOP_KEYS", "required_fields",
           "choice", "CONFIG_ROLES", "CONFIG_FIELD_TWINS", "CONFIG_ALIASES",
           "POSITIVE_INT", "NONNEG_NUMBER", "INT", "UNIT_INTERVAL", "NONNEG_INT", "POSITIVE_NUMBER", "BOOL", "STRING", "PRECISION",
           "ON_NAN", "EARLY_STOP_MODE", "MULTILEVEL", "METHOD_NAME"]


class SettingError(ValueError):
    """A value that breaks its setting's rule; ``str()`` is the message, ``hint`` a hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Rule:
    """The values a setting accepts: one test and the one phrase that says it.

    ``hint`` (optional) suggests a fix for a rejected value (a close choice); ``template``
    is the rule's message, with ``{where}``, ``{phrase}`` and ``{value}`` (the value's repr).
    """

    phrase: str
    test: Callable[[Any], bool]
    hint: Callable[[Any], str | None] | None = None
    template: str = "{where} must be {phrase}, got {value}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` follows the rule."""
        return self.test(value)

    def message(self, where: str, value: Any) -> str:
        """``WHERE must be PHRASE, got VALUE``: the one message of this rule."""
        return self.template.format(where=where, phrase=self.phrase, value=repr(value))

    def hint_for(self, value: Any) -> str | None:
        """A hint for a rejected ``value`` (a close choice), or None."""
        return self.hint(value) if self.hint is not None else None

    def check(self, value: Any, where: str) -> Any:
        """``value`` when the rule accepts it; else :class:`SettingError` with the message."""
        if not self.accepts(value):
            raise SettingError(self.message(where, value), self.hint_for(value))
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v >= 1)
NONNEG_INT = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE_NUMBER = Rule("a number > 0", lambda v: _is_number(v) and v > 0)
NONNEG_NUMBER = Rule("a number >= 0", lambda v: _is_number(v) and v >= 0)
INT = Rule("an integer", _is_int)
UNIT_INTERVAL = Rule("a number from 0 to 1", lambda v: _is_number(v) and 0 <= v <= 1)
BOOL = Rule("True or False", lambda v: isinstance(v, bool))
STRING = Rule("a string", lambda v: isinstance(v, str))


def choice(*choices: str, pattern: str | None = None) -> Rule:
    """One of ``choices`` (or a string matching the regular expression ``pattern``)."""
    def test(v: Any) -> bool:
        return isinstance(v, str) and (
            v in choices or (pattern is not None and re.fullmatch(pattern, v) is not None))

    def hint(v: Any) -> str | None:
        return did_you_mean(v, choices) if isinstance(v, str) else None

    return Rule("one of " + ", ".join(f'"{c}"' for c in choices), test, hint)


PRECISION = choice("fp32", "bf16", "fp16")
ON_NAN = choice("stop", "skip")
EARLY_STOP_MODE = choice("min", "max")
MULTILEVEL = choice(*MULTILEVEL_MODES)
METHOD_NAME = Rule("a hypergradient method", lambda v: isinstance(v, str) and v in METHODS,
                   lambda v: (did_you_mean(v, METHODS) if isinstance(v, str) else None)
                   or "known methods: " + ", ".join(METHODS),
                   template="{where}: unknown hypergradient method {value}")


@dataclass(frozen=True)
class Setting:
    """One setting: its name, rule, default and a one-line doc.

    ``.mlo`` fields also say whether they are ``required``, whether they may name the batch
    (``params``: only ``loss(a, b) = ...``) and whether their value is a hypergradient
    method call (``method``: checked against :data:`mlodsl.methods.METHODS`).
    """

    name: str
    doc: str
    rule: Rule | None = None
    default: Any = None
    required: bool = False
    params: bool = False
    method: bool = False

    def check(self, value: Any, where: str) -> Any:
        """``value`` when it follows the rule (any value when there is none); else
        :class:`SettingError`."""
        return value if self.rule is None else self.rule.check(value, where)


def _table(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def required_fields(table: Mapping[str, Setting]) -> list[str]:
    """The names of a table's required fields, in table order."""
    return [s.name for s in table.values() if s.required]


# ----------------------------------------------------------------------------- .mlo blocks

PROBLEM_FIELDS: dict[str, Setting] = _table(
    Setting("module", "expression giving a torch.nn.Module; its parameters are trained",
            required=True),
    Setting("optimizer", "SGD(...), Adam(...), any torch.optim class with keyword arguments, "
            "or an imported callable taking the parameters", required=True),
    Setting("data", "a Dataset (batched by the runtime) or an iterable of batches",
            required=True),
    Setting("batch_size", "batch size for a Dataset", POSITIVE_INT),
    Setting("loss", "loss(a, b, ...) = expr over the batch, or loss = f, a callable called as "
            "f(problems, batch)", required=True, params=True),
    Setting("hypergrad", "default hypergradient method of this problem's depends edges",
            method=True),
    Setting("after_step", "callable applied to the parameters after each step"),
    Setting("scheduler", "a torch.optim.lr_scheduler class with keyword arguments"),
    Setting("grad_clip", "max gradient norm", POSITIVE_NUMBER),
    Setting("grad_accum", "batches whose gradients are accumulated per step", POSITIVE_INT),
    Setting("level", "asserted level; must equal the computed one", NONNEG_INT),
    Setting("log_every", "log this problem's loss every N of its steps", POSITIVE_INT),
)

ENGINE_FIELDS: dict[str, Setting] = _table(
    Setting("iterations", "number of engine iterations", POSITIVE_INT, required=True),
    Setting("validate", "expression evaluated every validate_every iterations"),
    Setting("validate_every", "iterations between validations", POSITIVE_INT),
    Setting("log_every", "iterations between log lines", POSITIVE_INT),
    Setting("seed", "random seed", NONNEG_INT),
    Setting("device", '"auto", "cpu", "cuda", "cuda:N"',
            choice("auto", "cpu", "cuda", "mps", pattern=r"(cuda|mps|xpu):[0-9]+")),
    Setting("precision", '"fp32", "bf16" or "fp16"', PRECISION),
    Setting("hypergrad", "program-wide default hypergradient method", method=True),
    Setting("checkpoint_every", "iterations between checkpoints", POSITIVE_INT),
    Setting("early_stop", "early-stopping rule on the validation metric"),
    # extensions (not in LANGUAGE.md; documented in docs/language.md)
    Setting("checkpoint_keep", "number of newest checkpoints kept, 0 for all (plus the best "
            "one when validating)", NONNEG_INT),
    Setting("on_nan", "'stop' or 'skip' on a NaN loss", ON_NAN),
    Setting("timeout", "seconds a distributed rank waits for the others (default 600)",
            POSITIVE_NUMBER),
    Setting("compile", "True: run the loss graphs' first-order evaluations through "
            "torch.compile", BOOL),
)

#: The keys of ``early_stop = dict(...)`` and the EngineConfig settings they set.
EARLY_STOP_KEYS: dict[str, Setting] = _table(
    Setting("metric", "the validation metric watched", STRING),
    Setting("mode", '"min" or "max": whether smaller or larger is better', EARLY_STOP_MODE,
            default="min"),
    Setting("patience", "validations without improvement before stopping", POSITIVE_INT,
            default=5),
)


# ----------------------------------------------------------------------------- the runtime

CONFIG_SETTINGS: dict[str, Setting] = _table(
    Setting("type", "hypergradient method of the edges between this problem and its "
            "lowers/uppers", METHOD_NAME, "darts"),
    Setting("unroll_steps", "lower steps per upper step ('step' is an alias)", POSITIVE_INT, 1),
    Setting("first_order", "unroll: drop second-order terms", BOOL, True),
    Setting("retain_graph", "keep the graph after backward", None, False),
    Setting("allow_unused", "parameters the loss does not use get no gradient", None, True),
    Setting("gradient_accumulation", "Betty's: one batch per step, an update every k-th step",
            POSITIVE_INT, 1),
    Setting("gradient_clipping", "max gradient norm (0: no clipping)", NONNEG_NUMBER, 0.0),
    Setting("precision", "this problem's autocast precision", PRECISION, "fp32"),
    Setting("initial_dynamic_scale", "fp16: the loss scale to start from", POSITIVE_NUMBER,
            4096.0),
    Setting("scale_factor", "fp16: how the loss scale grows and shrinks", POSITIVE_NUMBER, 2.0),
    Setting("warmup_steps", "steps before the upper problems start", NONNEG_INT, 0),
    Setting("log_step", "log every N steps (-1: never)", INT, -1),
    Setting("log_local_step", "log the problem's own step count", None, False),
    Setting("darts_alpha", "darts: finite-difference radius", POSITIVE_NUMBER, 0.01),
    Setting("darts_multitask", "Betty's multitask darts (accepted, unused)", None, False),
    Setting("sama_adam_alpha", "sama: finite-difference radius", POSITIVE_NUMBER, 1.0),
    Setting("sama_multitask", "Betty's multitask sama (accepted, unused)", None, False),
    Setting("neumann_iterations", "neumann: terms of the series", POSITIVE_INT, 1),
    Setting("neumann_alpha", "neumann: step of the series", POSITIVE_NUMBER, 1.0),
    Setting("cg_iterations", "cg: iterations", POSITIVE_INT, 1),
    Setting("cg_alpha", "cg: scale of the linear system", POSITIVE_NUMBER, 1.0),
    # mlodsl extensions
    Setting("cg_tol", "cg: relative residual to stop at (0: never)", NONNEG_NUMBER, 0.0),
    Setting("unroll_checkpoint", "unroll: recompute the steps in backward", BOOL, False),
    Setting("reinforce_baseline_decay", "reinforce: decay of the reward baseline",
            UNIT_INTERVAL, 0.9),
    Setting("multilevel", 'a middle level\'s Jacobian: "frozen" (its own loss) or "exact" '
            "(its total objective, the levels below responding)", MULTILEVEL, "frozen"),
)

#: What each ``Config`` setting governs, for the ``.mlo`` header ``problem P <key=value>``:
#: ``"edge"`` (the method, ``every``, warm-up or ``first_order`` of the edges between the
#: problem and its lowers and uppers), ``"method"`` (an argument of one method) or ``"step"``
#: (the problem's own steps).
CONFIG_ROLES: dict[str, str] = {
    **{name: "step" for name in CONFIG_SETTINGS},
    **{name: "edge" for name in ("type", "unroll_steps", "first_order", "warmup_steps")},
    **{arg.config_field: "method" for m in METHODS.values() for arg in m.arguments
       if arg.config_field and arg.config_field != "first_order"},
    **{name: "method" for name in ("cg_tol", "unroll_checkpoint", "reinforce_baseline_decay")},
}

#: ``Config`` settings and the ``.mlo`` problem field with the same job (a header giving both
#: is checked for agreement).
CONFIG_FIELD_TWINS: dict[str, str] = {"gradient_clipping": "grad_clip",
                                      "gradient_accumulation": "grad_accum",
                                      "log_step": "log_every"}

#: Other spellings of ``Config`` settings: the seed's ``step`` for ``unroll_steps``.
CONFIG_ALIASES: dict[str, str] = {"step": "unroll_steps"}

ENGINE_CONFIG_SETTINGS: dict[str, Setting] = _table(
    Setting("train_iters", "engine iterations", NONNEG_INT, 50000),
    Setting("valid_step", "iterations between validations (0: never)", None, 500),
    Setting("logger_type", "Betty's logger (accepted; mlodsl writes its own logs)", None,
            "none"),
    Setting("roll_back", "Betty's roll back (accepted, unused)", None, False),
    Setting("backend", "torch.distributed backend", None, "nccl"),
    Setting("strategy", '"default", "distributed" or "ddp"',
            choice("default", "distributed", "ddp", "zero", "fsdp"), "default"),
    Setting("early_stopping", "stop when the validation metric stops improving", None, False),
    Setting("early_stopping_mode", "whether a smaller or a larger metric is better",
            EARLY_STOP_MODE, "min"),
    Setting("early_stopping_tolerance", "validations without improvement", None, 5),
    Setting("early_stopping_metric", "the validation metric watched", None, "loss"),
    # mlodsl extensions
    Setting("seed", "seeds torch, random and numpy before the run (None: no seeding)"),
    Setting("log_step", "iterations between console log lines (0: none)", None, 0),
    Setting("checkpoint_every", "iterations between checkpoints (0: none)", NONNEG_INT, 0),
    Setting("checkpoint_dir", "folder of the checkpoints (None: run_dir/checkpoints)"),
    Setting("checkpoint_keep", "newest checkpoints kept, 0 for all (plus the best one when "
            "validating)", NONNEG_INT, 3),
    Setting("on_nan", "what a NaN loss does", ON_NAN, "stop"),
    Setting("progress", "a progress bar on a terminal, plain lines elsewhere", None, False),
    Setting("precision", "the default precision of every problem", PRECISION, "fp32"),
    Setting("device", "where the run happens (None: the problems' own devices)"),
    Setting("compile", "loss graphs' first-order evaluations through torch.compile", BOOL,
            False),
    Setting("resume_from", "a checkpoint folder to continue from"),
    Setting("run_dir", "a folder that receives metrics.jsonl and metrics.csv"),
    Setting("timeout", "seconds a distributed rank waits for the others", POSITIVE_NUMBER,
            600.0),
)
