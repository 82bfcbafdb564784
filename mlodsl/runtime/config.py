"""Per-problem ``Config`` and program-wide ``EngineConfig``, under Betty 0.2.1's names.

Every field of Betty 0.2.1's two configuration dataclasses is accepted with the same name and
default, so a Betty program ports by changing its imports. Differences, on purpose:

* **Who chooses the method.** Following the seed, the *upper* problem's ``type`` and
  ``unroll_steps`` choose the hypergradient method and the unroll length for the edges to its
  lowers. Betty 0.2.1 reads them from the *lower*. Both spellings work: a field set explicitly on
  the upper wins; otherwise one set explicitly on the lower is used; otherwise the default.
  The same rule applies to the method knobs (``darts_alpha``, ``neumann_iterations``, ...).
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
from mlodsl.methods import METHODS, MULTILEVEL_MODES

__all__ = ["Config", "EngineConfig"]


def _reject_unknown(cls_name: str, known: list[str], given: dict) -> None:
    for key in given:
        if key not in known:
            raise MLOError(f"{cls_name}() got an unknown field '{key}'",
                           hint=did_you_mean(key, known))


@dataclass(init=False)
class Config:
    """Training configuration of one problem (Betty 0.2.1's fields and defaults)."""

    type: str = "darts"
    unroll_steps: int = 1
    first_order: bool = True
    retain_graph: bool = False
    allow_unused: bool = True
    gradient_accumulation: int = 1
    gradient_clipping: float = 0.0
    precision: str = "fp32"
    initial_dynamic_scale: float = 4096.0
    scale_factor: float = 2.0
    warmup_steps: int = 0
    log_step: int = -1
    log_local_step: bool = False
    darts_alpha: float = 0.01
    darts_multitask: bool = False
    sama_adam_alpha: float = 1.0
    sama_multitask: bool = False
    neumann_iterations: int = 1
    neumann_alpha: float = 1.0
    cg_iterations: int = 1
    cg_alpha: float = 1.0
    # mlodsl extensions
    cg_tol: float = 0.0
    unroll_checkpoint: bool = False
    reinforce_baseline_decay: float = 0.9
    multilevel: str = "frozen"  # "exact": a middle level's Jacobian from its total objective
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any):
        if "step" in kwargs:
            if "unroll_steps" in kwargs and kwargs["unroll_steps"] != kwargs["step"]:
                raise MLOError("Config(): 'step' and 'unroll_steps' are the same field; "
                               "give one of them")
            kwargs["unroll_steps"] = kwargs.pop("step")
        names = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")]
        _reject_unknown("Config", names, kwargs)
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            setattr(self, f.name, kwargs.get(f.name, f.default))
        self._explicit = frozenset(kwargs)
        self._validate()

    def _validate(self) -> None:
        if self.type not in METHODS:
            raise MLOError(f"Config(type={self.type!r}): unknown hypergradient method",
                           hint=did_you_mean(self.type, METHODS) or
                           "known methods: " + ", ".join(METHODS))
        for name in ("unroll_steps", "gradient_accumulation"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise MLOError(f"Config({name}={value!r}) must be an integer >= 1")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise MLOError(f"Config(precision={self.precision!r}) must be 'fp32', 'fp16' or 'bf16'")
        if self.multilevel not in MULTILEVEL_MODES:
            raise MLOError(f"Config(multilevel={self.multilevel!r}) must be one of "
                           + ", ".join(repr(m) for m in MULTILEVEL_MODES),
                           hint=did_you_mean(str(self.multilevel), MULTILEVEL_MODES))

    @property
    def step(self) -> int:
        """The seed's name for :attr:`unroll_steps`."""
        return self.unroll_steps

    def explicitly_set(self, name: str) -> bool:
        """Whether ``name`` was passed to the constructor (rather than left at its default)."""
        return name in self._explicit or (name == "unroll_steps" and "step" in self._explicit)

    def method_arguments(self, method: str) -> dict[str, Any]:
        """The keyword arguments of ``method`` as this config sets them (defaults included)."""
        extra = {"cg": {"tol": "cg_tol"}, "unroll": {"checkpoint": "unroll_checkpoint"},
                 "reinforce": {"baseline_decay": "reinforce_baseline_decay"}}.get(method, {})
        out = {}
        for arg in METHODS[method].arguments:
            source = arg.config_field or extra.get(arg.name)
            if source is not None:
                out[arg.name] = getattr(self, source)
        return METHODS[method].bind(out)


@dataclass(init=False)
class EngineConfig:
    """Configuration of the whole run (Betty 0.2.1's fields and defaults, plus a few of ours).

    Ours: ``seed`` (seeds torch, random and numpy before the run), ``log_step`` (engine-level
    console logging period), ``checkpoint_every``/``checkpoint_dir``/``checkpoint_keep``,
    ``resume_from`` (a checkpoint folder to continue from; a fresh start when it holds none),
    ``on_nan`` (``"stop"`` or ``"skip"``), ``progress`` (a progress bar on a terminal, plain
    lines elsewhere), ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``: the default of every
    problem whose ``Config`` does not set one), ``compile`` (compiled programs: their loss
    graphs' first-order evaluations go through ``torch.compile``), ``device`` and ``run_dir`` (a folder that
    receives ``metrics.jsonl`` and ``metrics.csv``). ``strategy`` ``"distributed"`` (or
    ``"ddp"``) trains data-parallel on ``torch.distributed``; ``"default"`` does so too when
    launched by torchrun with ``WORLD_SIZE > 1``.
    """

    train_iters: int = 50000
    valid_step: int = 500
    logger_type: str = "none"
    roll_back: bool = False
    backend: str = "nccl"
    strategy: str = "default"
    early_stopping: bool = False
    early_stopping_mode: str = "min"
    early_stopping_tolerance: int = 5
    early_stopping_metric: str = "loss"
    # mlodsl extensions
    seed: int | None = None
    log_step: int = 0
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    checkpoint_keep: int = 3
    on_nan: str = "stop"
    progress: bool = False
    precision: str = "fp32"
    device: str | None = None
    compile: bool = False
    resume_from: str | None = None
    run_dir: str | None = None
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any):
        names = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")]
        _reject_unknown("EngineConfig", names, kwargs)
        for f in dataclasses.fields(self):
            if not f.name.startswith("_"):
                setattr(self, f.name, kwargs.get(f.name, f.default))
        self._explicit = frozenset(kwargs)
        if not isinstance(self.train_iters, int) or self.train_iters < 0:
            raise MLOError(f"EngineConfig(train_iters={self.train_iters!r}) must be an integer >= 0")
        if self.early_stopping_mode not in ("min", "max"):
            raise MLOError("EngineConfig(early_stopping_mode=...) must be 'min' or 'max'")
        if self.on_nan not in ("stop", "skip"):
            raise MLOError("EngineConfig(on_nan=...) must be 'stop' or 'skip'")
        if not isinstance(self.compile, bool):
            raise MLOError(f"EngineConfig(compile={self.compile!r}) must be True or False")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise MLOError(f"EngineConfig(precision={self.precision!r}) must be 'fp32', 'fp16' "
                           "or 'bf16'")
        if self.strategy not in ("default", "distributed", "ddp", "zero", "fsdp"):
            raise MLOError(f"EngineConfig(strategy={self.strategy!r}) must be 'default', "
                           "'distributed' or 'ddp'")
        for name in ("checkpoint_every", "checkpoint_keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise MLOError(f"EngineConfig({name}={value!r}) must be an integer >= 0")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise MLOError("EngineConfig(checkpoint_every=...) needs checkpoint_dir=...")
