"""Lowering a checked program to an :class:`~mlodsl.compiler.plan.ExecutionPlan`.

The order of work, which is also the order in which user code runs (docs/language.md, "How
programs run"):

1. imports (:mod:`~mlodsl.compiler.resolve`), with the program's folder on the path;
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
7. edges: the method is ``via`` on the edge, else the upper's ``hypergrad``, else the engine's
   ``hypergrad``, else ``darts()``;
8. engine settings and the ``validate`` expression.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import torch
from torch import nn

from mlodsl.compiler import ir
from mlodsl.compiler._front_values import literal_value
from mlodsl.compiler.check import dependency_graph, levels as program_levels
from mlodsl.compiler.fxloss import build_loss_graph, graph_reads, traced_reads
from mlodsl.compiler.interpret import Interpreter, Scope, SourceMap, describe_exception
from mlodsl.compiler.plan import (CallableLoss, CompiledProblem, ExecutionPlan, GraphLoss,
                                  LossInfo, PlannedEdge)
from mlodsl.compiler.resolve import (MethodChoice, builtin_names, on_path, resolve_imports,
                                     search_path)
from mlodsl.diagnostics import MLOError
from mlodsl.methods import METHODS
from mlodsl.runtime.config import Config

__all__ = ["lower", "seed_everything"]

_SCHEDULER_BASES = (torch.optim.lr_scheduler.LRScheduler,
                    torch.optim.lr_scheduler.ReduceLROnPlateau)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def lower(program: ir.Program, sources: SourceMap, namespace: dict | None = None
          ) -> ExecutionPlan:
    """Resolve, build and plan ``program`` (already checked). Raises MLOError."""
    return _Lowering(program, sources, namespace).run()


class _Lowering:
    """One lowering of one program (see the module docstring for the order of steps)."""

    def __init__(self, program: ir.Program, sources: SourceMap, namespace: dict | None):
        self.program = program
        self.sources = sources
        self.namespace = namespace or {}
        self.engine = program.engine
        self.graph = dependency_graph(program)
        self.levels = program_levels(program)
        self.warnings = []
        self.descriptions: dict[str, dict[str, str]] = {}
        self.lets: dict[str, Any] = {}  # filled in source order; a let sees those above it

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> ExecutionPlan:
        path = search_path(self.program.file)
        with on_path(path):
            self.imports = resolve_imports(self.program, self.sources, self.namespace)
            self.builtins = builtin_names()
            seed = self.static_seed()
            if seed is not None:
                seed_everything(seed)
            for let in self.program.lets:
                self.lets[let.name] = self.interp(f"let '{let.name}'").run(let.value)
            if seed is None and self.field("seed") is not None:
                seed = self.engine_int("seed", minimum=0)
                seed_everything(seed)
            self.seed = seed
            self._built_modules = modules = self.build_modules()
            problems = {p.name: self.build_problem(k, p, modules[p.name])
                        for k, p in enumerate(self.program.problems)}
            losses = {p.name: self.build_loss(p, problems) for p in self.program.problems}
            edges = self.plan_edges()
            settings = self.engine_settings(problems)
            validate, node = self.validate(problems)
        order = [p.name for p in self.program.problems]
        by_level = sorted(order, key=lambda n: (self.levels[n], order.index(n)))
        return ExecutionPlan(
            file=self.program.file, problems={n: problems[n] for n in by_level}, order=order,
            levels=dict(self.levels), edges=edges,
            losses={n: losses[n] for n in by_level}, engine_settings=settings,
            search_path=path, sources=self.sources, validate=validate, validate_node=node,
            warnings=self.warnings, descriptions=self.descriptions)

    # -- evaluation helpers ---------------------------------------------------------------------
    def interp(self, what: str, problems: dict | None = None, methods_first: bool = False,
               cache: dict | None = None) -> Interpreter:
        """An interpreter for one field: problems (as given), lets, imports, built-ins."""
        layers = [self.lets, self.imports, self.builtins]
        if methods_first:  # in 'via' and 'hypergrad', method names are never shadowed
            layers.insert(0, {n: self.builtins[n] for n in METHODS})
        if problems:
            layers.insert(0, problems)
        return Interpreter(Scope(*layers, dynamic=problems or ()), self.sources, what, cache)

    def guard(self, interp: Interpreter, node: Any, thunk: Callable[[], Any],
              subject: Any = None) -> Any:
        """Run ``thunk`` (user code on evaluated values); failures are reported at ``node``."""
        try:
            return thunk()
        except MLOError:
            raise
        except Exception as err:  # noqa: BLE001 - one clear message at the .mlo position
            raise interp.user_error(node, err, subject) from None

    def field(self, name: str, problem: ir.Problem | None = None) -> ir.Field | None:
        block = problem if problem is not None else self.engine
        return block.field(name) if block is not None else None

    def compile_requested(self) -> bool:
        """The engine's ``compile`` (False when unset); an error unless it is True or False.

        Read by the optimizers (fused kernels) and by the engine settings.
        """
        f = self.field("compile")
        if f is None:
            return False
        value = self.interp("engine compile").run(f.value)
        if not isinstance(value, bool):
            raise self.sources.error(f.value, "'compile' of the engine must be True or "
                                     f"False, got {value!r}")
        return value

    def static_seed(self) -> int | None:
        f = self.field("seed")
        if f is None:
            return None
        value = literal_value(f.value, {let.name: let for let in self.program.lets})
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def number(self, f: ir.Field, value: Any, owner: str, *, integer: bool,
               minimum: float, strict: bool = False) -> Any:
        """Check a numeric field's evaluated value."""
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        ok = ok_type and not isinstance(value, bool) and (
            value > minimum if strict else value >= minimum)
        if not ok:
            what = ("an integer" if integer else "a number") + \
                (f" > {minimum}" if strict else f" >= {minimum}")
            raise self.sources.error(f.value, f"'{f.name}' of {owner} must be {what}, "
                                     f"got {value!r}")
        return value

    def engine_int(self, name: str, minimum: int = 1) -> int:
        f = self.field(name)
        return self.number(f, self.interp(f"engine {name}").run(f.value), "the engine",
                           integer=True, minimum=minimum)

    # -- modules -----------------------------------------------------------------------------
    def build_modules(self) -> dict[str, nn.Module]:
        """Every problem's module, referenced modules first (LANGUAGE.md section 8)."""
        problems = {p.name: p for p in self.program.problems}
        refs = {n: [m.name for m in ir.iter_expr(p.field("module").value)
                    if isinstance(m, ir.Name) and m.name in problems and m.name != n]
                for n, p in problems.items()}
        built: dict[str, nn.Module] = {}

        def build(name: str) -> None:
            if name in built:
                return
            for dep in refs[name]:
                build(dep)  # the checker rejected cycles
            f = problems[name].field("module")
            value = self.interp(f"the module of '{name}'", problems=dict(built)).run(f.value)
            if not isinstance(value, nn.Module):
                raise self.sources.error(f.value, f"the module of '{name}' must be a "
                                         f"torch.nn.Module, got {type(value).__name__}")
            built[name] = value

        for name in problems:
            build(name)
        return built

    # -- one problem ------------------------------------------------------------------------------
    def build_problem(self, k: int, p: ir.Problem, module: nn.Module) -> CompiledProblem:
        owner = f"problem '{p.name}'"
        desc = self.descriptions.setdefault(p.name, {})
        desc["module"] = type(module).__name__
        modules = self._modules
        optimizer = self.build_optimizer(p, module, modules)
        desc["optimizer"] = _describe_optimizer(optimizer)
        scheduler = self.build_scheduler(p, optimizer, modules)
        if scheduler is not None:
            desc["scheduler"] = type(scheduler).__name__
        data, desc["data"] = self.build_data(k, p, modules)
        log_every = self.optional_number(p, "log_every", owner, integer=True, minimum=1)
        if log_every is None and self.field("log_every") is not None:
            log_every = self.engine_int("log_every")
        problem = CompiledProblem(name=p.name, config=Config(log_step=log_every or -1),
                                  module=module, optimizer=optimizer, scheduler=scheduler,
                                  train_data_loader=data)
        f = p.field("after_step")
        if f is not None:
            interp = self.interp(f"'after_step' of '{p.name}'", problems=modules)
            value = interp.run(f.value)
            if not callable(value):
                raise self.sources.error(f.value, f"'after_step' of '{p.name}' must be a "
                                         "callable taking the parameters, like clamp_min(0.0); "
                                         f"got {type(value).__name__}")
            problem.after_step = _Guarded(value, f.value, self.sources, p.name)
        problem.grad_clip = self.optional_number(p, "grad_clip", owner, integer=False,
                                                 minimum=0, strict=True)
        problem.grad_accum = self.optional_number(p, "grad_accum", owner, integer=True,
                                                  minimum=1)
        return problem

    @property
    def _modules(self) -> dict[str, nn.Module]:
        # In fields other than loss and validate, a problem name is its module.
        return {p.name: self._module_of(p.name) for p in self.program.problems}

    def _module_of(self, name: str) -> nn.Module:
        return self._built_modules[name]

    def optional_number(self, p: ir.Problem, name: str, owner: str, **kw: Any) -> Any:
        f = p.field(name)
        if f is None:
            return None
        value = self.interp(f"'{name}' of '{p.name}'", problems=self._modules).run(f.value)
        return self.number(f, value, owner, **kw)

    def build_optimizer(self, p: ir.Problem, module: nn.Module, modules: dict):
        f = p.field("optimizer")
        interp = self.interp(f"the optimizer of '{p.name}'", problems=modules)
        params = [q for q in module.parameters() if q.requires_grad]
        if not params:
            raise self.sources.error(p.field("module").value, f"the module of '{p.name}' has no "
                                     "trainable parameters")
        # compile = True asks for the fastest implementations: torch's fused optimizer kernels
        # (one pass over each parameter instead of one per operation), unless the program
        # chose an implementation itself.
        defaults = {"fused": True} if self.compile_requested() else {}
        value = self._construct(f.value, interp, torch.optim.Optimizer, params, defaults)
        if not isinstance(value, torch.optim.Optimizer):
            raise self.sources.error(f.value, f"the optimizer of '{p.name}' must be a torch.optim "
                                     f"optimizer like SGD(lr=0.1), got {type(value).__name__}")
        return value

    def build_scheduler(self, p: ir.Problem, optimizer, modules: dict):
        f = p.field("scheduler")
        if f is None:
            return None
        interp = self.interp(f"the scheduler of '{p.name}'", problems=modules)
        value = self._construct(f.value, interp, _SCHEDULER_BASES, optimizer)
        if not isinstance(value, _SCHEDULER_BASES):
            raise self.sources.error(f.value, f"the scheduler of '{p.name}' must be a "
                                     "torch.optim.lr_scheduler class like StepLR(step_size=10), "
                                     f"got {type(value).__name__}")
        if isinstance(value, torch.optim.lr_scheduler.ReduceLROnPlateau) and \
                self.field("validate") is None:
            raise self.sources.error(f.value, "ReduceLROnPlateau steps on the validation metric, "
                                     "but the engine has no 'validate'",
                                     "add 'validate = ...' (and 'validate_every') to the engine")
        return value

    def _construct(self, expr: ir.Expr, interp: Interpreter, base, first: Any,
                   defaults: dict | None = None) -> Any:
        """``Cls(kw=...)`` with ``first`` prepended when ``Cls`` subclasses ``base``; a callable
        value is called with ``first``; an instance is used as given.

        ``defaults``: keyword arguments given to ``Cls`` when it takes them and the program set
        none of ``fused``/``foreach`` (an implementation choice the program made stays).
        """
        if isinstance(expr, ir.Call):
            func = interp.run(expr.func)
            if isinstance(func, type) and issubclass(func, base):
                args = [interp.run(a) for a in expr.args]
                kwargs = {kw.name: interp.run(kw.value) for kw in expr.kwargs}
                if defaults and not {"fused", "foreach"} & set(kwargs):
                    import inspect
                    accepted = inspect.signature(func).parameters
                    kwargs.update({k: v for k, v in defaults.items() if k in accepted})
                # A failure caused by an overridden argument is reported at the override.
                where = next((a for a in (*expr.args, *(kw.value for kw in expr.kwargs))
                              if self.sources.file_of(a) != self.sources.default), expr)
                return self.guard(interp, where, lambda: func(first, *args, **kwargs), expr)
        value = interp.run(expr)
        if isinstance(value, base):
            return value
        if callable(value):
            return self.guard(interp, expr, lambda: value(first))
        return value

    def build_data(self, k: int, p: ir.Problem, modules: dict) -> tuple[Any, str]:
        """The problem's batches: a seeded loader over a Dataset, or the iterable as given."""
        from torch.utils.data import DataLoader, Dataset, IterableDataset

        f = p.field("data")
        value = self.interp(f"the data of '{p.name}'", problems=modules).run(f.value)
        bs_field = p.field("batch_size")
        if isinstance(value, Dataset) and not isinstance(value, DataLoader):
            if bs_field is None:
                raise self.sources.error(f.value, f"the data of '{p.name}' is a Dataset "
                                         f"({type(value).__name__}): it needs a batch size",
                                         "add 'batch_size = 64' to the problem")
            bs = self.optional_number(p, "batch_size", f"problem '{p.name}'", integer=True,
                                      minimum=1)
            shuffle = not isinstance(value, IterableDataset)
            seed = None if self.seed is None else self.seed + k
            loader = _make_loader(value, bs, shuffle, seed)
            size = f"{len(value)} examples, " if hasattr(value, "__len__") else ""
            return loader, f"{type(value).__name__} ({size}batch {bs}, " \
                f"{'shuffled' if shuffle else 'in order'}" + \
                (f", seed {seed})" if seed is not None and shuffle else ")")
        try:
            iter(value)
        except TypeError:
            raise self.sources.error(f.value, f"the data of '{p.name}' must be a Dataset or an "
                                     f"iterable of batches, got {type(value).__name__}") from None
        if isinstance(value, (str, bytes)):
            raise self.sources.error(f.value, f"the data of '{p.name}' is a string",
                                     "call a function that loads the data set instead")
        if bs_field is not None:
            self.warnings.append(self.sources.diagnostic(
                bs_field, f"'batch_size' of '{p.name}' has no effect: its data is already "
                "batches (not a Dataset)"))
        return value, f"{type(value).__name__} of batches (as given)"

    # -- losses ---------------------------------------------------------------------------------
    def build_loss(self, p: ir.Problem, problems: dict[str, CompiledProblem]) -> LossInfo:
        f = p.field("loss")
        names = [q.name for q in self.program.problems]
        if f.params is not None:
            static = self.interp(f"the loss of '{p.name}'")
            gm = build_loss_graph(f, static, {n: problems[n].module for n in names})
            problems[p.name].loss_fn = GraphLoss(p.name, f, gm, self.sources)
            return LossInfo("graph", graph_reads(gm, names), gm, tuple(f.params))
        interp = self.interp(f"the loss of '{p.name}'", problems=self._modules)
        fn = interp.run(f.value)
        if not callable(fn):
            raise self.sources.error(f.value, f"the loss of '{p.name}' must be 'loss(a, b) = "
                                     f"expression' or a callable, got {type(fn).__name__}")
        from types import SimpleNamespace
        space = SimpleNamespace(**problems)
        problems[p.name].loss_fn = CallableLoss(p.name, f, fn, space, self.sources)
        reads, traced = self.trace_callable(p, f, fn, problems)
        return LossInfo("callable", reads, None, (), traced)

    def trace_callable(self, p: ir.Problem, f: ir.Field, fn: Any,
                       problems: dict[str, CompiledProblem]) -> tuple[list[str], bool]:
        """Trace a callable loss on a first batch; its reads must follow the depends edges."""
        data = problems[p.name].train_data_loader
        try:
            batch = _peek(data)
        except _CannotPeek as why:
            self.warnings.append(self.sources.diagnostic(
                f.value, f"the reads of the loss of '{p.name}' are not checked: {why}"))
            return [], False
        try:
            reads = traced_reads(fn, problems, batch)
        except MLOError:
            raise
        except Exception as err:  # noqa: BLE001 - the loss itself may be at fault
            self.warnings.append(self.sources.diagnostic(
                f.value, f"could not trace the loss of '{p.name}' to check what it reads: "
                f"{describe_exception(err)}"))
            return [], False
        import networkx as nx
        for r in reads:
            if r == p.name:
                continue
            if not (nx.has_path(self.graph, p.name, r) or nx.has_path(self.graph, r, p.name)):
                raise self.sources.error(
                    f.value, f"the loss of '{p.name}' reads '{r}', which is not connected to "
                    f"'{p.name}' by depends edges (found by tracing the callable)",
                    f"add 'depends {r}' to '{p.name}' (or 'depends {p.name}' to '{r}')")
        return reads, True

    # -- edges -----------------------------------------------------------------------------------
    def plan_edges(self) -> list[PlannedEdge]:
        """Every depends edge with its method: via, else hypergrad, else engine, else darts."""
        out = []
        engine_hg = self.field("hypergrad")
        for p in self.program.problems:
            own_hg = p.field("hypergrad")
            for e in p.edges:
                if e.method is not None:
                    choice, source = self.method(e.method), "via"
                elif own_hg is not None:
                    choice, source = self.method(own_hg.value), f"hypergrad of '{p.name}'"
                elif engine_hg is not None:
                    choice, source = self.method(engine_hg.value), "engine hypergrad"
                else:
                    choice, source = MethodChoice("darts", METHODS["darts"].bind({})), "default"
                out.append(PlannedEdge(p.name, e.target, e.every or 1, choice.name, choice.args,
                                       source))
        return out

    def method(self, expr: ir.Expr) -> MethodChoice:
        interp = self.interp("the hypergradient method", methods_first=True)
        value = interp.run(expr)
        if callable(value) and not isinstance(value, MethodChoice):
            value = self.guard(interp, expr, value)
        if not isinstance(value, MethodChoice):
            raise self.sources.error(expr, "expected a hypergradient method, like darts()")
        return value

    # -- engine ----------------------------------------------------------------------------------
    def engine_settings(self, problems: dict) -> dict[str, Any]:
        """EngineConfig keyword arguments from the engine block."""
        iterations = self.engine_int("iterations")
        out: dict[str, Any] = {"train_iters": iterations}
        if self.field("validate") is not None:
            every = self.engine_int("validate_every") if self.field("validate_every") else \
                max(1, iterations // 10)
            out["valid_step"] = every
        else:
            out["valid_step"] = 0
        if self.seed is not None:
            out["seed"] = self.seed
        for name in ("device", "precision", "on_nan"):
            f = self.field(name)
            if f is not None:
                value = self.interp(f"engine {name}").run(f.value)
                if not isinstance(value, str):
                    raise self.sources.error(f.value, f"'{name}' of the engine must be a string, "
                                             f"got {type(value).__name__}")
                out[name] = value
        if self.field("compile") is not None:
            out["compile"] = self.compile_requested()
        if self.field("checkpoint_every") is not None:
            out["checkpoint_every"] = self.engine_int("checkpoint_every")
        if self.field("checkpoint_keep") is not None:
            out["checkpoint_keep"] = self.engine_int("checkpoint_keep", minimum=0)
        if self.field("timeout") is not None:
            f = self.field("timeout")
            out["timeout"] = float(self.number(f, self.interp("engine timeout").run(f.value),
                                               "the engine", integer=False, minimum=0,
                                               strict=True))
        if self.field("early_stop") is not None:
            out.update(self.early_stop())
        self._check_engine_config(out)
        return out

    def early_stop(self) -> dict[str, Any]:
        """``early_stop = dict(metric="acc", mode="max", patience=5)`` as EngineConfig fields."""
        f = self.field("early_stop")
        value = self.interp("engine early_stop").run(f.value)
        if value is None or value is False:
            return {}
        if value is True:
            value = {}
        if self.field("validate") is None:
            raise self.sources.error(f.value, "'early_stop' watches the validation metrics, but "
                                     "the engine has no 'validate'")
        if not isinstance(value, dict):
            raise self.sources.error(f.value, "'early_stop' must be a dict like "
                                     "dict(metric=\"acc\", mode=\"max\", patience=5)")
        from mlodsl.diagnostics import did_you_mean
        for key in value:
            if key not in ("metric", "mode", "patience"):
                raise self.sources.error(f.value, f"'early_stop' has no key '{key}' (it takes "
                                         "metric, mode and patience)",
                                         did_you_mean(str(key), ["metric", "mode", "patience"]))
        out: dict[str, Any] = {"early_stopping": True}
        if "metric" in value:
            if not isinstance(value["metric"], str):
                raise self.sources.error(f.value, "'early_stop' metric must be a string")
            out["early_stopping_metric"] = value["metric"]
        mode = value.get("mode", "min")
        if mode not in ("min", "max"):
            raise self.sources.error(f.value, f"'early_stop' mode must be \"min\" or \"max\", "
                                     f"got {mode!r}")
        out["early_stopping_mode"] = mode
        patience = value.get("patience", 5)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise self.sources.error(f.value, f"'early_stop' patience must be an integer >= 1, "
                                     f"got {patience!r}")
        out["early_stopping_tolerance"] = patience
        return out

    def _check_engine_config(self, settings: dict) -> None:
        from mlodsl.runtime.config import EngineConfig
        try:
            EngineConfig(**settings)
        except MLOError as err:
            raise self.sources.error(self.engine, err.diagnostics[0].message,
                                     err.diagnostics[0].hint,
                                     span=_head(self.engine.span)) from None

    def validate(self, problems: dict) -> tuple[Callable | None, Any]:
        """The ``validate`` expression as a function of the problems (static parts cached)."""
        f = self.field("validate")
        if f is None:
            return None, None
        cache: dict = {}
        names = list(problems)

        def run(live: dict) -> Any:
            interp = self.interp("'validate'", problems={n: live[n] for n in names}, cache=cache)
            return interp.run(f.value)

        return run, f.value


# ----------------------------------------------------------------------------- helpers

class _Guarded:
    """An ``after_step`` callable whose failures are reported at its ``.mlo`` position."""

    def __init__(self, fn: Callable, node: Any, sources: SourceMap, problem: str):
        self.fn, self.node, self.sources, self.problem = fn, node, sources, problem

    def __call__(self, params) -> Any:
        try:
            return self.fn(params)
        except MLOError:
            raise
        except Exception as err:  # noqa: BLE001
            raise self.sources.error(self.node, f"'after_step' of '{self.problem}' failed: "
                                     f"{describe_exception(err)}", kind="run") from None

    def __repr__(self) -> str:
        return repr(self.fn)


def _make_loader(dataset, batch_size: int, shuffle: bool, seed: int | None):
    """The runtime's loader (sharded when distributed), or a plain seeded DataLoader."""
    try:
        from mlodsl.runtime.data import make_loader
    except ImportError:  # pragma: no cover - the systems module predates this file
        make_loader = None
    if make_loader is not None:
        return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)
    generator = torch.Generator().manual_seed(seed) if (shuffle and seed is not None) else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       generator=generator)


class _CannotPeek(Exception):
    pass


def _peek(data: Any) -> Any:
    """A first batch of ``data`` without moving any random generator (nor the data)."""
    from mlodsl.runtime.data import loader_generators
    try:
        it = iter(data)
    except TypeError:
        raise _CannotPeek("its data is not iterable") from None
    if it is data:
        raise _CannotPeek("its data is a one-shot iterator (give a list or a DataLoader)")
    torch_state = torch.get_rng_state()
    gens = [(g, g.get_state()) for g in loader_generators(data)]
    try:
        return next(it)
    except StopIteration:
        raise _CannotPeek("its data is empty") from None
    finally:
        torch.set_rng_state(torch_state)
        for g, s in gens:
            g.set_state(s)


def _describe_optimizer(opt: torch.optim.Optimizer) -> str:
    group = opt.param_groups[0]
    shown = [f"{k}={group[k]!r}" for k in ("lr", "momentum", "weight_decay")
             if k in group and (k == "lr" or group[k])]
    return f"{type(opt).__name__}({', '.join(shown)})"


def _head(span):
    from mlodsl.diagnostics import Span
    return Span(span.line, span.column, span.line, span.column + 6)
