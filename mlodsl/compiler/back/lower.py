"""Lowering a checked program to an :class:`~mlodsl.compiler.back.plan.ExecutionPlan`.

Lowering has two halves: building the user's objects
(:class:`~mlodsl.compiler.back.instantiate.Instantiator`) and planning what the runtime does
with them (here: the edges with their methods, the engine settings). The order of work,
which is also the order in which user code runs (docs/language.md, "How programs run"):

1. imports (:mod:`~mlodsl.compiler.back.resolve`), with the program's folder on the path;
2. seeding: with ``engine.seed = s``, Python's, numpy's and torch's generators are seeded
   with ``s`` (before any ``let`` or field is evaluated);
3. ``let`` values, in source order;
4. modules, referenced ones first (``module = WeightDecay(like=classifier)`` builds
   ``classifier``'s module before), otherwise in source order;
5. per problem, in source order: optimizer, scheduler, data (a ``Dataset`` gets a loader whose
   shuffling generator is seeded with ``s + k`` for the k-th problem in source order, k from
   0), ``after_step`` and the numeric fields;
6. losses: fx graphs from expressions; callables are traced on a first batch to find what
   they read, which must agree with the ``depends`` edges;
7. edges: the method is ``via`` on the edge, else what the problems' headers say (the Python
   route's ``Config`` rule, :func:`mlodsl.runtime.config.edge_settings`), else the upper's
   ``hypergrad``, else the engine's ``hypergrad``, else ``darts()``; ``every`` is the edge's,
   else the headers' ``unroll_steps``, else 1; header method knobs fill in arguments the chosen
   method call does not give;
8. engine settings and the ``validate`` expression.
"""
from __future__ import annotations

from typing import Any

from mlodsl.compiler import ir
from mlodsl.compiler.back.instantiate import Instantiator
from mlodsl.compiler.back.plan import ExecutionPlan
from mlodsl.compiler.back.resolve import (
    MethodChoice,
    builtin_names,
    on_path,
    resolve_imports,
    search_path,
)
from mlodsl.compiler.front.check import levels as program_levels
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.methods import METHODS, method_field
from mlodsl.runtime.config import Config, edge_settings
from mlodsl.runtime.edges import Edge
from mlodsl.runtime.seeding import seed_everything
from mlodsl.settings import EARLY_STOP_KEYS, SettingError

__all__ = ["lower"]


def lower(program: ir.Program, sources: SourceMap, namespace: dict | None = None
          ) -> ExecutionPlan:
    """Resolve, build and plan ``program`` (already checked). Raises MLOError.

    The steps run in the order of the module docstring, which is the order in which the
    user's code runs.
    """
    path = search_path(program.file)
    with on_path(path):
        imports = resolve_imports(program, sources, namespace or {})
        objects = Instantiator(program, sources, imports, builtin_names())
        seed = objects.seed_and_lets(seed_everything)
        objects.build_modules()
        problems = {p.name: objects.build_problem(k, p)
                    for k, p in enumerate(program.problems)}
        losses = {p.name: objects.build_loss(p, problems) for p in program.problems}
        edges = plan_edges(program, objects, problems)
        settings = engine_settings(objects, seed)
        validate, node = objects.validate_function(problems)
    levels = program_levels(program)
    order = [p.name for p in program.problems]
    by_level = sorted(order, key=lambda n: (levels[n], order.index(n)))
    return ExecutionPlan(
        file=program.file, problems={n: problems[n] for n in by_level}, order=order,
        levels=dict(levels), edges=edges, losses={n: losses[n] for n in by_level},
        engine_settings=settings, search_path=path, sources=sources, validate=validate,
        validate_node=node, early_stop_node=early_stop_node(objects),
        warnings=objects.warnings, descriptions=objects.descriptions,
        locations=field_locations(program, sources))


def field_locations(program: ir.Program, sources: SourceMap) -> dict[tuple[str, str], str]:
    """``FILE:LINE:COL`` of every problem field and edge: ``(problem, field)`` and
    ``(upper, "edge:" + lower)`` (for messages about them at run time, e.g. compile's)."""
    out = {}

    def at(node, span) -> str:
        return f"{sources.file_of(node)}:{span.line}:{span.column}"

    for p in program.problems:
        for f in p.fields:
            out.setdefault((p.name, f.name), at(f, f.span))
        for e in p.edges:
            node = e.method if e.method is not None else e
            out[(p.name, f"edge:{e.target}")] = at(node, getattr(node, "span", e.span))
    return out


def plan_edges(program: ir.Program, objects: Instantiator,
               problems: dict[str, Any]) -> list[Edge]:
    """Every depends edge with its method, ``every`` and warm-up, and where each came from.

    The method: ``via``, else the headers (the Python route's Config rule), else the upper's
    ``hypergrad``, else the engine's, else ``darts()``.
    """
    out = []
    engine_hg = objects.field("hypergrad")
    configs = {p.name: Config(**objects.header(p)[0]) for p in program.problems}
    graph = objects.graph
    for p in program.problems:
        own_hg = p.field("hypergrad")
        for e in p.edges:
            out.append(_plan_edge(p, e, program, objects, problems, configs, own_hg, engine_hg,
                                  graph.in_degree(p.name) > 0))
    return out


def _plan_edge(p: ir.Problem, e: ir.Edge, program: ir.Program, objects: Instantiator,
               problems: dict[str, Any], configs: dict[str, Config], own_hg, engine_hg,
               upper_has_uppers: bool) -> Edge:
    """One edge ``p depends e.target``: see :func:`plan_edges`."""
    rule = edge_settings(configs[p.name], configs[e.target], upper_has_uppers=upper_has_uppers)

    def origin(name: str) -> str:
        return f"header of '{p.name if rule.sources[name] == 'upper' else e.target}'"

    if e.method is not None:
        choice, source = objects.method(e.method), "via"
    elif rule.sources["type"] != "default":  # Config's method with Config's defaults
        choice = MethodChoice(rule.method, rule.args, given=())
        source = origin("type")
    elif own_hg is not None:
        choice, source = objects.method(own_hg.value), f"hypergrad of '{p.name}'"
    elif engine_hg is not None:
        choice, source = objects.method(engine_hg.value), "engine hypergrad"
    else:
        choice, source = MethodChoice("darts", METHODS["darts"].bind({}), given=()), "default"
    given = choice.given  # arguments the program wrote (the rest are defaults)
    args, note = dict(choice.args), ""
    arg_sources = {}
    ends = [(configs[e.target], e.target), (configs[p.name], p.name)]
    for arg in METHODS[choice.name].arguments:
        name = method_field(choice.name, arg.name)
        if name is None or arg.name in given:
            continue
        # The Python route's order: the lower first (first_order: the upper first).
        for cfg, who in (ends[::-1] if name == "first_order" else ends):
            if cfg.explicitly_set(name):
                args[arg.name] = getattr(cfg, name)
                arg_sources[arg.name] = f"header of '{who}'"
                break
    # neumann's alpha from the lower's lr, unless the program gave one (a header's type means
    # Config's method, whose default alpha is Config's).
    if choice.name == "neumann" and "alpha" not in given and "alpha" not in arg_sources \
            and not source.startswith("header of"):
        args["alpha"], note = neumann_alpha(problems[e.target])
    if e.every is not None:
        every, every_source = every_of(objects, p, e), "every"
    elif rule.sources["unroll_steps"] != "default":
        every, every_source = rule.every, origin("unroll_steps")
    else:
        every, every_source = 1, "default"
    # The lower's header gradient_accumulation (Betty's: one update every k of its steps)
    # makes an unroll of N updates N * k steps, as on the Python route.
    updates = configs[e.target].gradient_accumulation
    if e.every is None and updates > 1 and choice.name != "unroll" and \
            program.problem(e.target).field("grad_accum") is None:
        every *= updates
        every_source += f" x gradient_accumulation of '{e.target}'"
    warmup_source = origin("warmup_steps") if rule.sources["warmup_steps"] != "default" \
        else "default"
    origins = {"every": every_source}
    if rule.warmup or warmup_source != "default":
        origins["warm-up"] = warmup_source
    origins.update(arg_sources)
    return Edge(p.name, e.target, every=every, warmup=rule.warmup, method=choice.name,
                args=args, source=source, where=edge_position(objects.sources, e), note=note,
                origins=origins)


def every_of(objects: Instantiator, p: ir.Problem, e: ir.Edge) -> int:
    """An edge's ``every``: any integer expression (a literal, a ``let``, ``2 * k``) >= 1."""
    if e.every is None:
        return 1
    value = objects.interp(f"'every' of '{p.name} depends {e.target}'").run(e.every)
    if hasattr(value, "numel") and value.numel() == 1 and not value.is_floating_point():
        value = value.item()  # a one-element integer tensor
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise objects.sources.error(e.every, f"'every' of '{p.name} depends {e.target}' must "
                                    f"be an integer >= 1, got {value!r}",
                                    f"'every N' lets '{e.target}' step N times per step of "
                                    f"'{p.name}'")
    return value


def neumann_alpha(lower: Any) -> tuple[float, str]:
    """``neumann``'s default step in a ``.mlo`` program: the lower's learning rate.

    The series converges for ``alpha < 2 / lambda_max(H)``, and gradient descent on the
    lower is stable under the same condition on its learning rate, so a lower that trains
    with SGD at ``lr`` makes ``alpha = lr`` safe. (Python programs keep ``Config``'s 1.0.)
    """
    try:
        lr = float(lower.optimizer.param_groups[0]["lr"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return METHODS["neumann"].bind({})["alpha"], ""
    return lr, f"alpha = the lr of '{lower.name}'"


def edge_position(sources: SourceMap, e: ir.Edge) -> str:
    """``FILE:LINE:COL`` of an edge: its ``via`` method when it has one, else its target."""
    if e.method is not None:
        return f"{sources.file_of(e.method)}:{e.method.span.line}:{e.method.span.column}"
    return f"{sources.file_of(e)}:{e.target_span.line}:{e.target_span.column}"


def early_stop_node(objects: Instantiator) -> Any:
    """Where ``early_stop`` names its metric (``metric="acc"``), else the field's value."""
    f = objects.field("early_stop")
    if f is None:
        return None
    if isinstance(f.value, ir.Call):
        for kw in f.value.kwargs:
            if kw.name == "metric":
                return kw.value
    return f.value


def engine_settings(objects: Instantiator, seed: int | None) -> dict[str, Any]:
    """``EngineConfig`` keyword arguments from the engine block (each value checked against
    its rule in :mod:`mlodsl.settings`)."""
    iterations = objects.setting("iterations")
    out: dict[str, Any] = {"train_iters": iterations}
    if objects.field("validate") is not None:
        every = objects.setting("validate_every")
        out["valid_step"] = every if every is not None else max(1, iterations // 10)
    else:
        out["valid_step"] = 0
    if seed is not None:
        out["seed"] = seed
    for name in ("device", "precision", "on_nan", "checkpoint_every", "checkpoint_keep",
                 "timeout"):
        value = objects.setting(name)
        if value is not None:
            out[name] = value
    if objects.field("compile") is not None:
        out["compile"] = objects.compile_requested()
    if objects.field("early_stop") is not None:
        out.update(early_stop(objects))
    return out


def early_stop(objects: Instantiator) -> dict[str, Any]:
    """``early_stop = dict(metric="acc", mode="max", patience=5)`` as EngineConfig fields."""
    from mlodsl.diagnostics import did_you_mean

    f = objects.field("early_stop")
    value = objects.interp("engine early_stop").run(f.value)
    if value is None or value is False:
        return {}
    if value is True:
        value = {}
    if objects.field("validate") is None:
        raise objects.sources.error(f.value, "'early_stop' watches the validation metrics, but "
                                    "the engine has no 'validate'")
    if not isinstance(value, dict):
        raise objects.sources.error(f.value, "'early_stop' must be a dict like "
                                    "dict(metric=\"acc\", mode=\"max\", patience=5)")
    for key in value:
        if key not in EARLY_STOP_KEYS:
            raise objects.sources.error(f.value, f"'early_stop' has no key '{key}' (it takes "
                                        "metric, mode and patience)",
                                        did_you_mean(str(key), list(EARLY_STOP_KEYS)))
    checked = {}
    for key, spec in EARLY_STOP_KEYS.items():
        if key not in value and spec.default is None:
            continue
        try:
            checked[key] = spec.check(value.get(key, spec.default), f"'early_stop' {key}")
        except SettingError as err:
            raise objects.sources.error(f.value, str(err), err.hint) from None
    out: dict[str, Any] = {"early_stopping": True, "early_stopping_mode": checked["mode"],
                           "early_stopping_tolerance": checked["patience"]}
    if "metric" in checked:
        out["early_stopping_metric"] = checked["metric"]
    return out
