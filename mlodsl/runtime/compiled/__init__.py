"""The compiled execution mode (``compile = True``): whole MLO iterations as one graph.

* :mod:`~mlodsl.runtime.compiled.optimizers`: ``torch.optim``'s update rules as pure functions;
* :mod:`~mlodsl.runtime.compiled.iteration`: one schedule pattern as a pure function of the
  training state, built with ``torch.func`` (losses, hypergradients, updates, callbacks);
* :mod:`~mlodsl.runtime.compiled.capture`: which pieces can be captured, one compiled function
  per pattern, the eager fallback with one warning, the engine's hook, and on CUDA the
  compile options (CUDA graphs) and static batch buffers.
"""
from mlodsl.runtime.compiled.capture import (Verdict, WholeIteration, compile_options,
                                              program_reasons)

__all__ = ["WholeIteration", "program_reasons", "Verdict", "compile_options"]
