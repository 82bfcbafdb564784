"""``mlodsl.compile``: from a ``.mlo`` path or source text to an :class:`ExecutionPlan`.

Example::

    import mlodsl
    plan = mlodsl.compile("examples/hpo/hpo.mlo", overrides={"engine.iterations": 200})
    history = plan.run()
    net = plan.problems["classifier"].module

    # In a notebook: bind Python objects instead of importing them.
    plan = mlodsl.compile(source_text, namespace={"Net": Net, "train_set": ds})
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping

from mlodsl.compiler import ir
from mlodsl.diagnostics import MLOError

__all__ = ["compile", "load_program"]


def _read(path_or_source: str | os.PathLike) -> tuple[str, str]:
    """``(file label, text)``: a path when it ends with ``.mlo`` or names a file, else source."""
    from mlodsl.compiler.front.files import read_source
    from mlodsl.compiler.front.parse import decode_source

    s = os.fspath(path_or_source)
    is_path = isinstance(path_or_source, os.PathLike) or s.endswith(".mlo") or (
        "\n" not in s and len(s) < 4096 and os.path.isfile(s))
    if not is_path:
        return "<string>", decode_source(s, "<string>")
    data, problem = read_source(s)
    if problem is not None:
        raise MLOError(problem)
    return s, decode_source(data, s)


def load_program(path_or_source: str | os.PathLike, overrides: Any = None,
                 namespace: Mapping[str, Any] | None = None):
    """Parse, apply overrides and check: ``(program, sources, warnings)``. Raises MLOError."""
    from mlodsl.compiler.back.resolve import NAMESPACE_MODULE
    from mlodsl.compiler.front.check import check, errors
    from mlodsl.compiler.front.overrides import (apply_overrides, from_mapping, relocate,
                                                shadowed_hypergrads)
    from mlodsl.compiler.front.parse import parse
    from mlodsl.compiler.front.sources import SourceMap

    file, text = _read(path_or_source)
    sources = SourceMap(file, text)
    program = parse(text, file)
    if namespace:
        bad = [n for n in namespace if not isinstance(n, str) or not n.isidentifier()]
        if bad:
            raise MLOError(f"namespace keys must be identifiers, got {bad!r}")
        fake = ir.Import(NAMESPACE_MODULE, tuple(ir.ImportName(n) for n in namespace))
        program = dataclasses.replace(program, items=(fake, *program.items))
    before = check(program)
    try:
        ovs = from_mapping(overrides)
    except MLOError as err:
        err.add_sources(sources.sources)
        raise
    if ovs:
        try:
            program = apply_overrides(program, ovs, sources)
        except MLOError:
            if errors(before):  # the program's own errors first (e.g. no engine block)
                raise MLOError(before, sources=sources.sources) from None
            raise
        diags = relocate(check(program), before, file, ovs) + shadowed_hypergrads(program, ovs)
    else:
        diags = before
    if errors(diags):
        diags = _import_typos_first(program, file, sources, diags, namespace)
        raise MLOError(diags, sources=sources.sources)
    return program, sources, [d for d in diags if d.severity != "error"]


def _import_typos_first(program, file: str, sources, diags: list, namespace) -> list:
    """When a name is unknown but close to an imported one (``MLP`` used, ``MLPs`` imported),
    the import may be the typo: resolve the imports, and if that import fails, report it
    first and say so under the unknown name, instead of suggesting the broken name."""
    from mlodsl.compiler.back.resolve import on_path, resolve_imports, search_path
    from mlodsl.compiler.front.check import errors

    imported = {name: span for imp in program.imports for name, span in imp.bindings()}
    suspects = {d: d.hint.split("'")[1] for d in errors(diags)
                if d.message.startswith("unknown name") and d.hint
                and d.hint.startswith("did you mean '") and d.hint.split("'")[1] in imported}
    if not suspects:
        return diags
    try:
        with on_path(search_path(file)):
            resolve_imports(program, sources, namespace)
        return diags
    except MLOError as err:
        failed = list(err.diagnostics)
    broken = {name for name, span in imported.items()
              if any(f.span == span and f.file == file for f in failed)}
    out = []
    for d in diags:
        close = suspects.get(d)
        if close in broken:
            d = dataclasses.replace(d, hint=f"'{close}' is imported at line "
                                    f"{imported[close].line}, but that import fails (see its "
                                    f"error): fix the import")
        out.append(d)
    return failed + out


def compile(path_or_source: str | os.PathLike,  # noqa: A001 - the public name
            overrides: Mapping[str, Any] | Iterable[str] | None = None,
            namespace: Mapping[str, Any] | None = None):
    """Compile a ``.mlo`` program to an :class:`~mlodsl.compiler.back.plan.ExecutionPlan`.

    Args:
        path_or_source: a path (ends with ``.mlo`` or names an existing file) or source text.
        overrides: ``{"engine.iterations": 30, "hpo.optimizer.lr": 1e-4}`` (literal values), or
            a list of ``"TARGET=EXPRESSION"`` strings as for ``mlodsl run --set``.
        namespace: names bound to Python objects, in scope like imports (they shadow imports
            of the same name).

    Raises :class:`~mlodsl.diagnostics.MLOError` (with ``.sources`` for rendering) for any
    error in the program, its overrides, its imports or the user code its fields call.
    """
    from mlodsl.compiler.back.lower import lower

    if overrides is not None and not isinstance(overrides, (Mapping, str)):
        overrides = list(overrides)  # read twice: applied, then kept for the summary
    from mlodsl.compiler.front.overrides import from_mapping

    program, sources, warnings = load_program(path_or_source, overrides, namespace)
    plan = lower(program, sources, dict(namespace or {}))
    plan.warnings[:0] = warnings
    plan.overrides = [o.text for o in from_mapping(overrides)]
    return plan

