"""Shared pieces of the CUDA tests: the device under test, a trap for stray CPU tensors, the
placement check, and small programs (closed-form ridge HPO, a three-level linear program, an
MLP HPO program, a sampling upper for ``reinforce``).

The device under test is ``cuda`` and every test module is skipped when CUDA is not available.
``MLODSL_TEST_DEVICE=cpu`` (or any device name) forces the device instead, so that the test
bodies can be exercised on a machine without a GPU: the comparisons then compare the CPU with
itself and the CPU-tensor trap is inert, but every code path and assertion still runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem, IterativeProblem

# Shared with the hypergradient and runtime suites: the ridge problem with its closed form,
# and the MLP program's pieces.
from tests.support.mlp_hpo import Decay  # noqa: F401
from tests.support.mlp_hpo import Lower as MLPLower
from tests.support.hg_problems import (RidgeLower, RidgeLowerIter, RidgeUpper, Vec,  # noqa: F401
                         ridge_data, ridge_exact)

ROOT = Path(__file__).resolve().parents[2]
MLODSL_DIR = str(ROOT / "mlodsl") + os.sep
TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep

_FORCED = os.environ.get("MLODSL_TEST_DEVICE")
#: the device the tests run on (a ``torch.device``)
DEVICE = torch.device(_FORCED or "cuda")
#: whether the device exists here (``cuda`` needs a GPU; a forced device is taken as given)
AVAILABLE = bool(_FORCED) or torch.cuda.is_available()
#: module-level mark of every test file in this folder
requires_device = pytest.mark.skipif(
    not AVAILABLE, reason="CUDA is not available (MLODSL_TEST_DEVICE=cpu runs these on the CPU)")
#: whether the device under test is a GPU (the CPU-tensor trap and the "not on the CPU"
#: assertions only mean something then)
ON_GPU = DEVICE.type != "cpu"

DT = torch.float64
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- placement

def same_device(t: torch.Tensor, device: torch.device = DEVICE) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` matches any ``cuda:N``)."""
    return t.device.type == device.type and (device.index is None or t.device == device)


def placement_errors(engine, device: torch.device = DEVICE) -> list[str]:
    """Everything of the engine's problems that is not on ``device``: parameters, gradients,
    buffers, optimizer state (``step`` counters may stay on the CPU, as torch.optim keeps them
    unless ``capturable``/``fused``), the current batch, the last loss, fp16 scaler state."""
    bad = []

    def check(what, t):
        if isinstance(t, torch.Tensor) and not same_device(t, device):
            bad.append(f"{what} on {t.device}")

    def walk(what, obj):
        if isinstance(obj, torch.Tensor):
            check(what, obj)
        elif isinstance(obj, (list, tuple)):
            for i, o in enumerate(obj):
                walk(f"{what}[{i}]", o)
        elif isinstance(obj, dict):
            for k, o in obj.items():
                walk(f"{what}[{k!r}]", o)

    for name, p in engine.problems.items():
        if torch.device(p.device).type != device.type:
            bad.append(f"{name}.device is {p.device}")
        for k, t in p.module.named_parameters():
            check(f"{name}.{k}", t)
            if t.grad is not None:
                check(f"{name}.{k}.grad", t.grad)
        for k, t in p.module.named_buffers():
            check(f"{name}.buffer {k}", t)
        for i, (param, state) in enumerate(p.optimizer.state.items()):
            group = next(g for g in p.optimizer.param_groups
                         if any(q is param for q in g["params"]))
            for k, t in state.items():
                if k == "step" and not (group.get("capturable") or group.get("fused")):
                    continue
                check(f"{name}.optimizer.state[{i}][{k!r}]", t)
        walk(f"{name}.cur_batch", p.cur_batch)
        check(f"{name}.last_loss", getattr(p, "last_loss", None))
        if p.unrolled_window.is_open:
            walk(f"{name}.unrolled_window.fast", p.unrolled_window.fast)
    for name, scaler in getattr(engine.precision, "scalers", {}).items():
        check(f"scaler {name}", getattr(scaler, "_scale", None))
    return bad


class CPUTensorTrap(TorchFunctionMode):
    """Records torch calls *made by mlodsl's code* that return a CPU tensor while the run is
    on a GPU: a factory without ``device=``, ``torch.tensor(constant)``, ``.cpu()``, ... .

    Calls made from inside torch itself (torch.optim keeps ``step`` on the CPU; DataLoader
    indices are CPU tensors) and from user code (the tests' own losses) are not counted; thin
    Python wrappers of torch (``Tensor.__rsub__``, ``torch.functional``) are looked through.
    Calls that pass ``device=`` explicitly are deliberate and not counted. ``checkpoint.py``
    is exempt (serialisation is CPU by design). Inert when the device under test is the CPU.
    """

    #: (file, function) of mlodsl that may make CPU tensors on purpose: ``write_back`` gives a
    #: torch optimizer that never stepped its ``step`` counter, which torch.optim itself keeps
    #: on the CPU (unless ``capturable``/``fused``; see the report on ``optim.py``).
    ALLOWED = {("optim.py", "write_back")}

    _WRAPPERS = ("_tensor.py", "functional.py", "overrides.py", "_jit_internal.py",
                 "_VF.py", "random.py")

    def __init__(self, active: bool = ON_GPU):
        super().__init__()
        self.active = active
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.active and "device" not in kwargs and _has_cpu_tensor(out):
            where = self._caller()
            if where is not None:
                self.hits.append(f"{getattr(func, '__qualname__', func)} at {where}")
        return out

    def _caller(self) -> str | None:
        frame = sys._getframe(2)  # 0: _caller, 1: __torch_function__, 2: whoever called torch
        while frame is not None:
            fname = frame.f_code.co_filename
            if fname.startswith(TORCH_DIR):
                if os.path.basename(fname) in self._WRAPPERS and "/torch/" + os.path.basename(
                        fname) in fname.replace(os.sep, "/"):
                    frame = frame.f_back  # a thin wrapper at torch's top level: look through
                    continue
                return None  # torch's own internals decide their devices
            if fname.startswith(MLODSL_DIR) and not fname.endswith("checkpoint.py"):
                if (os.path.basename(fname), frame.f_code.co_name) in self.ALLOWED:
                    return None
                return f"{os.path.relpath(fname, ROOT)}:{frame.f_lineno} ({frame.f_code.co_name})"
            return None  # user code
        return None


def _has_cpu_tensor(out) -> bool:
    if isinstance(out, torch.Tensor):
        return out.device.type == "cpu"
    if isinstance(out, (list, tuple)):
        return any(_has_cpu_tensor(o) for o in out)
    return False


def quiet(engine):
    """Turn off console logging (the tests read the history instead)."""
    engine.history.console = False
    return engine


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-8, atol: float = 1e-10) -> bool:
    """``a`` and ``b`` equal to a tolerance, wherever they live."""
    return torch.allclose(a.detach().to(CPU, DT), b.detach().to(CPU, DT), rtol=rtol, atol=atol)


def params_cpu(engine) -> dict[str, torch.Tensor]:
    """Every problem's parameters as detached CPU float64 copies, by qualified name."""
    return {f"{n}.{k}": v.detach().to(CPU, DT).clone() for n, p in engine.problems.items()
            for k, v in p.module.named_parameters()}


# ----------------------------------------------------------------------------- ridge HPO
# g(w, lam) = |X w - y|^2 / (2n) + sum lam w^2 / 2,  f(w) = |Xv w - yv|^2 / (2m):
# w*(lam) = H^-1 X'y / n with H = X'X/n + diag(lam), df/dlam = -diag(w*) H^-1 grad f(w*).

# The ridge problem and its closed form are the hypergradient suite's (hg_problems).

def ridge_engine(method: str, device, config: dict | None = None, w0=None, data=None,
                 lower_cls=RidgeLower, every: int = 1, iters: int = 1, upper_lr: float = 1.0,
                 lower_opt=None, engine_kwargs: dict | None = None):
    """``(engine, upper, lower)``: penalties above ridge weights, with ``method``, on ``device``.

    The data are handed over on the CPU: moving them is the engine's job.
    """
    X, y, Xv, yv, lam = data if data is not None else ridge_data()
    w_star = ridge_exact(X, y, Xv, yv, lam)[0]
    lower_mod, upper_mod = Vec(w_star if w0 is None else w0), Vec(lam)
    make_opt = lower_opt or (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5))
    lower = lower_cls(name="lower", module=lower_mod, optimizer=make_opt(lower_mod.parameters()),
                      train_data_loader=[(X, y)], config=Config(unroll_steps=every))
    upper = RidgeUpper(name="upper", module=upper_mod,
                       optimizer=torch.optim.SGD(upper_mod.parameters(), lr=upper_lr),
                       train_data_loader=[(Xv, yv)],
                       config=Config(type=method, unroll_steps=every, **(config or {})))
    cfg = dict(train_iters=iters, valid_step=0, device=str(device))
    cfg.update(engine_kwargs or {})
    engine = Engine(config=EngineConfig(**cfg), problems=[upper, lower],
                    dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    return quiet(engine), upper, lower


# ----------------------------------------------------------------------------- three levels
# low: g(w; a, b) = w'Aw/2 - w'(Ba + Cb); mid: a'Da/2 - a'Eb + k'w; top: |w-q|^2/2 + |a-r|^2/2
# + s|b|^2/2. Linear enough that level-by-level implicit differentiation is exact.

def three_level_consts(seed: int = 3):
    """The constants of the three-level program (CPU, float64)."""
    g = torch.Generator().manual_seed(seed)

    def spd(n):
        m = torch.randn(n, n, generator=g, dtype=DT)
        return m @ m.T / n + torch.eye(n, dtype=DT)

    A, D = spd(4), spd(3)
    B, C, E = (torch.randn(*s, generator=g, dtype=DT) for s in ((4, 3), (4, 2), (3, 2)))
    k, q, r = (torch.randn(n, generator=g, dtype=DT) for n in (4, 4, 3))
    b0 = torch.randn(2, generator=g, dtype=DT)
    return dict(A=A, B=B, C=C, D=D, E=E, k=k, q=q, r=r, s=0.3, b0=b0)


def three_level_nested(c, b):
    """``(w*, a*)`` at top parameters ``b``."""
    a = torch.linalg.solve(c["D"], c["E"] @ b - c["B"].T @ torch.linalg.solve(c["A"], c["k"]))
    w = torch.linalg.solve(c["A"], c["B"] @ a + c["C"] @ b)
    return w, a


def three_level_exact(c):
    """d F / d b of the nested exact solution, by central finite differences (float64)."""
    def F(b):
        w, a = three_level_nested(c, b)
        return (((w - c["q"]) ** 2).sum() / 2 + ((a - c["r"]) ** 2).sum() / 2
                + c["s"] * (b ** 2).sum() / 2)
    b0, h = c["b0"], 1e-6
    return torch.stack([(F(b0 + h * e) - F(b0 - h * e)) / (2 * h) for e in torch.eye(2, dtype=DT)])


def three_level_engine(device, top: dict, mid: dict, lr: float = 0.0, iters: int = 1,
                       iterative_low: bool = False):
    """``(engine, top, mid, low)`` for the three-level program; constants are moved to
    ``device`` through a buffer-free closure (the tests' own code, not mlodsl's)."""
    c = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
         for k, v in three_level_consts().items()}

    class Low(IterativeProblem if iterative_low else ImplicitProblem):
        def training_step(self, batch):
            w, a, b = self.module(), self.mid(), self.top()
            return w @ c["A"] @ w / 2 - w @ (c["B"] @ a + c["C"] @ b)

    class Mid(ImplicitProblem):
        def training_step(self, batch):
            a, w, b = self.module(), self.low(), self.top()
            return a @ c["D"] @ a / 2 - a @ c["E"] @ b + c["k"] @ w

    class Top(ImplicitProblem):
        def training_step(self, batch):
            b, w, a = self.module(), self.low(), self.mid()
            return (((w - c["q"]) ** 2).sum() / 2 + ((a - c["r"]) ** 2).sum() / 2
                    + c["s"] * (b ** 2).sum() / 2)

    w, a = three_level_nested(three_level_consts(), three_level_consts()["b0"])
    mods = Vec(w), Vec(a), Vec(three_level_consts()["b0"])

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=lr)

    low = Low(name="low", module=mods[0], optimizer=sgd(mods[0]), train_data_loader=[0])
    midp = Mid(name="mid", module=mods[1], optimizer=sgd(mods[1]), train_data_loader=[0],
               config=Config(**mid))
    topp = Top(name="top", module=mods[2], optimizer=sgd(mods[2]), train_data_loader=[0],
               config=Config(**top))
    engine = Engine(config=EngineConfig(train_iters=iters, valid_step=0, device=str(device)),
                    problems=[topp, midp, low],
                    dependencies={"l2u": {low: [midp], midp: [topp]},
                                  "u2l": {topp: [midp, low], midp: [low]}})
    return quiet(engine), topp, midp, low


# ----------------------------------------------------------------------------- MLP HPO

class Net(nn.Module):
    """A 20-16-3 MLP with a BatchNorm (a buffer that must follow the module)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


# Decay and the lower's loss (MLPLower) are MLP HPO program's (tests.support.mlp_hpo).

class MLPLowerIter(IterativeProblem):
    """The same loss, stepped differentiably (the upper unrolls through it)."""

    training_step = MLPLower.training_step


class MLPUpper(ImplicitProblem):
    """The lower's cross-entropy on held-out batches."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.lower(x), y)

    def param_callback(self, params):
        for p in params:
            p.data.clamp_(min=0.0)


class LossTrace(Engine):
    """Records the lower's loss after each iteration (one sync per iteration: tests only)."""

    def on_iteration_end(self):
        self.trace = getattr(self, "trace", [])
        self.trace.append(float(self.problems["lower"].last_loss))


def mlp_data(n: int = 96, seed: int = 123):
    """A learnable 3-class data set in 20 dimensions (CPU tensors)."""
    protos = 1.5 * torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = protos[y] + torch.randn(n, 20, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def mlp_engine(device, iters: int = 20, method: str = "darts", every: int = 2,
               engine_kwargs: dict | None = None, dtype=torch.float32, iterative: bool = False,
               upper_config: dict | None = None, lower_config: dict | None = None, seed: int = 0):
    """A bilevel MLP HPO program on ``device``, identical for identical arguments."""
    from mlodsl.runtime.data import make_loader

    torch.manual_seed(seed)
    net, decay = Net().to(dtype), Decay().to(dtype)

    def data(n, s):
        x, y = mlp_data(n, s).tensors
        return torch.utils.data.TensorDataset(x.to(dtype), y)

    lower = (MLPLowerIter if iterative else MLPLower)(
        name="lower", module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        train_data_loader=make_loader(data(96, 123), 16, shuffle=True, seed=seed + 1),
        config=Config(**(lower_config or {})))
    upper = MLPUpper(name="upper", module=decay,
                     optimizer=torch.optim.Adam(decay.parameters(), lr=1e-3),
                     train_data_loader=make_loader(data(64, 7), 16, shuffle=True, seed=seed + 2),
                     config=Config(type=method, unroll_steps=every, **(upper_config or {})))
    cfg = dict(train_iters=iters, valid_step=0, seed=seed, device=str(device))
    cfg.update(engine_kwargs or {})
    engine = LossTrace(config=EngineConfig(**cfg), problems=[upper, lower],
                       dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    return quiet(engine)


# ----------------------------------------------------------------------------- reinforce
# The upper holds logits theta over K values; the lower samples i ~ softmax(theta) and steps
# toward c_i; the upper's loss is (w - t)^2 / 2.

def reinforce_engine(device, iters: int = 30, seed: int = 0):
    """A sampling upper over a lower (``reinforce``), on ``device``."""
    c_vals = torch.tensor([0.0, 1.0, 3.0], dtype=DT).to(device)

    class Sampler(ImplicitProblem):
        def training_step(self, batch):
            logp = torch.log_softmax(self.upper.module.theta, 0)
            i = torch.multinomial(logp.detach().exp(), 1)[0]
            return {"loss": (self.module.w - c_vals[i]) ** 2 / 2, "log_prob": logp[i]}

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            return (self.lower.module.w - 0.5) ** 2 / 2

    lm, um = nn.Module(), nn.Module()
    lm.w = nn.Parameter(torch.zeros((), dtype=DT))
    um.theta = nn.Parameter(torch.tensor([0.2, -0.4, 0.1], dtype=DT))
    lower = Sampler(name="lower", module=lm, optimizer=torch.optim.SGD(lm.parameters(), lr=1.0),
                    train_data_loader=[0])
    upper = Upper(name="upper", module=um, optimizer=torch.optim.SGD(um.parameters(), lr=0.1),
                  train_data_loader=[0], config=Config(type="reinforce"))
    engine = Engine(config=EngineConfig(train_iters=iters, valid_step=0, seed=seed,
                                        device=str(device)),
                    problems=[upper, lower],
                    dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    return quiet(engine)
