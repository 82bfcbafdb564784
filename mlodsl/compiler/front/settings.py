"""Checks of a problem's header ``problem P <key=value, ...>`` (private to the front end).

A header holds Betty's ``Config`` fields (:data:`mlodsl.settings.CONFIG_SETTINGS`; ``step`` is
the seed's spelling of ``unroll_steps``) and means what that ``Config`` means on the Python
route (:func:`mlodsl.runtime.config.edge_settings`): the method, ``every``, warm-up and method
knobs of the edges between the problem and its lowers and uppers, and its own step settings.
Errors: an unknown key, a repeated key, a bad literal value, and a setting that contradicts
what the program says elsewhere about the same thing (``via``/``every`` on an edge it governs,
the problem's ``hypergrad``, ``grad_clip``, ``grad_accum`` or ``log_every``), each at the
setting. A warning: two headers that disagree about one edge (the lower's wins, as in Betty),
and edge settings on a problem with no edges.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from mlodsl.compiler import ir
from mlodsl.compiler.front.values import UNKNOWN, literal_value
from mlodsl.diagnostics import did_you_mean
from mlodsl.methods import EXTRA_METHOD_FIELDS, METHODS
from mlodsl.settings import (CONFIG_ALIASES, CONFIG_FIELD_TWINS, CONFIG_ROLES, CONFIG_SETTINGS,
                             SettingError)

__all__ = ["check_settings", "canonical", "KNOB_OF"]

Report = Callable[..., None]


def canonical(name: str) -> str:
    """The ``Config`` field a header key names (``step`` -> ``unroll_steps``)."""
    return CONFIG_ALIASES.get(name, name)


def _knobs() -> dict[str, tuple[str, str]]:
    out = {}
    for sig in METHODS.values():
        for arg in sig.arguments:
            if arg.config_field and arg.config_field != "first_order":
                out[arg.config_field] = (sig.name, arg.name)
    for method, fields in EXTRA_METHOD_FIELDS.items():
        for arg, name in fields.items():
            out[name] = (method, arg)
    return out


#: ``Config`` field -> (method, argument) for the settings that are method arguments.
KNOB_OF: dict[str, tuple[str, str]] = _knobs()



def _keyword(call: ir.Call, name: str) -> ir.Keyword | None:
    return next((kw for kw in call.kwargs if kw.name == name), None)


def _method_name(expr: ir.Expr | None) -> str | None:
    if isinstance(expr, ir.Name):
        return expr.name
    if isinstance(expr, ir.Call) and isinstance(expr.func, ir.Name):
        return expr.func.name
    return None


def _show(expr: ir.Expr) -> str:
    from mlodsl.compiler.front.fmt import format_expr
    return format_expr(expr)


def check_settings(p: ir.Problem, problems: Mapping[str, ir.Problem],
                   lets: Mapping[str, ir.Let], error: Report, warning: Report,
                   check_names: Callable[[ir.Expr], None]) -> None:
    """Report every mistake in ``p``'s header (see the module docstring)."""
    if not p.settings:
        return
    known = [*CONFIG_SETTINGS, *CONFIG_ALIASES]
    seen: dict[str, ir.Setting] = {}
    values: dict[str, Any] = {}
    for s in p.settings:
        name = canonical(s.name)
        if name not in CONFIG_SETTINGS:
            error(s.name_span, f"unknown setting '{s.name}' in the header of '{p.name}'",
                  did_you_mean(s.name, known) or "a header takes Betty's Config fields: "
                  + ", ".join(known))
            continue
        if name in seen:
            first = seen[name]
            same = "" if first.name == s.name else f" ('{first.name}' and '{s.name}' are " \
                "the same setting)"
            error(s.name_span, f"setting '{s.name}' given twice in the header of "
                  f"'{p.name}'{same}", f"the first one is at column {first.name_span.column}")
            continue
        seen[name] = s
        check_names(s.value)
        value = literal_value(s.value, lets)
        if value is UNKNOWN:
            continue
        try:
            values[name] = CONFIG_SETTINGS[name].check(value, f"setting '{s.name}' of "
                                                       f"'{p.name}'")
        except SettingError as err:
            error(s.value.span, str(err), err.hint)
    _check_against_edges(p, problems, seen, values, lets, error, warning)
    _check_against_fields(p, seen, values, lets, error)


def _governed_edges(p: ir.Problem, problems: Mapping[str, ir.Problem]):
    """``(upper, edge, p is the upper)`` for each edge the header of ``p`` speaks about."""
    for e in p.edges:
        if e.target in problems and e.target != p.name:
            yield p, e, True
    for q in problems.values():
        if q is p:
            continue
        for e in q.edges:
            if e.target == p.name:
                yield q, e, False


def _check_against_edges(p, problems, seen, values, lets, error, warning) -> None:
    edges = list(_governed_edges(p, problems))
    edge_keys = [n for n in seen if CONFIG_ROLES[n] in ("edge", "method")]
    if not edges:
        for n in edge_keys:
            warning(seen[n].name_span, f"setting '{seen[n].name}' of '{p.name}' has no "
                    f"effect: '{p.name}' has no depends edge (it depends on nothing and "
                    "nothing depends on it)")
        return
    has_uppers = any(not mine for _, _, mine in edges)
    for upper, e, mine in edges:
        where = (f"its edge to '{e.target}'" if mine else
                 f"the edge '{upper.name} depends {p.name}' (a lower's Config speaks for the "
                 "edges above it, as in Betty)")
        method = _method_name(e.method)
        t = seen.get("type")
        if t is not None and method is not None and values.get("type") not in (None, method):
            error(t.value.span, f"the header of '{p.name}' says type={values['type']!r}, but "
                  f"{where} says 'via {_show(e.method)}'",
                  "say it once: drop the setting or the 'via'")
        u = seen.get("unroll_steps")
        every = literal_value(e.every, lets) if e.every is not None else UNKNOWN
        if u is not None and every is not UNKNOWN and values.get("unroll_steps") not in (
                None, every):
            error(u.value.span, f"the header of '{p.name}' says {u.name}="
                  f"{values['unroll_steps']!r}, but {where} says 'every {_show(e.every)}'",
                  "say it once: drop the setting or the 'every'")
        if isinstance(e.method, ir.Call):
            for n, s in seen.items():
                knob = KNOB_OF.get(n)
                if knob is None or knob[0] != method or n not in values:
                    continue
                kw = _keyword(e.method, knob[1])
                given = literal_value(kw.value, {}) if kw is not None else UNKNOWN
                if kw is not None and given is not UNKNOWN and given != values[n]:
                    error(s.value.span, f"the header of '{p.name}' says {n}={values[n]!r}, but "
                          f"{where} says '{method}({knob[1]}={_show(kw.value)})'",
                          "say it once: drop the setting or the argument")
        if mine and not has_uppers:
            _warn_disagreement(p, problems[e.target], seen, values, warning)


def _warn_disagreement(upper: ir.Problem, lower: ir.Problem, seen, values, warning) -> None:
    """Both headers set an edge setting differently: the lower's wins (Betty's rule)."""
    from mlodsl.compiler.front.values import literal_value as lit
    for n, s in seen.items():
        if CONFIG_ROLES[n] not in ("edge", "method") or n == "first_order":
            continue
        other = lower.setting(n)
        if other is None or n not in values:
            continue
        theirs = lit(other.value, {})
        if theirs is not UNKNOWN and theirs != values[n]:
            warning(s.value.span, f"'{upper.name}' sets {n}={values[n]!r} and its lower "
                    f"'{lower.name}' sets {n}={theirs!r}: the edge uses the lower's "
                    f"{theirs!r} (Betty's rule)", "set it on one of the two problems")


def _check_against_fields(p, seen, values, lets, error) -> None:
    t = seen.get("type")
    hg = p.field("hypergrad")
    if t is not None and hg is not None and _method_name(hg.value) not in (
            None, values.get("type", _method_name(hg.value))):
        error(t.value.span, f"the header of '{p.name}' says type={values['type']!r}, but its "
              f"field 'hypergrad' says {_show(hg.value)}", "say it once")
    for n, field_name in CONFIG_FIELD_TWINS.items():
        s, f = seen.get(n), p.field(field_name)
        if s is None or f is None:
            continue
        theirs = literal_value(f.value, lets)
        if n == "gradient_accumulation":
            error(s.name_span, f"'{p.name}' sets both the header's '{s.name}' and the field "
                  f"'{field_name}' (line {f.name_span.line})", "the header's accumulates over "
                  "successive steps (Betty's Config), the field within one step: keep one")
        elif n not in values or theirs is UNKNOWN or theirs != values[n]:
            error(s.name_span, f"'{p.name}' sets both the header's '{s.name}' and the field "
                  f"'{field_name}' (line {f.name_span.line})", "they mean the same: keep one")
