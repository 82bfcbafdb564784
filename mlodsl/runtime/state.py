"""The whole training state of an engine as one explicit structure.

:class:`TrainingState` is everything a run needs to take exactly the steps an uninterrupted run
would take: per problem its module (parameters and buffers), optimizer and scheduler state,
step counter, data position and unrolled window; the schedule's counters, the global iteration,
the fp16 gradient scalers, early stopping, per-edge method state, Betty's ``roll_back`` caches,
the metric history, and every random state. Each part has one owner, which produces it and
takes it back through public methods:

==================  =====================================================================
part                owner (produce / restore)
==================  =====================================================================
``problems[n]``     the problem: ``Problem.training_state`` / ``load_training_state``
``.module``         its ``nn.Module`` (``state_dict(keep_vars=True)``: live tensors)
``.optimizer``      its ``torch.optim`` optimizer (``state_dict()``)
``.scheduler``      its learning-rate scheduler, or None
``.count``          the problem's step counter
``.data``           its batch stream (epoch, position, epoch's random state); rank-local
``.window``         its :class:`~mlodsl.runtime.window.UnrolledWindow`; None when closed
``global_step``     the engine (iterations taken)
``schedule``        :class:`~mlodsl.runtime.schedule.Schedule` (steps, quotas)
``precision``       :class:`~mlodsl.runtime.precision.Precision` (gradient scalers)
``early_stopping``  :class:`~mlodsl.runtime.validation.EarlyStopping`
``method_states``   the engine's per-edge method state (``(upper, lower) -> dict``)
``roll_back``       :class:`~mlodsl.runtime.rollback.RollBack` (cached lower states)
``history``         :class:`~mlodsl.runtime.logging.MetricsLog` (records)
``rng``             :mod:`~mlodsl.runtime.seeding` (torch, CUDA, Python, numpy); rank-local
==================  =====================================================================

``engine.training_state()`` gathers it (live references: parameters are the module's own
``nn.Parameter`` objects, optimizer state the optimizer's own tensors; nothing is copied) and
``engine.load_training_state(state)`` gives every part back to its owner (values are copied
into the live tensors; the data position is restored before the random state, because
replaying an epoch's shuffle moves torch's generator).

As a pytree: :meth:`TrainingState.flatten` returns the tensors (the leaves, in a fixed order)
and a :class:`StateSpec` holding everything else; :meth:`TrainingState.unflatten` rebuilds a
state from a spec and new leaves. A compiled whole iteration takes the leaves as inputs and
returns new ones::

    state = engine.training_state()
    leaves, spec = state.flatten()
    new_leaves = iteration(*leaves)                 # a pure function of the tensors
    engine.load_training_state(TrainingState.unflatten(spec, new_leaves))

The plain counters (``global_step``, ``count``, schedule counters) stay Python numbers in the
spec: they decide *which* steps run, so a compiled iteration is specialised on them.

Checkpoints (:mod:`~mlodsl.runtime.checkpoint`) write :meth:`TrainingState.to_checkpoint`'s
dict (tensors detached, rank-local parts gathered from every rank) and read it back with
:meth:`TrainingState.from_checkpoint`. A distributed run starts every rank from rank 0's
module tensors (:func:`mlodsl.runtime.distributed.broadcast_tensors` over
:meth:`TrainingState.module_tensors`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch

__all__ = ["ProblemState", "TrainingState", "StateSpec", "FORMAT_VERSION"]

#: Version of :meth:`TrainingState.to_checkpoint`'s layout (checkpoint files).
FORMAT_VERSION = 1


@dataclass
class ProblemState:
    """One problem's part of the training state (owner: the problem)."""

    module: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict | None
    count: int
    data: dict = field(default_factory=dict)
    window: dict | None = None


@dataclass
class TrainingState:
    """The engine's whole training state (see the module docstring for owners and layout)."""

    global_step: int
    problems: dict[str, ProblemState]
    schedule: dict
    precision: dict
    early_stopping: dict
    method_states: dict[tuple[str, str], dict]
    roll_back: dict
    history: list[dict]
    rng: dict

    # -- views -----------------------------------------------------------------------------
    def module_tensors(self) -> list[torch.Tensor]:
        """Every problem's parameters and buffers (problem order, then ``state_dict`` order)."""
        return [t for p in self.problems.values() for t in p.module.values()
                if isinstance(t, torch.Tensor)]

    def has_open_window(self) -> bool:
        """Whether some problem is inside an unrolled window (its fast weights carry a graph
        to its uppers, which no file can hold: checkpoints wait for the window to close)."""
        return any(p.window is not None for p in self.problems.values())

    # -- pytree ------------------------------------------------------------------------------
    def flatten(self) -> tuple[list[torch.Tensor], "StateSpec"]:
        """``(leaves, spec)``: every tensor of the state in a fixed order, and the rest."""
        leaves: list[torch.Tensor] = []
        skeleton = _strip(_as_tree(self), leaves)
        return leaves, StateSpec(skeleton, len(leaves))

    @classmethod
    def unflatten(cls, spec: "StateSpec", leaves: list[torch.Tensor]) -> "TrainingState":
        """The state ``spec`` describes, with ``leaves`` in place of its tensors."""
        if len(leaves) != spec.n_leaves:
            raise ValueError(f"TrainingState.unflatten: {len(leaves)} tensors for a spec "
                             f"with {spec.n_leaves}")
        return _from_tree(_fill(spec.skeleton, iter(leaves)))

    def tensors(self) -> list[torch.Tensor]:
        """The leaves of :meth:`flatten` alone."""
        return self.flatten()[0]

    # -- checkpoint layout -----------------------------------------------------------------------
    def local_part(self) -> dict:
        """What differs between ranks: random states and data positions."""
        return {"rng": self.rng, "data": {n: p.data for n, p in self.problems.items()}}

    def to_checkpoint(self, ranks: list[dict] | None) -> dict:
        """The checkpoint file's dict: tensors detached, plain containers only.

        ``ranks``: every rank's :meth:`local_part`, in rank order (None on ranks other than 0,
        which do not write).
        """
        if self.has_open_window():
            raise ValueError("a training state inside an unrolled window cannot be saved")
        problems = {n: {"module": {k: v.detach() for k, v in p.module.items()},
                        "optimizer": p.optimizer, "scheduler": p.scheduler, "count": p.count}
                    for n, p in self.problems.items()}
        return {
            "format": FORMAT_VERSION,
            "global_step": self.global_step,
            "problems": problems,
            "schedule": self.schedule,
            "precision": self.precision,
            "early_stopping": self.early_stopping,
            "method_states": [[u, l, s] for (u, l), s in self.method_states.items()],
            "roll_back": self.roll_back,
            "history": list(self.history),
            "ranks": ranks,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict, rank: int = 0) -> "TrainingState":
        """The state :meth:`to_checkpoint` wrote, with ``rank``'s random state and data."""
        ranks = saved["ranks"]
        mine = ranks[rank] if rank < len(ranks) else ranks[0]
        problems = {n: ProblemState(module=p["module"], optimizer=p["optimizer"],
                                    scheduler=p["scheduler"], count=int(p["count"]),
                                    data=mine["data"].get(n, {}))
                    for n, p in saved["problems"].items()}
        return cls(global_step=int(saved["global_step"]), problems=problems,
                   schedule=saved["schedule"], precision=saved["precision"],
                   early_stopping=saved["early_stopping"],
                   method_states={(u, l): s for u, l, s in saved["method_states"]},
                   roll_back=dict(saved["roll_back"]), history=list(saved["history"]),
                   rng=mine["rng"])

    def copy(self) -> "TrainingState":
        """A deep copy (tensors detached and cloned): a snapshot that later steps leave alone."""
        leaves, spec = self.flatten()
        cloned = [t.detach().clone() for t in leaves]
        return TrainingState.unflatten(copy.deepcopy(spec), cloned)


@dataclass
class StateSpec:
    """Everything in a :class:`TrainingState` but its tensors (see :meth:`TrainingState.flatten`)."""

    skeleton: Any
    n_leaves: int


class _Leaf:
    """Where a tensor sat in a flattened state."""

    __slots__ = ()

    def __deepcopy__(self, memo):
        return self


_LEAF = _Leaf()


def _as_tree(state: TrainingState) -> dict:
    # Dataclasses become tagged dicts so that the walk below needs to know only containers.
    out = {f.name: getattr(state, f.name) for f in fields(state)}
    out["problems"] = {n: ("ProblemState", {f.name: getattr(p, f.name) for f in fields(p)})
                       for n, p in state.problems.items()}
    return out


def _from_tree(tree: dict) -> TrainingState:
    tree = dict(tree)
    tree["problems"] = {n: ProblemState(**body) for n, (_, body) in tree["problems"].items()}
    return TrainingState(**tree)


def _strip(obj: Any, leaves: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return _LEAF
    if isinstance(obj, dict):
        return {k: _strip(v, leaves) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip(v, leaves) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_strip(v, leaves) for v in obj)
    return obj


def _fill(obj: Any, leaves: Iterator[torch.Tensor]) -> Any:
    if obj is _LEAF:
        return next(leaves)
    if isinstance(obj, dict):
        return {k: _fill(v, leaves) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, leaves) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_fill(v, leaves) for v in obj)
    return obj
