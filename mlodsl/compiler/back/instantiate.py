"""Instantiating the user's objects from a checked program (the first half of lowering).

An :class:`Instantiator` evaluates the program's expressions with the
:class:`~mlodsl.compiler.back.interpret.Interpreter` and builds what they describe: ``let``
values, each problem's module, optimizer, scheduler, data loader and ``after_step`` hook, the
loss (an fx graph, or a callable traced to find what it reads), hypergradient method calls and
the ``validate`` function. Each value is checked once it is known: a setting against its rule
in :mod:`mlodsl.settings` (the same rule, and message, as the checker's for literals), an
object against what the runtime needs (a module, an optimizer, a Dataset or iterable, ...).

It builds; it does not plan. :mod:`mlodsl.compiler.back.lower` calls it in the documented
order and turns what it built into the :class:`~mlodsl.compiler.back.plan.ExecutionPlan`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from mlodsl.compiler import ir
from mlodsl.compiler.back.adapters import CallableLoss, CompiledProblem, GraphLoss
from mlodsl.compiler.back.interpret import Interpreter, Scope, describe_exception
from mlodsl.compiler.back.loss_graph import build_loss_graph, graph_reads
from mlodsl.compiler.back.plan import LossInfo
from mlodsl.compiler.back.resolve import MethodChoice
from mlodsl.compiler.back.tracing import traced_reads
from mlodsl.compiler.front.check import dependency_graph
from mlodsl.compiler.front.sources import SourceMap
from mlodsl.compiler.front.values import literal_value
from mlodsl.diagnostics import Diagnostic, MLOError
from mlodsl.methods import METHODS
from mlodsl.runtime.config import Config
from mlodsl.settings import (CONFIG_ALIASES, CONFIG_ROLES, CONFIG_SETTINGS, ENGINE_FIELDS,
                             PROBLEM_FIELDS, SettingError)

__all__ = ["Instantiator"]

_SCHEDULER_BASES = (torch.optim.lr_scheduler.LRScheduler,
                    torch.optim.lr_scheduler.ReduceLROnPlateau)


class Instantiator:
    """Builds the user's objects of one checked program (see the module docstring).

    Args:
        program: the checked program.
        sources: where its nodes come from (for diagnostics).
        imports: the names its imports bound
            (:func:`~mlodsl.compiler.back.resolve.resolve_imports`).
        builtins: the built-in names (:func:`~mlodsl.compiler.back.resolve.builtin_names`).

    ``warnings`` collects the warnings found while building; ``descriptions`` a short account
    of each problem's objects (``mlodsl compile`` prints it).
    """

    def __init__(self, program: ir.Program, sources: SourceMap, imports: dict[str, Any],
                 builtins: dict[str, Any]):
        self.program = program
        self.sources = sources
        self.imports = imports
        self.builtins = builtins
        self.engine = program.engine
        self.graph = dependency_graph(program)
        self.warnings: list[Diagnostic] = []
        self.descriptions: dict[str, dict[str, str]] = {}
        self.lets: dict[str, Any] = {}  # filled in source order; a let sees those above it
        self.modules: dict[str, nn.Module] = {}
        self.seed: int | None = None

    # -- evaluation --------------------------------------------------------------------------
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
        """The field ``name`` of ``problem`` (of the engine when None), or None."""
        block = problem if problem is not None else self.engine
        return block.field(name) if block is not None else None

    def setting(self, name: str, problem: ir.Problem | None = None) -> Any:
        """The value of a field of ``problem`` (of the engine when None), checked against its
        rule in :mod:`mlodsl.settings`; None when the field is not set.

        In problem fields a problem's name is its module. A one-element tensor counts as
        the number it holds.
        """
        f = self.field(name, problem)
        if f is None:
            return None
        if problem is None:
            value = self.interp(f"engine {name}").run(f.value)
            spec, where = ENGINE_FIELDS[name], f"'{name}' of the engine"
        else:
            value = self.interp(f"'{name}' of '{problem.name}'",
                                problems=self.modules).run(f.value)
            spec, where = PROBLEM_FIELDS[name], f"'{name}' of problem '{problem.name}'"
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        try:
            return spec.check(value, where)
        except SettingError as err:
            raise self.sources.error(f.value, str(err), err.hint) from None

    def compile_requested(self) -> bool:
        """The engine's ``compile`` (False when unset).

        Read by the optimizers (fused kernels) and by the engine settings.
        """
        return bool(self.setting("compile"))

    # -- seed and lets -------------------------------------------------------------------------
    def seed_and_lets(self, seed_everything: Callable[[int], None]) -> int | None:
        """Evaluate the lets in source order, seeding first when the seed is known statically.

        A seed that is an expression (of lets, say) is evaluated and applied after them.
        Returns the seed (None when the engine sets none).
        """
        seed = self._static_seed()
        if seed is not None:
            seed_everything(seed)
        for let in self.program.lets:
            self.lets[let.name] = self.interp(f"let '{let.name}'").run(let.value)
        if seed is None and self.field("seed") is not None:
            seed = self.setting("seed")
            seed_everything(seed)
        self.seed = seed
        return seed

    def _static_seed(self) -> int | None:
        f = self.field("seed")
        if f is None:
            return None
        value = literal_value(f.value, {let.name: let for let in self.program.lets})
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # -- headers -----------------------------------------------------------------------------
    def header(self, p: ir.Problem) -> tuple[dict[str, Any], dict[str, ir.Setting]]:
        """The values of ``p``'s header settings by ``Config`` field, and their nodes.

        Each value is checked against its rule in :data:`mlodsl.settings.CONFIG_SETTINGS`.
        """
        values: dict[str, Any] = {}
        nodes: dict[str, ir.Setting] = {}
        for s in p.settings:
            name = CONFIG_ALIASES.get(s.name, s.name)
            value = self.interp(f"setting '{s.name}' of '{p.name}'").run(s.value)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            try:
                values[name] = CONFIG_SETTINGS[name].check(
                    value, f"setting '{s.name}' of '{p.name}'")
            except SettingError as err:
                raise self.sources.error(s.value, str(err), err.hint) from None
            nodes[name] = s
        return values, nodes

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
        # In fields other than loss and validate, a problem's name is its module.
        self.modules = {p.name: built[p.name] for p in self.program.problems}
        return self.modules

    # -- one problem ------------------------------------------------------------------------------
    def build_problem(self, k: int, p: ir.Problem) -> CompiledProblem:
        """The ``k``-th problem (source order): its optimizer, scheduler, data, hooks."""
        module = self.modules[p.name]
        desc = self.descriptions.setdefault(p.name, {})
        desc["module"] = type(module).__name__
        optimizer = self.build_optimizer(p, module)
        desc["optimizer"] = _describe_optimizer(optimizer)
        scheduler = self.build_scheduler(p, optimizer)
        if scheduler is not None:
            desc["scheduler"] = type(scheduler).__name__
        data, desc["data"] = self.build_data(k, p)
        settings = dict(self.header(p)[0])
        own = {k: v for k, v in settings.items() if CONFIG_ROLES[k] == "step"}
        if own:
            desc["settings"] = ", ".join(f"{k}={v!r}" for k, v in own.items()) + \
                f" (from the header of '{p.name}')"
        # log_every of the problem, else the header's log_step, else the engine's log_every.
        log_every = self.setting("log_every", p)
        if log_every is None and "log_step" not in settings:
            log_every = self.setting("log_every")
        if log_every is not None or "log_step" not in settings:
            settings["log_step"] = log_every or -1
        problem = CompiledProblem(name=p.name, config=Config(**settings),
                                  module=module, optimizer=optimizer, scheduler=scheduler,
                                  train_data_loader=data)
        f = p.field("after_step")
        if f is not None:
            interp = self.interp(f"'after_step' of '{p.name}'", problems=self.modules)
            value = interp.run(f.value)
            if not callable(value):
                raise self.sources.error(f.value, f"'after_step' of '{p.name}' must be a "
                                         "callable taking the parameters, like clamp_min(0.0); "
                                         f"got {type(value).__name__}")
            problem.after_step = _Guarded(value, f.value, self.sources, p.name)
        problem.grad_clip = self.setting("grad_clip", p)
        problem.grad_accum = self.setting("grad_accum", p)
        return problem

    def build_optimizer(self, p: ir.Problem, module: nn.Module) -> torch.optim.Optimizer:
        """``optimizer = SGD(lr=0.1)`` (the parameters prepended), or a callable's result."""
        f = p.field("optimizer")
        interp = self.interp(f"the optimizer of '{p.name}'", problems=self.modules)
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

    def build_scheduler(self, p: ir.Problem, optimizer: torch.optim.Optimizer) -> Any:
        """``scheduler = StepLR(step_size=10)`` (the optimizer prepended), or None."""
        f = p.field("scheduler")
        if f is None:
            return None
        interp = self.interp(f"the scheduler of '{p.name}'", problems=self.modules)
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

    def build_data(self, k: int, p: ir.Problem) -> tuple[Any, str]:
        """The problem's batches: a seeded loader over a Dataset, or the iterable as given."""
        from torch.utils.data import DataLoader, Dataset, IterableDataset

        from mlodsl.runtime.data import make_loader

        f = p.field("data")
        value = self.interp(f"the data of '{p.name}'", problems=self.modules).run(f.value)
        bs_field = p.field("batch_size")
        if isinstance(value, Dataset) and not isinstance(value, DataLoader):
            if bs_field is None:
                raise self.sources.error(f.value, f"the data of '{p.name}' is a Dataset "
                                         f"({type(value).__name__}): it needs a batch size",
                                         "add 'batch_size = 64' to the problem")
            bs = self.setting("batch_size", p)
            shuffle = not isinstance(value, IterableDataset)
            seed = None if self.seed is None else self.seed + k
            loader = make_loader(value, bs, shuffle=shuffle, seed=seed)
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
        """The problem's loss (set as its ``loss_fn``) and what it reads."""
        f = p.field("loss")
        names = [q.name for q in self.program.problems]
        if f.params is not None:
            static = self.interp(f"the loss of '{p.name}'")
            gm = build_loss_graph(f, static, {n: problems[n].module for n in names})
            problems[p.name].loss_fn = GraphLoss(p.name, f, gm, self.sources)
            return LossInfo("graph", graph_reads(gm, names), gm, tuple(f.params))
        interp = self.interp(f"the loss of '{p.name}'", problems=self.modules)
        fn = interp.run(f.value)
        if not callable(fn):
            raise self.sources.error(f.value, f"the loss of '{p.name}' must be 'loss(a, b) = "
                                     f"expression' or a callable, got {type(fn).__name__}")
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

    # -- methods and validation -------------------------------------------------------------------
    def method(self, expr: ir.Expr) -> MethodChoice:
        """A ``via``/``hypergrad`` value: a method call (or a method called with defaults)."""
        interp = self.interp("the hypergradient method", methods_first=True)
        value = interp.run(expr)
        if callable(value) and not isinstance(value, MethodChoice):
            value = self.guard(interp, expr, value)
        if not isinstance(value, MethodChoice):
            raise self.sources.error(expr, "expected a hypergradient method, like darts()")
        return value

    def validate_function(self, problems: dict) -> tuple[Callable | None, Any]:
        """The ``validate`` expression as a function of the problems (static parts cached),
        and its node; ``(None, None)`` without one."""
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
