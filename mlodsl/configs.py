"""The seed's import path: ``from mlodsl.configs import Config, EngineConfig``."""
from mlodsl.runtime.config import Config, EngineConfig

__all__ = ["Config", "EngineConfig"]
