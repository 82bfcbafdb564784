"""Parts of the MAML example (few-shot sine regression), shared by ``maml.mlo`` and ``maml_python.py``.

The task family of Finn et al. (ICML 2017, section 5.1): ``y = A sin(x + phi)`` with amplitude
``A ~ U[0.1, 5]``, phase ``phi ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; ``K = 10`` support
points per task to adapt on, query points to judge the adaptation.

How MAML is written as a bilevel program here:

* the **upper** (``theta``) holds the meta-parameters ``theta`` of a 1-40-40-1 MLP
  (:class:`SineMLP`);
* the **lower** (``adapt``) holds one *delta* per task of a meta-batch (:class:`TaskDelta`,
  shape ``[tasks, *theta.shape]`` per parameter), starting at zero; the adapted model of task
  ``t`` is the MLP at ``theta + delta[t]``, so ``steps`` SGD steps on the delta are exactly
  ``steps`` SGD steps on a copy of ``theta``;
* ``theta depends adapt every STEPS via unroll()`` differentiates the query loss through the
  lower's ``steps`` differentiable steps (second-order MAML);
* ``after_step = reset_to_zero`` puts the deltas back to zero when the window is over (the
  runtime applies ``after_step`` of an unrolled problem when its fast weights are written
  back, i.e. once per window), so every task batch starts from ``theta``;
* the two problems' data are the *same* sequence of task batches (same seed), the lower's
  support set repeated ``steps`` times, the upper's query set once, so the upper always judges
  the tasks the lower has just adapted to.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SineMLP", "TaskDelta", "SineTasks", "sine_tasks", "task_mse", "adapted_mse",
           "reset_to_zero"]


class SineMLP(nn.Module):
    """A ``1 -> hidden -> hidden -> 1`` ReLU MLP that can run a batch of tasks at once.

    ``forward(x, delta)`` takes inputs of shape ``[tasks, points, 1]`` (or ``[points, 1]``) and
    an optional tuple of per-task parameter offsets (:class:`TaskDelta`'s output, each
    ``[tasks, *p.shape]``); task ``t`` is evaluated at ``theta + delta[t]``.
    """

    def __init__(self, hidden: int = 40):
        super().__init__()
        sizes = [1, hidden, hidden, 1]
        self.depth = len(sizes) - 1
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layer = nn.Linear(a, b)  # torch's default initialisation, transposed for x @ W
            setattr(self, f"w{i}", nn.Parameter(layer.weight.detach().t().contiguous()))
            setattr(self, f"b{i}", nn.Parameter(layer.bias.detach().clone()))

    def forward(self, x: torch.Tensor, delta=None) -> torch.Tensor:
        """Predictions of shape ``x.shape`` (see the class docstring)."""
        params = list(self.parameters())
        if delta is not None:
            params = [p + d for p, d in zip(params, delta)]
        h = x
        for i in range(self.depth):
            w, b = params[2 * i], params[2 * i + 1]
            h = torch.matmul(h, w) + (b.unsqueeze(-2) if b.dim() > 1 else b)
            if i < self.depth - 1:
                h = F.relu(h)
        return h


class TaskDelta(nn.Module):
    """Per-task offsets to the parameters of ``like`` (a module or a problem), all zero at first.

    ``forward()`` returns them as a tuple in the order of ``like.parameters()``.
    """

    def __init__(self, like, tasks: int = 25):
        super().__init__()
        like = getattr(like, "module", like)
        self.deltas = nn.ParameterList(
            nn.Parameter(torch.zeros(tasks, *p.shape)) for p in like.parameters())

    def forward(self):
        """The offsets, one tensor of shape ``[tasks, *p.shape]`` per parameter."""
        return tuple(self.deltas)


def reset_to_zero(params) -> None:
    """``after_step`` helper: set every parameter to zero (a fresh adaptation starts)."""
    for p in params:
        p.zero_()


def task_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of each task's mean squared error (``[tasks, points, 1]`` inputs).

    A sum, not a mean, so that one SGD step on the stacked deltas is one SGD step of learning
    rate ``lr`` on every task, whatever the number of tasks.
    """
    return (pred - target).pow(2).mean(dim=(-2, -1)).sum()


class SineTasks:
    """A reproducible, finite stream of sine-task batches (an iterable of ``(x, y)`` batches).

    ``role`` picks what each task batch yields: ``"support"`` its ``shots`` support points
    (``repeat`` times in a row, for ``repeat`` adaptation steps), ``"query"`` its ``query``
    query points, ``"joint"`` both sets concatenated (for the non-meta-learned baseline).
    Every pass re-draws the same ``batches`` task batches from ``seed``, so streams with the
    same seed stay aligned whatever their role.
    """

    def __init__(self, role: str = "support", tasks: int = 25, shots: int = 10,
                 query: int | None = None, batches: int = 5000, repeat: int = 1, seed: int = 0):
        if role not in ("support", "query", "joint"):
            raise ValueError(f"sine_tasks: role must be 'support', 'query' or 'joint', not {role!r}")
        self.role, self.tasks, self.shots = role, int(tasks), int(shots)
        self.query = int(query if query is not None else shots)
        self.batches, self.repeat, self.seed = int(batches), int(repeat), int(seed)

    def __len__(self) -> int:
        return self.batches * (self.repeat if self.role == "support" else 1)

    def draw(self, g: torch.Generator):
        """One task batch: ``(x_support, y_support, x_query, y_query)``, each ``[tasks, n, 1]``."""
        t = self.tasks
        amp = torch.empty(t, 1, 1).uniform_(0.1, 5.0, generator=g)
        phase = torch.empty(t, 1, 1).uniform_(0.0, math.pi, generator=g)
        xs = torch.empty(t, self.shots, 1).uniform_(-5.0, 5.0, generator=g)
        xq = torch.empty(t, self.query, 1).uniform_(-5.0, 5.0, generator=g)
        return xs, amp * torch.sin(xs + phase), xq, amp * torch.sin(xq + phase)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.batches):
            xs, ys, xq, yq = self.draw(g)
            if self.role == "support":
                for _ in range(self.repeat):
                    yield xs, ys
            elif self.role == "query":
                yield xq, yq
            else:
                yield torch.cat([xs, xq], dim=1), torch.cat([ys, yq], dim=1)


def sine_tasks(role: str = "support", tasks: int = 25, shots: int = 10, query: int | None = None,
               batches: int = 5000, repeat: int = 1, seed: int = 0) -> SineTasks:
    """A :class:`SineTasks` stream (the ``data`` of both levels; see the class docstring)."""
    return SineTasks(role, tasks, shots, query, batches, repeat, seed)


def adapted_mse(model, steps: int = 5, lr: float = 0.01, tasks: int = 500, shots: int = 10,
                query: int = 100, seed: int = 10_000) -> dict:
    """Meta-test: MSE on new tasks' query points after ``steps`` SGD steps on ``shots`` points.

    ``model`` is the meta problem (or a :class:`SineMLP`). Each of ``tasks`` held-out tasks
    (drawn from ``seed``, disjoint from the training streams' seeds) starts from the model's
    parameters and takes ``steps`` SGD steps of rate ``lr`` on its support points, exactly as
    in training. Returns ``mse_0`` (before adapting) and ``mse`` (after).
    """
    module = getattr(model, "module", model)
    g = torch.Generator().manual_seed(seed)
    xs, ys, xq, yq = SineTasks(tasks=tasks, shots=shots, query=query).draw(g)
    delta = [torch.zeros(tasks, *p.shape, requires_grad=True) for p in module.parameters()]
    with torch.enable_grad():  # validation runs under no_grad; adapting needs gradients
        with torch.no_grad():
            before = F.mse_loss(module(xq, delta), yq).item()
        for _ in range(steps):
            loss = task_mse(module(xs, delta), ys)
            grads = torch.autograd.grad(loss, delta)
            delta = [(d - lr * gd).detach().requires_grad_() for d, gd in zip(delta, grads)]
    with torch.no_grad():
        after = F.mse_loss(module(xq, delta), yq).item()
    return {"mse_0": before, "mse": after}
