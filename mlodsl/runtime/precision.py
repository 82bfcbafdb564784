"""Mixed precision: autocast around loss evaluations, a gradient scaler for fp16.

A problem's precision is its ``Config.precision`` when set explicitly, else the engine's
``EngineConfig.precision``. The loss evaluations of that problem (its own steps and the
evaluations inside hypergradient methods, which all go through ``Engine.evaluate_loss``) run
under ``torch.autocast`` with ``bfloat16`` or ``float16``, except inside
:meth:`Precision.full_precision` (below); parameters, gradients and optimizer state stay in
fp32.

fp16 adds a ``torch.amp.GradScaler`` per problem (CUDA, and the CPU where torch supports it):
the loss is multiplied by the scale before the total gradient is taken, so the whole total
gradient, hypergradients included, is scaled (the hypergradient methods are linear in the
upper's gradient ``v``); ``unscale_`` then divides ``p.grad`` back before clipping, and the
scaler skips steps whose gradients overflowed. Problems whose steps are unrolled
differentiably (``unroll``, ``IterativeProblem``) are not scaled: bf16 is the precision to use
there.

Some evaluations must not be autocast: a central finite difference (``darts``, ``sama``)
subtracts two gradients that agree to many digits and divides by a small ``2 eps``, so their
rounding error (about 1e-2 relative in bf16) is amplified by ``|g| / (eps |dg|)``. Inside
:meth:`Precision.full_precision` every loss evaluation runs in the parameters' own dtype
(docs/systems.md lists which parts of each method do).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["Precision"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Per-problem autocast contexts and gradient scalers of one engine."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._full = 0  # depth of full_precision() blocks: autocast is off while > 0
        self.modes: dict[str, str] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        default = getattr(engine.config, "precision", "fp32")
        for name, problem in engine.problems.items():
            mode = problem.config.precision if problem.config.explicitly_set("precision") \
                else default
            self.modes[name] = mode
            if mode == "fp16" and not engine.is_unrolled(name):
                scaler = torch.amp.GradScaler(problem.device.type,
                                              init_scale=problem.config.initial_dynamic_scale,
                                              growth_factor=problem.config.scale_factor)
                if scaler.is_enabled():
                    self.scalers[name] = scaler

    def autocast(self, problem: Any):
        """The autocast context for evaluating ``problem``'s loss (a no-op for fp32 and inside
        :meth:`full_precision`)."""
        mode = self.modes.get(problem.name, "fp32")
        if mode == "fp32" or self._full:
            return contextlib.nullcontext()
        return torch.autocast(device_type=problem.device.type, dtype=_DTYPES[mode])

    @contextlib.contextmanager
    def full_precision(self):
        """A block whose loss evaluations run in the parameters' dtype, without autocast.

        For the numerically sensitive evaluations of the hypergradient methods (finite
        differences); the problems' own steps keep their precision. Blocks nest.
        """
        self._full += 1
        try:
            yield
        finally:
            self._full -= 1

    def scaler(self, problem: Any) -> torch.amp.GradScaler | None:
        """``problem``'s gradient scaler (fp16 only), or None."""
        return self.scalers.get(problem.name)

    def scale_loss(self, problem: Any, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` times the current scale when ``problem`` has a scaler; else ``loss``."""
        scaler = self.scalers.get(problem.name)
        return scaler.scale(loss) if scaler is not None else loss

    def unscale(self, problem: Any) -> None:
        """Divide ``problem``'s ``p.grad`` by the scale (before clipping and all-reduce checks)."""
        scaler = self.scalers.get(problem.name)
        if scaler is not None:
            scaler.unscale_(problem.optimizer)

    def step(self, problem: Any) -> bool:
        """Take ``problem``'s optimizer step; return False when the scaler skipped it."""
        scaler = self.scalers.get(problem.name)
        if scaler is None:
            problem.optimizer.step()
            return True
        before = scaler.get_scale()
        scaler.step(problem.optimizer)
        scaler.update()
        # A skipped step (inf/NaN gradients) lowers the scale; that is the only signal.
        return scaler.get_scale() >= before

    def state_dict(self) -> dict:
        """The scalers' states, for checkpoints."""
        return {name: s.state_dict() for name, s in self.scalers.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the scalers' states."""
        for name, s in state.items():
            if name in self.scalers:
                self.scalers[name].load_state_dict(s)
