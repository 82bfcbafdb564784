"""The seed's import path: ``from mlodsl.engine import Engine``."""
from mlodsl.runtime.engine import Engine

__all__ = ["Engine"]
