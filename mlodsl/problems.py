"""The seed's import path: ``from mlodsl.problems import ImplicitProblem, IterativeProblem``."""
from mlodsl.runtime.problem import (HigherIterativeProblem, ImplicitProblem, IterativeProblem,
                                    Problem)

__all__ = ["Problem", "ImplicitProblem", "IterativeProblem", "HigherIterativeProblem"]
