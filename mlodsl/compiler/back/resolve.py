"""Resolution: the ``import`` statements of a program and its built-in names, as Python objects.

Imports resolve with :mod:`importlib`, with these folders in front of ``sys.path`` (while the
program is compiled and while it runs), in this order:

1. the program's own folder (the current directory for a program given as a string);
2. the current directory;
3. the program folder's ancestors, nearest first - so ``from examples.hpo.parts import Net``
   in ``examples/hpo/hpo.mlo`` works from anywhere inside the repository.

A failing import is one diagnostic at the import's position: a module that does not exist, a
name the module lacks, or an exception raised while importing the user's code (its message
and the line of the user's file that raised; never a traceback).

Built-ins (LANGUAGE.md section 8): the optimizer classes of ``torch.optim``, the scheduler
classes of ``torch.optim.lr_scheduler``, the hypergradient methods (a call such as
``darts(alpha=0.1)`` evaluates to a :class:`MethodChoice`), the ``after_step`` helpers
:class:`clamp_min` and :class:`clamp`, and a few harmless Python built-ins.
"""
from __future__ import annotations

import builtins as _py
import contextlib
import importlib
import importlib.machinery
import os
import sys
from typing import Any, Iterator, Mapping

from mlodsl.compiler import ir
from mlodsl.compiler.back.interpret import describe_exception, user_frame
from mlodsl.compiler.front.names import HELPERS, OPTIMIZERS, PYTHON_BUILTINS, SCHEDULERS
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.diagnostics import MLOError, did_you_mean
from mlodsl.methods import METHODS, BadMethodArgument

__all__ = ["search_path", "on_path", "resolve_imports", "builtin_names", "MethodChoice",
           "clamp_min", "clamp", "NAMESPACE_MODULE"]

#: The module name of the synthetic import that puts ``namespace=`` names in scope.
NAMESPACE_MODULE = "<namespace>"


# ----------------------------------------------------------------------------- the search path

def search_path(program_file: str | None) -> list[str]:
    """The folders searched first for a program's imports, in order (see the module doc)."""
    cwd = os.getcwd()
    if program_file and os.path.isfile(program_file):
        folder = os.path.dirname(os.path.abspath(program_file))
    else:
        folder = cwd
    out = [folder, cwd]
    parent = os.path.dirname(folder)
    while parent and parent not in out:
        out.append(parent)
        if os.path.dirname(parent) == parent:
            break
        parent = os.path.dirname(parent)
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def on_path(folders: list[str]) -> Iterator[None]:
    """Put ``folders`` in front of ``sys.path`` for the block (restored afterwards)."""
    saved = list(sys.path)
    sys.path[:0] = [f for f in folders]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved


# ----------------------------------------------------------------------------- imports

def _forget_if_shadowed(name: str) -> None:
    """Drop a cached top-level module that the current search path would now find elsewhere.

    Two programs compiled in one process may each bring their own ``parts.py``: the second
    must see its own file, not the first one's module left in ``sys.modules``.
    """
    top = name.partition(".")[0]
    loaded = sys.modules.get(top)
    origin = getattr(getattr(loaded, "__spec__", None), "origin", None)
    if loaded is None or not origin or not os.path.isabs(origin):
        return
    found = importlib.machinery.PathFinder.find_spec(top, sys.path)
    if found is None or not found.origin or _same_file(found.origin, origin):
        return
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (paths that do not exist are compared as text)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _import_module(name: str, node: Any, sources: SourceMap) -> Any:
    """``importlib.import_module(name)``; any failure is a diagnostic at ``node``."""
    try:
        _forget_if_shadowed(name)
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            parent = missing.rpartition(".")[0]
            hint = _sibling_hint(parent, missing.rpartition(".")[2]) or (
                "imports are searched in the program's folder, the current directory and "
                "the folders above the program")
            raise sources.error(node, f"cannot import '{name}': no module named '{missing}'",
                                hint) from None
        frame = user_frame(err.__traceback__)
        raise sources.error(node, f"importing '{name}' failed: {describe_exception(err)}",
                            f"raised at {frame}" if frame else None) from None
    except MLOError:
        raise
    except BaseException as err:  # user code raising anything at import time (even SystemExit)
        if isinstance(err, KeyboardInterrupt):
            raise
        frame = user_frame(err.__traceback__)
        if isinstance(err, SyntaxError) and err.filename:
            frame = f"{err.filename}:{err.lineno}"
        raise sources.error(node, f"importing '{name}' failed: {describe_exception(err)}",
                            f"raised at {frame}" if frame else None) from None


def _sibling_hint(parent: str, leaf: str) -> str | None:
    """A "did you mean" among the modules of package ``parent`` (top level when empty)."""
    import pkgutil
    try:
        if parent:
            pkg = importlib.import_module(parent)
            names = [m.name for m in pkgutil.iter_modules(getattr(pkg, "__path__", []))]
        else:
            names = [m.name for m in pkgutil.iter_modules()]
    except Exception:  # noqa: BLE001 - a hint is optional
        return None
    return did_you_mean(leaf, names)


def resolve_imports(program: ir.Program, sources: SourceMap,
                    namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The names bound by the program's imports (and by ``namespace``), as Python objects.

    Names in ``namespace`` shadow imports of the same name; an import all of whose names are
    in ``namespace`` is not executed. Raises MLOError with every failing import.
    """
    namespace = dict(namespace or {})
    bound: dict[str, Any] = {}
    errors = []
    for imp in program.imports:
        if imp.module == NAMESPACE_MODULE:
            continue
        names = [name for name, _ in imp.bindings()]
        if names and all(n in namespace for n in names):
            continue
        try:
            bound.update(_resolve_one(imp, sources))
        except MLOError as err:
            errors.extend(err.diagnostics)
    if errors:
        raise MLOError(errors, sources=sources.sources)
    bound.update(namespace)
    return bound


def _resolve_one(imp: ir.Import, sources: SourceMap) -> dict[str, Any]:
    where = _ModuleSpan(imp)
    if not imp.is_from:
        module = _import_module(imp.module, where, sources)
        if imp.asname:
            return {imp.asname: module}
        top = imp.module.split(".")[0]
        return {top: sys.modules[top]}
    module = _import_module(imp.module, where, sources)
    out = {}
    for alias in imp.names:
        if hasattr(module, alias.name):
            out[alias.bound] = getattr(module, alias.name)
            continue
        try:  # ``from pkg import submodule``
            out[alias.bound] = importlib.import_module(f"{imp.module}.{alias.name}")
            continue
        except ModuleNotFoundError as err:
            if err.name != f"{imp.module}.{alias.name}":
                _import_module(f"{imp.module}.{alias.name}", alias, sources)  # reports it
        public = [n for n in dir(module) if not n.startswith("_")]
        raise sources.error(alias, f"cannot import '{alias.name}' from '{imp.module}'",
                            did_you_mean(alias.name, public))
    return out


class _ModuleSpan:
    """Stands for the module name of an import statement in diagnostics."""

    def __init__(self, imp: ir.Import):
        self.span = imp.module_span if imp.module_span != ir.NO_SPAN else imp.span


# ----------------------------------------------------------------------------- built-ins

class MethodChoice:
    """A hypergradient method with its bound arguments, e.g. ``darts(alpha=0.01)``."""

    def __init__(self, name: str, args: Mapping[str, Any], given: Any = None):
        self.name = name
        self.args = dict(args)
        # the arguments the program wrote (the rest are defaults, which lowering may refine)
        self.given = frozenset(self.args if given is None else given)

    def __repr__(self) -> str:
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.args.items()) + ")"


def _method_factory(name: str):
    sig = METHODS[name]

    def make(*args: Any, **kwargs: Any) -> MethodChoice:
        try:
            bound = sig.bind(kwargs, tuple(args))
            positional = [a.name for a in sig.arguments[:len(args)]]
            return MethodChoice(name, bound, given={*kwargs, *positional})
        except BadMethodArgument as err:
            raise ValueError(str(err)) from None

    make.__name__ = name
    make.__doc__ = sig.summary
    return make


class clamp_min:  # noqa: N801 - the language's spelling
    """``after_step = clamp_min(v)``: clamp every parameter to ``>= v`` after each step."""

    def __init__(self, v: float):
        self.v = v

    def __call__(self, params) -> None:
        for p in params:
            p.data.clamp_(min=self.v)

    def __repr__(self) -> str:
        return f"clamp_min({self.v!r})"


class clamp:  # noqa: N801 - the language's spelling
    """``after_step = clamp(lo, hi)``: clamp every parameter into ``[lo, hi]`` after each step."""

    def __init__(self, min: float | None = None, max: float | None = None):  # noqa: A002
        self.min, self.max = min, max

    def __call__(self, params) -> None:
        for p in params:
            p.data.clamp_(min=self.min, max=self.max)

    def __repr__(self) -> str:
        return f"clamp({self.min!r}, {self.max!r})"


def builtin_names() -> dict[str, Any]:
    """Every built-in name with its value (names missing from this torch are left out)."""
    import torch

    out: dict[str, Any] = {}
    for name in PYTHON_BUILTINS:
        out[name] = getattr(_py, name)
    for name in OPTIMIZERS:
        if hasattr(torch.optim, name):
            out[name] = getattr(torch.optim, name)
    for name in SCHEDULERS:
        if hasattr(torch.optim.lr_scheduler, name):
            out[name] = getattr(torch.optim.lr_scheduler, name)
    helpers = {"clamp_min": clamp_min, "clamp": clamp}
    assert set(helpers) == set(HELPERS)
    out.update(helpers)
    for name in METHODS:
        out[name] = _method_factory(name)
    return out
