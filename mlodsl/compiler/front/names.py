"""The built-in names of ``.mlo`` expressions (LANGUAGE.md section 8), as static lists.

The names of ``torch.optim`` and ``torch.optim.lr_scheduler`` are spelled out here rather
than read from torch, because the checker must not import torch. The resolver maps each
name to its object; a name listed here that some torch version lacks fails there, with a
diagnostic, not here.
"""
from __future__ import annotations

from mlodsl.methods import METHODS

__all__ = ["OPTIMIZERS", "SCHEDULERS", "HELPERS", "PYTHON_BUILTINS", "BUILTINS"]

OPTIMIZERS = frozenset({
    "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adafactor", "Adagrad", "Adamax", "ASGD",
    "LBFGS", "NAdam", "RAdam", "Rprop", "SparseAdam",
})

SCHEDULERS = frozenset({
    "LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR",
    "LinearLR", "ExponentialLR", "SequentialLR", "CosineAnnealingLR", "ChainedScheduler",
    "ReduceLROnPlateau", "CyclicLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
    "PolynomialLR",
})

#: The built-in ``after_step`` helpers.
HELPERS = frozenset({"clamp_min", "clamp"})

#: Python built-ins that are handy in expressions (and harmless: no eval, no I/O).
PYTHON_BUILTINS = frozenset({
    "len", "min", "max", "abs", "sum", "range", "float", "int", "dict", "list", "tuple",
    "round", "bool", "str",
})

BUILTINS = frozenset(OPTIMIZERS | SCHEDULERS | HELPERS | PYTHON_BUILTINS | set(METHODS))
