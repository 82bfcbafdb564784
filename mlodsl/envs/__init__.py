"""Environments shared by the problems of a program (Betty's ``betty.envs``).

``Engine(problems, config, dependencies, env=MyEnv())`` gives every problem ``self.env``, the
environment a reference to each problem by name (``self.env.classifier``), sets its device and
calls its :meth:`Env.initialize`. A typical use: an environment that samples a task each
inner loop, read by problems that define ``get_batch`` instead of a data loader::

    class Tasks(Env):
        def step(self):
            self.batch = sample_task(self.device)

    class Inner(ImplicitProblem):
        def get_batch(self):
            return self.env.batch
"""
from mlodsl.envs.env_base import Env

__all__ = ["Env"]
