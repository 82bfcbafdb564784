"""The fields of ``problem`` and ``engine`` blocks (LANGUAGE.md sections 5 and 6), in one place.

The checker reads these tables for required and unknown fields and for the static checks
of literal values; the back end may extend them (add a :class:`FieldSpec` and it is known
everywhere).

``kind`` says what the checker verifies when the value is a literal (or a ``let`` bound to
one); anything else is left to the back end:

* ``"expr"``: any expression;
* ``"positive_int"``: an integer >= 1;  ``"nonneg_int"``: an integer >= 0;
* ``"positive_number"``: an int or float > 0;
* ``"method"``: a hypergradient method call, validated against :data:`mlodsl.methods.METHODS`;
* ``"choice"``: a string from ``choices`` (``pattern``, a regular expression, may widen it);
* ``"bool"``: ``True`` or ``False``.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FieldSpec", "PROBLEM_FIELDS", "ENGINE_FIELDS", "required_fields"]


@dataclass(frozen=True)
class FieldSpec:
    """One field of a block: its name, whether it is required, a short doc, its check."""

    name: str
    required: bool
    doc: str
    kind: str = "expr"
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    params: bool = False  # whether `name(a, b) = expr` is allowed (only `loss`)
    extension: bool = False  # not in LANGUAGE.md; documented in docs/language.md


def _table(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {s.name: s for s in specs}


PROBLEM_FIELDS: dict[str, FieldSpec] = _table(
    FieldSpec("module", True, "expression giving a torch.nn.Module; its parameters are trained"),
    FieldSpec("optimizer", True, "SGD(...), Adam(...), any torch.optim class with keyword "
              "arguments, or an imported callable taking the parameters"),
    FieldSpec("data", True, "a Dataset (batched by the runtime) or an iterable of batches"),
    FieldSpec("batch_size", False, "batch size for a Dataset", kind="positive_int"),
    FieldSpec("loss", True, "loss(a, b, ...) = expr over the batch, or loss = f, a callable "
              "called as f(problems, batch)", params=True),
    FieldSpec("hypergrad", False, "default hypergradient method of this problem's depends "
              "edges", kind="method"),
    FieldSpec("after_step", False, "callable applied to the parameters after each step"),
    FieldSpec("scheduler", False, "a torch.optim.lr_scheduler class with keyword arguments"),
    FieldSpec("grad_clip", False, "max gradient norm", kind="positive_number"),
    FieldSpec("grad_accum", False, "batches whose gradients are accumulated per step",
              kind="positive_int"),
    FieldSpec("level", False, "asserted level; must equal the computed one", kind="nonneg_int"),
    FieldSpec("log_every", False, "log this problem's loss every N of its steps",
              kind="positive_int"),
)

ENGINE_FIELDS: dict[str, FieldSpec] = _table(
    FieldSpec("iterations", True, "number of engine iterations", kind="positive_int"),
    FieldSpec("validate", False, "expression evaluated every validate_every iterations"),
    FieldSpec("validate_every", False, "iterations between validations", kind="positive_int"),
    FieldSpec("log_every", False, "iterations between log lines", kind="positive_int"),
    FieldSpec("seed", False, "random seed", kind="nonneg_int"),
    FieldSpec("device", False, '"auto", "cpu", "cuda", "cuda:N"', kind="choice",
              choices=("auto", "cpu", "cuda", "mps"), pattern=r"(cuda|mps|xpu):[0-9]+"),
    FieldSpec("precision", False, '"fp32", "bf16" or "fp16"', kind="choice",
              choices=("fp32", "bf16", "fp16")),
    FieldSpec("hypergrad", False, "program-wide default hypergradient method", kind="method"),
    FieldSpec("checkpoint_every", False, "iterations between checkpoints", kind="positive_int"),
    FieldSpec("early_stop", False, "early-stopping rule on the validation metric"),
    FieldSpec("checkpoint_keep", False, "number of newest checkpoints kept, 0 for all (plus "
              "the best one when validating)", kind="nonneg_int", extension=True),
    FieldSpec("timeout", False, "seconds a distributed rank waits for the others (default 600)",
              kind="positive_number", extension=True),
    FieldSpec("on_nan", False, "reserved for the runtime: 'stop' or 'skip' on a NaN loss",
              kind="choice", choices=("stop", "skip"), extension=True),
    FieldSpec("compile", False, "True: run the loss graphs' first-order evaluations through "
              "torch.compile", kind="bool", extension=True),
)


def required_fields(table: dict[str, FieldSpec]) -> list[str]:
    """The names of a table's required fields, in table order."""
    return [s.name for s in table.values() if s.required]
