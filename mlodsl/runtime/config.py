"""Per-problem ``Config`` and program-wide ``EngineConfig``, under Betty 0.2.1's names.

Every field of Betty 0.2.1's two configuration dataclasses is accepted with the same name and
default, so a Betty program ports by changing its imports. Differences, on purpose:

* **Who chooses the method.** An edge (upper over lower) takes its ``type``, ``unroll_steps``,
  ``warmup_steps`` and method knobs (``darts_alpha``, ``neumann_iterations``, ...) from the
  *lower*'s ``Config`` when the lower sets them explicitly (Betty's rule), else from the
  *upper*'s when it does (the seed's ``hpo_config = Config(type="darts", step=1)``), else the
  defaults. ``first_order`` is read the other way round, upper first, as Betty reads it from
  the parents. When both set a field to different values a :class:`ConfigConflictWarning`
  names both (:func:`edge_settings`).
* ``step`` is accepted as an alias of ``unroll_steps`` (the seed's older spelling).
* ``first_order`` defaults to True as in Betty; it only matters for ``unroll``, where False
  keeps second-order terms through the unrolled optimizer steps.

Example::

    >>> c = Config(type="darts", step=1, log_step=10, retain_graph=True)
    >>> c.unroll_steps, c.explicitly_set("type"), c.explicitly_set("darts_alpha")
    (1, True, False)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mlodsl.diagnostics import MLOError, did_you_mean
from mlodsl.methods import METHODS, method_field, without_default_mode
from mlodsl.settings import CONFIG_SETTINGS, ENGINE_CONFIG_SETTINGS, Setting, SettingError

__all__ = ["Config", "EngineConfig", "EdgeSettings", "edge_settings", "ConfigConflictWarning"]

# Names, defaults and rules of both classes are in mlodsl.settings; the fields below name
# their table entries so that each default is written once.
_C, _E = CONFIG_SETTINGS, ENGINE_CONFIG_SETTINGS


def _reject_unknown(cls_name: str, table: dict[str, Setting], given: dict) -> None:
    for key in given:
        if key not in table:
            raise MLOError(f"{cls_name}() got an unknown field '{key}'",
                           hint=did_you_mean(key, table))


def _validate(cls_name: str, table: dict[str, Setting], config: Any) -> None:
    """Each setting of ``config`` against its rule in ``table`` (the one message per rule)."""
    for s in table.values():
        try:
            s.check(getattr(config, s.name), f"{cls_name}({s.name}=...)")
        except SettingError as err:
            raise MLOError(str(err), hint=err.hint) from None


@dataclass(init=False)
class Config:
    """Training configuration of one problem (Betty 0.2.1's fields and defaults)."""

    type: str = _C["type"].default
    unroll_steps: int = _C["unroll_steps"].default
    first_order: bool = _C["first_order"].default
    retain_graph: bool = _C["retain_graph"].default
    allow_unused: bool = _C["allow_unused"].default
    gradient_accumulation: int = _C["gradient_accumulation"].default
    gradient_clipping: float = _C["gradient_clipping"].default
    precision: str = _C["precision"].default
    initial_dynamic_scale: float = _C["initial_dynamic_scale"].default
    scale_factor: float = _C["scale_factor"].default
    warmup_steps: int = _C["warmup_steps"].default
    log_step: int = _C["log_step"].default
    log_local_step: bool = _C["log_local_step"].default
    darts_alpha: float = _C["darts_alpha"].default
    darts_multitask: bool = _C["darts_multitask"].default
    sama_adam_alpha: float = _C["sama_adam_alpha"].default
    sama_multitask: bool = _C["sama_multitask"].default
    neumann_iterations: int = _C["neumann_iterations"].default
    neumann_alpha: float = _C["neumann_alpha"].default
    cg_iterations: int = _C["cg_iterations"].default
    cg_alpha: float = _C["cg_alpha"].default
    # mlodsl extensions
    cg_tol: float = _C["cg_tol"].default
    unroll_checkpoint: bool = _C["unroll_checkpoint"].default
    reinforce_baseline_decay: float = _C["reinforce_baseline_decay"].default
    multilevel: str = _C["multilevel"].default  # "exact": docs/hypergradients.md
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any):
        if "step" in kwargs:
            if "unroll_steps" in kwargs and kwargs["unroll_steps"] != kwargs["step"]:
                raise MLOError("Config(): 'step' and 'unroll_steps' are the same field; "
                               "give one of them")
            kwargs["unroll_steps"] = kwargs.pop("step")
        _reject_unknown("Config", CONFIG_SETTINGS, kwargs)
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            setattr(self, f.name, kwargs.get(f.name, f.default))
        self._explicit = frozenset(kwargs)
        self._validate()

    def _validate(self) -> None:
        _validate("Config", CONFIG_SETTINGS, self)

    @property
    def step(self) -> int:
        """The seed's name for :attr:`unroll_steps`."""
        return self.unroll_steps

    def explicitly_set(self, name: str) -> bool:
        """Whether ``name`` was passed to the constructor (rather than left at its default)."""
        return name in self._explicit or (name == "unroll_steps" and "step" in self._explicit)

    def clip_norm(self, override: float | None = None) -> float:
        """The gradient-norm clipping threshold (0: none): ``override`` when given, else
        :attr:`gradient_clipping`.

        ``override`` is a problem's ``grad_clip`` (the ``.mlo`` setting); this is the one place
        where the two spellings meet.
        """
        return override if override is not None else self.gradient_clipping

    def accumulation_steps(self, override: int | None = None) -> int:
        """Batches accumulated per step (at least 1): ``override`` (a problem's ``grad_accum``)
        when set, else :attr:`gradient_accumulation`."""
        return max(int(override or self.gradient_accumulation), 1)


@dataclass(init=False)
class EngineConfig:
    """Configuration of the whole run (Betty 0.2.1's fields and defaults, plus a few of ours).

    Ours: ``seed`` (seeds torch, random and numpy before the run), ``log_step`` (engine-level
    console logging period), ``checkpoint_every``/``checkpoint_dir``/``checkpoint_keep`` (``checkpoint_dir``
    defaults to ``run_dir/checkpoints``; ``checkpoint_keep`` counts the newest kept, and the
    best one by ``early_stopping_metric`` is kept too when the run validates),
    ``timeout`` (seconds a distributed rank waits for the others before the run ends with an
    error; 10 minutes by default),
    ``resume_from`` (a checkpoint folder to continue from; a fresh start when it holds none),
    ``on_nan`` (``"stop"`` or ``"skip"``), ``progress`` (a progress bar on a terminal, plain
    lines elsewhere), ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``: the default of every
    problem whose ``Config`` does not set one), ``compile`` (compiled programs: their loss
    graphs' first-order evaluations go through ``torch.compile``), ``device`` and ``run_dir`` (a folder that
    receives ``metrics.jsonl`` and ``metrics.csv``). ``strategy`` ``"distributed"`` (or
    ``"ddp"``) trains data-parallel on ``torch.distributed``; ``"default"`` does so too when
    launched by torchrun with ``WORLD_SIZE > 1``.
    """

    train_iters: int = _E["train_iters"].default
    valid_step: int = _E["valid_step"].default
    logger_type: str = _E["logger_type"].default
    roll_back: bool = _E["roll_back"].default
    backend: str = _E["backend"].default
    strategy: str = _E["strategy"].default
    early_stopping: bool = _E["early_stopping"].default
    early_stopping_mode: str = _E["early_stopping_mode"].default
    early_stopping_tolerance: int = _E["early_stopping_tolerance"].default
    early_stopping_metric: str = _E["early_stopping_metric"].default
    # mlodsl extensions
    seed: int | None = _E["seed"].default
    log_step: int = _E["log_step"].default
    checkpoint_every: int = _E["checkpoint_every"].default
    checkpoint_dir: str | None = _E["checkpoint_dir"].default
    checkpoint_keep: int = _E["checkpoint_keep"].default
    on_nan: str = _E["on_nan"].default
    progress: bool = _E["progress"].default
    precision: str = _E["precision"].default
    device: str | None = _E["device"].default
    compile: bool = _E["compile"].default
    resume_from: str | None = _E["resume_from"].default
    run_dir: str | None = _E["run_dir"].default
    timeout: float = _E["timeout"].default
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any):
        _reject_unknown("EngineConfig", ENGINE_CONFIG_SETTINGS, kwargs)
        for f in dataclasses.fields(self):
            if not f.name.startswith("_"):
                setattr(self, f.name, kwargs.get(f.name, f.default))
        self._explicit = frozenset(kwargs)
        _validate("EngineConfig", ENGINE_CONFIG_SETTINGS, self)
        # checkpoint_every without checkpoint_dir is checked when the run starts: the CLI (and
        # plan.run) name the folder only then, under the run folder.

    def explicitly_set(self, name: str) -> bool:
        """Whether ``name`` was passed to the constructor (rather than left at its default)."""
        return name in self._explicit


# ----------------------------------------------------------------------------- edges from configs

class ConfigConflictWarning(UserWarning):
    """An upper's and a lower's ``Config`` set the same edge setting to different values."""


@dataclass
class EdgeSettings:
    """What two problems' ``Config`` objects say about the edge between them.

    ``sources`` maps each setting that was read (``type``, ``unroll_steps``, ``warmup_steps``,
    ``first_order`` and the chosen method's knobs) to ``"upper"``, ``"lower"`` or
    ``"default"``; ``conflicts`` lists ``(field, upper's value, lower's value)`` for the fields
    both set differently (the value used is the one ``sources`` names).
    """

    method: str
    args: dict[str, Any]
    every: int
    warmup: int
    sources: dict[str, str]
    conflicts: list[tuple[str, Any, Any]]

    def conflict_messages(self, upper: str, lower: str) -> list[str]:
        """One sentence per conflict, naming both values and the one used."""
        out = []
        for name, up, low in self.conflicts:
            used = "lower" if self.sources.get(name) == "lower" else "upper"
            value = low if used == "lower" else up
            why = ("Betty reads it from the upper" if name == "first_order" else
                   "Betty's rule: the lower's explicit setting wins")
            out.append(f"edge {upper} -> {lower}: Config({name}=...) is {up!r} on the upper "
                       f"'{upper}' and {low!r} on the lower '{lower}'; using {value!r} from "
                       f"the {used} ({why})")
        return out


def edge_settings(upper: Config, lower: Config, lower_iterative: bool = False,
                  upper_has_uppers: bool = False) -> EdgeSettings:
    """The method, its arguments, ``every`` and warm-up of the edge ``upper -> lower``.

    The lower's explicitly set fields win, then the upper's, then the defaults (``first_order``:
    the upper's first). ``lower_iterative``: the lower is an ``IterativeProblem``, whose edges
    default to ``unroll`` when neither config names a method. ``upper_has_uppers``: the upper is
    itself a lower, so in Betty's reading its own fields govern the edges above it; an upper
    value overruled here is then in use there, and not reported as a conflict.

    Example::

        >>> e = edge_settings(Config(type="darts", step=2), Config(type="neumann"))
        >>> e.method, e.every, e.sources["type"], e.conflicts
        ('neumann', 2, 'lower', [('type', 'darts', 'neumann')])
    """
    sources: dict[str, str] = {}
    conflicts: list[tuple[str, Any, Any]] = []

    def pick(name: str) -> Any:
        first, second = ((upper, "upper"), (lower, "lower"))
        if name != "first_order":
            first, second = second, first
        up, low = upper.explicitly_set(name), lower.explicitly_set(name)
        overruled_unused = name == "first_order" or not upper_has_uppers
        if up and low and overruled_unused and getattr(upper, name) != getattr(lower, name):
            conflicts.append((name, getattr(upper, name), getattr(lower, name)))
        for cfg, where in (first, second):
            if cfg.explicitly_set(name):
                sources[name] = where
                return getattr(cfg, name)
        sources[name] = "default"
        return getattr(upper, name)

    method = pick("type")
    if lower_iterative and sources["type"] == "default":
        method = "unroll"
    every = pick("unroll_steps")
    warmup = pick("warmup_steps")
    args = {}
    for arg in METHODS[method].arguments:
        name = method_field(method, arg.name)
        if name is not None:
            args[arg.name] = pick(name)
    return EdgeSettings(method, without_default_mode(METHODS[method].bind(args)), every, warmup,
                        sources, conflicts)
