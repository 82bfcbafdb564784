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

__all__ = ["Problem", "ImplicitProblem", "IterativeProblem"]


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
                 train_data_loader: Any = None, device: str | torch.device | None = None):
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
        """Called after each optimizer step with the trainable parameters (e.g. to clamp)."""

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

    def accumulation_steps(self) -> int:
        """How many batches one step of this problem accumulates (at least 1)."""
        return self._config.accumulation_steps(self.grad_accum)

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

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: resolve other problems by name.
        engine = self.__dict__.get("_engine")
        if engine is not None and name in engine.problems:
            return engine.problems[name]
        raise AttributeError(
            f"problem '{self.__dict__.get('_name', '?')}' has no attribute '{name}'"
            + (f" (problems: {', '.join(engine.problems)})" if engine is not None else ""))

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
        if self.scheduler is None:
            self.scheduler = self.configure_scheduler()
        if self.train_data_loader is None:
            self.train_data_loader = self.configure_train_data_loader()
        if self.train_data_loader is None:
            raise MLOError(f"problem '{self._name}' has no data: pass train_data_loader=... or "
                           "define configure_train_data_loader()")
        self._stream = BatchStream(self.train_data_loader, self.device)
        if not self.trainable_parameters():
            raise MLOError(f"problem '{self._name}': its module has no trainable parameters")

    # -- data ------------------------------------------------------------------------------------
    def next_batch(self) -> Any:
        """The next training batch on the problem's device (the data restarts when exhausted)."""
        self.cur_batch = self._stream.next()
        return self.cur_batch

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
