"""Problems: one level of a multilevel program each (module, optimizer, data, loss, config).

The Python API mirrors Betty's, so a Betty program ports by changing its imports::

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.module(x), y) + weighted_l2(self.module, self.hpo())

    classifier = Classifier(name="classifier", module=net, optimizer=opt,
                            train_data_loader=loader, config=Config())

``self.<name>`` reaches any other problem of the engine; ``self()`` and ``self.forward`` run the
module. The engine owns the stepping (``mlodsl.runtime.stepping``); a problem holds its own
state: components, step counter, data position, the batch of its last step and its unrolled
window (:class:`~mlodsl.runtime.window.UnrolledWindow`: the "fast" weights an upper
differentiates through). :meth:`Problem.training_state` gathers it all.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mlodsl.diagnostics import MLOError
from mlodsl.runtime.config import Config
from mlodsl.runtime.data import BatchStream
from mlodsl.runtime.device import resolve_device
from mlodsl.runtime.state import ProblemState
from mlodsl.runtime.window import UnrolledWindow

__all__ = ["Problem", "ImplicitProblem", "IterativeProblem", "HigherIterativeProblem",
           "call_param_callback"]


class Problem:
    """One optimization problem of a multilevel program.

    Subclass it and define :meth:`training_step`. Components may be given to the constructor or
    built by the ``configure_*`` hooks (called when the engine starts, for components that were
    not given).
    """

    #: Whether the problem's steps are taken differentiably (``IterativeProblem``).
    iterative: bool = False

    def __init__(self, name: str, config: Config | None = None, module: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 train_data_loader: Any = None, extra_config: Any = None, *,
                 device: str | torch.device | None = None):
        if not isinstance(name, str) or not name.isidentifier():
            raise MLOError(f"problem name {name!r} must be a Python identifier")
        self._name = name
        self._config = config if config is not None else Config()
        if not isinstance(self._config, Config):
            raise MLOError(f"problem '{name}': config must be a mlodsl Config, "
                           f"got {type(self._config).__name__}")
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_data_loader = train_data_loader
        self.device = resolve_device(device) if device is not None else None
        self._engine = None
        self.cur_batch: Any = None
        self._stream: BatchStream | None = None
        self._count = 0
        self._param_cache = None  # (module, trainable names, trainable parameters, has buffers)
        # Open while an upper differentiates through this problem's unrolled steps.
        self._window = UnrolledWindow(self.trainable_parameters, lambda: self.optimizer)
        self.after_step: Callable | None = None
        #: Overrides of ``config.gradient_clipping`` / ``config.gradient_accumulation`` (the
        #: ``.mlo`` settings ``grad_clip`` and ``grad_accum``); None: the config's value.
        self.grad_clip: float | None = None
        self.grad_accum: int | None = None
        self.scheduler_metric: str | None = None
        self.last_metrics: dict[str, Any] = {}
        self.cfg = extra_config  # Betty's free-form extra configuration, kept for the user
        self.env = None  # the engine's environment (Engine(..., env=...)), as in Betty
        self._global_step = 0  # the engine iteration of this problem's latest step (Betty's)
        self._inner_loop_start = True
        # The problem graph (Betty's parents = uppers, children = lowers), set by the engine;
        # the declared ones are what add_parent/add_child recorded before it.
        self._parents: list[Problem] = []
        self._children: list[Problem] = []
        self._paths: list[list[Problem]] = []
        self._leaf = False
        self._declared_parents: list[Problem] = []
        self._declared_children: list[Problem] = []
        self._accumulated: list[torch.Tensor] | None = None  # gradients awaiting an update

    # -- Betty-style hooks -------------------------------------------------------------------
    def configure_module(self) -> nn.Module | None:
        """Build the module when none was given to the constructor."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """Build the optimizer when none was given (``self.module`` is ready by then)."""
        return None

    def configure_scheduler(self) -> Any:
        """Build the learning-rate scheduler when none was given."""
        return None

    def configure_train_data_loader(self) -> Any:
        """Build the training data (any iterable of batches) when none was given."""
        return None

    def training_step(self, batch: Any) -> torch.Tensor | dict:
        """The loss on one batch: a scalar tensor, or a dict with ``"loss"`` plus metrics."""
        raise NotImplementedError(
            f"problem '{self._name}' must define training_step(self, batch)")

    def first_order_training_step(self, batch: Any) -> torch.Tensor | dict:
        """:meth:`training_step` for a loss that will be differentiated only once.

        The default is ``training_step`` itself; a compiled program with ``compile = True``
        runs its loss graph through ``torch.compile`` here (double backward through a compiled
        graph is not supported by torch, so second-order uses keep calling training_step).
        """
        return self.training_step(batch)

    def target_loss(self, batch: Any, targets: tuple[str, ...]) -> torch.Tensor | None:
        """A scalar with the loss's gradient in ``targets``' parameters, cheaper than the loss.

        Hypergradient methods that differentiate this problem's loss only with respect to its
        uppers (``darts``, ``sama``) ask for it. None (the default) means "use the loss";
        compiled problems return their loss graph's gradient slice
        (:mod:`mlodsl.compiler.back.slicing`). The engine checks a surrogate once against the full
        loss before trusting it.
        """
        return None

    def param_callback(self, params: list[torch.Tensor]) -> None:
        """Called after each optimizer step (e.g. to clamp), under ``torch.no_grad()``.

        Either signature works: ``param_callback(self, params)`` receives the trainable
        parameters (the seed's form); ``param_callback(self)`` receives nothing (Betty's).
        """

    def on_inner_loop_start(self) -> None:
        """Called before the first step of each unrolled window of this problem (Betty's hook).

        That is: before its first step, then before the first step after an upper stepped on
        it; for a problem without uppers, every ``config.unroll_steps`` of its updates. Typical
        use: reset the inner weights (to the meta weights, in iMAML).
        """

    def get_batch(self) -> Any:
        """The next training batch; override it for a problem without a data loader.

        The default reads the data loader (restarting it when exhausted) and moves the batch to
        the problem's device. An override's batch is used as returned.
        """
        if self._stream is None:
            raise MLOError(f"problem '{self._name}' has no data: pass train_data_loader=... or "
                           "define configure_train_data_loader() or get_batch()")
        return self._stream.next()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module; ``problem(x)`` calls this."""
        return self.module(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The problem's name; other problems reach it as ``self.<name>``."""
        return self._name

    @property
    def config(self) -> Config:
        """The problem's :class:`Config`."""
        return self._config

    @property
    def engine(self):
        """The engine this problem belongs to (None before ``Engine(...)``)."""
        return self._engine

    @property
    def count(self) -> int:
        """How many steps this problem has taken."""
        return self._count

    @property
    def unrolled_window(self) -> UnrolledWindow:
        """The problem's unrolled window (open while an upper differentiates through it)."""
        return self._window

    def clip_norm(self) -> float:
        """The gradient-norm threshold of this problem's steps (0: no clipping)."""
        return self._config.clip_norm(self.grad_clip)

    def accumulation_steps(self, unrolled: bool = False) -> int:
        """How many batches one step of this problem accumulates (at least 1): ``grad_accum``
        (the ``.mlo`` field); for an unrolled step also ``config.gradient_accumulation``
        (elsewhere that one accumulates across steps: :meth:`steps_per_update`)."""
        if self.grad_accum or unrolled:
            return self._config.accumulation_steps(self.grad_accum)
        return 1

    def record_step(self, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
        """Count a step whose (last) loss and metrics were ``loss`` and ``metrics``.

        The loss is kept detached, for logging: holding its graph would keep its tape alive.
        """
        self.last_loss = loss.detach()
        self.last_metrics = metrics
        self._count += 1

    def forget_step(self) -> None:
        """Uncount the last step (Betty's ``roll_back`` redoes a step instead of adding one)."""
        self._count -= 1

    # -- the problem graph (Betty's names) ------------------------------------------------------
    @property
    def parents(self) -> list["Problem"]:
        """The problems directly above this one (its uppers; Betty's ``parents``)."""
        return list(self._parents if self._engine is not None else self._declared_parents)

    @property
    def children(self) -> list["Problem"]:
        """The problems directly below this one (its lowers; Betty's ``children``)."""
        return list(self._children if self._engine is not None else self._declared_children)

    @property
    def paths(self) -> list[list["Problem"]]:
        """Betty's hypergradient paths: for each ``u2l`` edge from this problem to a lower that
        reads it, each chain ``[self, ..., lower, self]`` down the dependency graph."""
        return [list(path) for path in self._paths]

    @property
    def leaf(self) -> bool:
        """Whether this problem depends on nothing (each engine iteration steps it)."""
        return self._leaf

    def add_parent(self, problem: "Problem") -> None:
        """Declare ``problem`` as an upper of this one, before the engine is built.

        The engine adds it to its ``l2u`` dependencies; once built, its graph is fixed.
        """
        self._declare(problem, self._declared_parents, "add_parent")

    def add_child(self, problem: "Problem") -> None:
        """Declare ``problem`` as a lower of this one, before the engine is built."""
        self._declare(problem, self._declared_children, "add_child")

    def _declare(self, problem: "Problem", into: list, what: str) -> None:
        if self._engine is not None:
            raise MLOError(f"problem '{self._name}'.{what}(): the engine's dependency graph is "
                           "fixed once it is built; declare relations before Engine(...)")
        if not isinstance(problem, Problem) or problem is self:
            raise MLOError(f"problem '{self._name}'.{what}() takes another Problem, "
                           f"got {problem!r}")
        if any(p is problem for p in into):
            raise MLOError(f"problem '{self._name}'.{what}({problem.name!r}): already declared")
        into.append(problem)

    def declared_parents(self) -> list["Problem"]:
        """The uppers declared with :meth:`add_parent` (read by the engine)."""
        return list(self._declared_parents)

    def declared_children(self) -> list["Problem"]:
        """The lowers declared with :meth:`add_child` (read by the engine)."""
        return list(self._declared_children)

    def set_relations(self, relations: dict) -> None:
        """The engine's view of this problem's place in the graph (called once, by it):
        ``parents``, ``children``, ``paths`` and ``leaf``."""
        self._parents = list(relations["parents"])
        self._children = list(relations["children"])
        self._paths = [list(p) for p in relations["paths"]]
        self._leaf = bool(relations["leaf"])

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: resolve other problems by name.
        engine = self.__dict__.get("_engine")
        if engine is not None and name in engine.problems:
            return engine.problems[name]
        raise AttributeError(
            f"problem '{self.__dict__.get('_name', '?')}' has no attribute '{name}'"
            + (f" (problems: {', '.join(engine.problems.keys())})" if engine is not None
               else ""))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r})"

    # -- parameters ----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The module's parameters that require a gradient (what the optimizer updates).

        Read once per engine iteration (the engine calls :meth:`invalidate_parameter_cache`
        before each one), so freezing or adding parameters between iterations is seen.
        """
        return list(self._trainable()[1])

    def parameters(self) -> list[nn.Parameter]:
        """All of the module's parameters."""
        return list(self.module.parameters())

    def trainable_names(self) -> list[str]:
        """Qualified names of :meth:`trainable_parameters`, in the same order."""
        return self._trainable()[0]

    def _trainable(self) -> tuple[list[str], list[nn.Parameter]]:
        cache = self.__dict__.get("_param_cache")
        if cache is None or cache[0] is not self.module:
            named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
            buffers = any(b is not None for _, b in self.module.named_buffers())
            cache = self._param_cache = (self.module, [n for n, _ in named],
                                         [p for _, p in named], buffers)
        return cache[1], cache[2]

    def has_buffers(self) -> bool:
        """Whether the module holds any buffer (e.g. BatchNorm statistics)."""
        self._trainable()
        return self._param_cache[3]

    def invalidate_parameter_cache(self) -> None:
        """Forget the cached parameter list (after changing ``requires_grad`` mid-iteration)."""
        self._param_cache = None

    def current_parameters(self) -> list[torch.Tensor]:
        """The tensors the loss currently sees: fast weights while unrolling, else live ones."""
        fast = self._window.fast
        return list(fast) if fast is not None else self.trainable_parameters()

    # -- set-up, called by the engine ---------------------------------------------------------
    def attach_engine(self, engine, default_device: torch.device) -> None:
        """Join ``engine``: build missing components, move them to the device, open the data.

        Called once by the engine's constructor.
        """
        self._engine = engine
        if self.device is None:
            self.device = default_device
        if self.module is None:
            self.module = self.configure_module()
        if not isinstance(self.module, nn.Module):
            raise MLOError(f"problem '{self._name}' has no module: pass module=... or define "
                           "configure_module()")
        self.module.to(self.device)
        if self.optimizer is None:
            self.optimizer = self.configure_optimizer()
        if self.optimizer is None:
            raise MLOError(f"problem '{self._name}' has no optimizer: pass optimizer=... or "
                           "define configure_optimizer()")
        _move_optimizer_state(self.optimizer, self.device)
        if callable(getattr(type(self), "param_groups", None)):
            self._use_param_groups()
        if self.scheduler is None:
            self.scheduler = self.configure_scheduler()
        if self.train_data_loader is None:
            self.train_data_loader = self.configure_train_data_loader()
        if self.train_data_loader is None:
            if not self._overrides("get_batch"):
                raise MLOError(f"problem '{self._name}' has no data: pass train_data_loader=... "
                               "or define configure_train_data_loader() or get_batch()")
        else:
            self._stream = BatchStream(self.train_data_loader, self.device)
        if engine.env is not None and self.env is None:
            self.env = engine.env
        if not self.trainable_parameters():
            raise MLOError(f"problem '{self._name}': its module has no trainable parameters")

    def _use_param_groups(self) -> None:
        """Betty's ``param_groups()`` hook: the optimizer is rebuilt over the groups it returns.

        Same class, same defaults (the optimizer's constructor arguments), per-group options
        from the hook; a scheduler given to the constructor follows it to the new optimizer.
        """
        groups = self.param_groups()
        try:
            optimizer = type(self.optimizer)(groups, **self.optimizer.defaults)
        except Exception as err:  # noqa: BLE001 - the user's groups: say where it came from
            raise MLOError(f"problem '{self._name}': could not rebuild the optimizer from "
                           f"param_groups(): {err}") from None
        old, self.optimizer = self.optimizer, optimizer
        if self.scheduler is not None:
            self.scheduler = _rebind_scheduler(self._name, self.scheduler, old, optimizer)

    def _overrides(self, hook: str) -> bool:
        """Whether this problem's class defines its own ``hook`` (rather than Problem's)."""
        return getattr(type(self), hook, None) is not getattr(Problem, hook)

    # -- data ------------------------------------------------------------------------------------
    def next_batch(self) -> Any:
        """The next training batch (:meth:`get_batch`), kept as ``cur_batch``."""
        self.cur_batch = self.get_batch()
        return self.cur_batch

    # -- Betty's stepping surface ------------------------------------------------------------
    def step(self, global_step: int | None = None) -> None:
        """Take one step of this problem, then of every upper whose quota it fills (Betty's).

        ``Engine.train_step`` does this for each leaf; a custom ``train_step`` may call
        ``leaf.step(global_step=self.global_step)`` itself. For a problem with lowers this
        does nothing: it steps when its lowers fill its quota, as in Betty.
        """
        if self._engine is None:
            raise MLOError(f"problem '{self._name}'.step(): the problem is in no engine yet")
        self._engine.step_problem(self, global_step)

    def begin_step(self, global_step: int) -> None:
        """Called by the engine before each step: records the iteration, starts inner loops."""
        self._global_step = global_step
        if self._inner_loop_start:
            self._inner_loop_start = False
            self.on_inner_loop_start()

    def end_step(self, has_uppers: bool) -> None:
        """Called by the engine after each step (a problem without uppers closes its own loop
        every ``config.unroll_steps`` updates)."""
        period = self._config.unroll_steps * self.steps_per_update(unrolled=False)
        if not has_uppers and self._count % max(period, 1) == 0:
            self._inner_loop_start = True

    def upper_stepped(self) -> None:
        """Called by the engine when an upper has stepped on this problem: a new inner loop."""
        self._inner_loop_start = True

    def resume_inner_loop(self, global_step: int, new_window: bool) -> None:
        """After a checkpoint is loaded: the iteration, and whether the next step starts a new
        inner loop (the engine derives it from the restored schedule, nothing is saved)."""
        self._global_step = global_step
        self._inner_loop_start = new_window

    def steps_per_update(self, unrolled: bool) -> int:
        """How many of this problem's steps make one optimizer update (Betty's accumulation).

        ``Config(gradient_accumulation=k)`` means what it means in Betty: each step takes one
        batch and adds its gradient (divided by ``k``), and every ``k``-th step updates the
        parameters. The ``.mlo`` field ``grad_accum`` instead accumulates ``k`` batches within
        one step, as do unrolled steps (they are differentiated through): 1 here.
        """
        if self.grad_accum or unrolled:
            return 1
        return max(int(self._config.gradient_accumulation), 1)

    def accumulate_gradients(self, grads: list[torch.Tensor], update: bool
                             ) -> list[torch.Tensor] | None:
        """Add ``grads`` to the gradients kept since the last update (Betty's accumulation).

        Returns the sum when ``update`` (and forgets it), else None.
        """
        grads = [g.detach() for g in grads]
        kept = self._accumulated
        total = grads if kept is None else [a + b for a, b in zip(kept, grads)]
        self._accumulated = None if update else total
        return total if update else None

    @property
    def has_pending_gradients(self) -> bool:
        """Whether gradients are being accumulated towards an update that has not happened."""
        return self._accumulated is not None

    def state_dict(self) -> dict:
        """The problem's state: ``module`` and ``optimizer``, and ``scheduler`` when it has one."""
        state = {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None and hasattr(self.scheduler, "state_dict"):
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (a missing scheduler entry is skipped)."""
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def data_state(self) -> dict:
        """Position in the data, for checkpoints."""
        return self._stream.state_dict() if self._stream is not None else {}

    def load_data_state(self, state: dict) -> None:
        """Return to a position saved by :meth:`data_state` (moves torch's global RNG)."""
        if self._stream is not None and state:
            self._stream.load_state_dict(state)

    # -- state ---------------------------------------------------------------------------------
    def training_state(self) -> ProblemState:
        """This problem's part of the :class:`~mlodsl.runtime.state.TrainingState`.

        Live references, no copies: module parameters and buffers, optimizer and scheduler
        state, step counter, data position and the unrolled window.
        """
        sched = self.scheduler
        return ProblemState(
            module=self.module.state_dict(keep_vars=True),
            optimizer=self.optimizer.state_dict(),
            scheduler=sched.state_dict() if hasattr(sched, "state_dict") else None,
            count=self._count, data=self.data_state(), window=self._window.state_dict())

    def load_training_state(self, state: ProblemState, data: bool = True) -> None:
        """Restore :meth:`training_state`'s value (``data``: the data position too)."""
        self.module.load_state_dict(state.module)
        self.optimizer.load_state_dict(state.optimizer)
        if state.scheduler is not None and hasattr(self.scheduler, "load_state_dict"):
            self.scheduler.load_state_dict(state.scheduler)
        self._count = int(state.count)
        self._window.load_state_dict(state.window)
        if data:
            self.load_data_state(state.data)

    # -- losses ------------------------------------------------------------------------------------
    def compute_loss(self, batch: Any, first_order: bool = False
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run :meth:`training_step`; return the loss and the other entries of its dict.

        ``first_order``: the caller will differentiate the loss once, never through its
        gradient (a compiled problem may then run a ``torch.compile``d graph).
        """
        out = self.training_step(batch) if not first_order else \
            self.first_order_training_step(batch)
        if isinstance(out, dict):
            if "loss" not in out:
                raise MLOError(f"problem '{self._name}': training_step returned a dict without "
                               "a 'loss' entry")
            metrics = {k: v for k, v in out.items() if k != "loss"}
            out = out["loss"]
        else:
            metrics = {}
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise MLOError(f"problem '{self._name}': training_step must return a scalar tensor "
                           f"(or a dict with one under 'loss'), got {type(out).__name__}")
        return (out if out.dim() == 0 else out.reshape(())), metrics


def call_param_callback(problem: Problem, params: list[torch.Tensor]) -> None:
    """Call ``problem.param_callback`` with the parameters, or with none (Betty's signature).

    Whichever the callback declares: a positional parameter (the seed's ``(self, params)``, a
    ``*args``, a static method taking ``params``) gets the parameters.
    """
    callback = problem.param_callback
    if "param_callback" in problem.__dict__:  # set on the instance: look at it each time
        takes = _takes_positional(callback)
    else:
        takes = _TAKES_PARAMS.get(type(problem))
        if takes is None:
            takes = _TAKES_PARAMS[type(problem)] = _takes_positional(callback)
    if takes:
        callback(params)
    else:
        callback()


_TAKES_PARAMS: dict[type, bool] = {}


def _takes_positional(callback: Callable) -> bool:
    """Whether the (bound) ``callback`` accepts one positional argument."""
    import inspect
    try:
        sig = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin or odd callable: give it the parameters
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in sig.parameters.values())


def _rebind_scheduler(name: str, scheduler: Any, old, optimizer) -> Any:
    """A scheduler like ``scheduler`` (same class, same settings) over ``optimizer``."""
    import inspect
    if getattr(scheduler, "optimizer", None) is not old:
        return scheduler  # not bound to the replaced optimizer: leave it alone
    kwargs = {}
    try:
        for key, param in inspect.signature(type(scheduler).__init__).parameters.items():
            if key == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if key == "optimizer":
                kwargs[key] = optimizer
            elif key == "last_epoch":
                kwargs[key] = scheduler.last_epoch - 1
            elif key == "lr_lambda" and hasattr(scheduler, "lr_lambdas"):
                kwargs[key] = scheduler.lr_lambdas
            elif hasattr(scheduler, key):
                kwargs[key] = getattr(scheduler, key)
        return type(scheduler)(**kwargs)
    except Exception as err:  # noqa: BLE001
        raise MLOError(f"problem '{name}': its scheduler could not follow the optimizer "
                       f"rebuilt from param_groups() ({err})",
                       hint="build the scheduler in configure_scheduler(), which runs after "
                       "the optimizer is rebuilt") from None


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move state an optimizer already holds (loaded before the engine) to ``device``.

    A step counter stays where torch keeps it (on the CPU) unless the group is capturable or
    fused, where torch wants it beside the parameters.
    """
    for group in optimizer.param_groups:
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for k, v in state.items():
                if not isinstance(v, torch.Tensor) or v.device == device:
                    continue
                if k == "step" and not on_device:
                    continue
                state[k] = v.to(device)


class ImplicitProblem(Problem):
    """A problem whose best response is differentiated implicitly (darts, neumann, cg, ...).

    Its own steps use its ``torch.optim`` optimizer as given.
    """


class IterativeProblem(Problem):
    """A problem whose steps are taken differentiably, so uppers can unroll through them.

    Uppers reach its parameters as functions of their own through its last ``unroll_steps``
    steps (MAML-style); the user's optimizer's hyperparameters and state drive a differentiable
    copy of its update rule (``mlodsl.runtime.optim``).
    """

    iterative = True


class HigherIterativeProblem(IterativeProblem):
    """Betty's ``IterativeProblem`` built on the ``higher`` library: the same meaning here.

    mlodsl's differentiable optimizers (``mlodsl.runtime.optim``) replace ``higher``, so this is
    :class:`IterativeProblem` under Betty's other name; ``higher`` is not needed.
    """
