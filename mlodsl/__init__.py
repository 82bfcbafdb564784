"""mlodsl: a language, compiler and runtime for multilevel optimization in PyTorch.

The public surface::

    import mlodsl
    plan = mlodsl.compile("examples/hpo/hpo.mlo")        # the .mlo route
    history = plan.run(iterations=200)
    run = mlodsl.load_run("runs/hpo")                    # a run folder's trained modules

    from mlodsl import ImplicitProblem, Config, EngineConfig, Engine   # the Python route

Importing ``mlodsl`` does not import torch; the runtime names are loaded on first use, so
``mlodsl check`` stays fast.
"""
from __future__ import annotations

import importlib

from mlodsl.diagnostics import Diagnostic, MLOError, MLOWarning

__version__ = "0.1.0"

_LAZY = {
    "compile": ("mlodsl.compiler.api", "compile"),
    "load_run": ("mlodsl.results", "load_run"),
    "ExecutionPlan": ("mlodsl.compiler.back.plan", "ExecutionPlan"),
    "Problem": ("mlodsl.runtime.problem", "Problem"),
    "ImplicitProblem": ("mlodsl.runtime.problem", "ImplicitProblem"),
    "IterativeProblem": ("mlodsl.runtime.problem", "IterativeProblem"),
    "HigherIterativeProblem": ("mlodsl.runtime.problem", "HigherIterativeProblem"),
    "Env": ("mlodsl.envs", "Env"),
    "Config": ("mlodsl.runtime.config", "Config"),
    "EngineConfig": ("mlodsl.runtime.config", "EngineConfig"),
    "Engine": ("mlodsl.runtime.engine", "Engine"),
}

__all__ = ["Diagnostic", "MLOError", "MLOWarning", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlodsl' has no attribute {name!r}")
