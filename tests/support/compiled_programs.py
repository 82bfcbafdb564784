"""Small seed-shaped programs for the compiled mode's tests, in both routes.

The seed's HPO program shrunk to a 12-10-3 MLP without bias (lower: cross-entropy plus a
per-weight decay from the upper), a per-weight decay upper (clamped positive by ``after_step``),
deterministic infinite loaders. :func:`mlo_engine` builds it from ``.mlo`` text,
:func:`api_engine` with the Python API (a traceable ``training_step``); both take the method,
its arguments and the optimizers, and build the same modules, data and seeds each call.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import mlodsl
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem

D, H, C, N, B = 12, 10, 3, 96, 8


class Net(nn.Module):
    """The lower's network."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, H, bias=False)
        self.fc2 = nn.Linear(H, C, bias=False)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Decay(nn.Module):
    """The upper's per-weight decays."""

    def __init__(self):
        super().__init__()
        self.d1 = nn.Parameter(torch.full((H, D), 0.05))
        self.d2 = nn.Parameter(torch.full((C, H), 0.05))

    def forward(self):
        return self.d1, self.d2


def reg_loss(net, decay):
    """``sum(decay * w**2) / 2`` over both layers."""
    d1, d2 = decay
    return (d1 * net.fc1.weight ** 2).sum() / 2 + (d2 * net.fc2.weight ** 2).sum() / 2


def clamp_decay(params):
    """The seed's ``param_callback``: decays stay positive."""
    for p in params:
        p.data.clamp_(min=1e-4)


class Loader:
    """An endless stream of ``(x, y)`` batches from a fixed data set, seeded."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(100 + seed)
        self.x = torch.randn(N, D, generator=g)
        self.y = torch.randint(0, C, (N,), generator=g)
        self.seed = seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            i = torch.randint(0, N, (B,), generator=g)
            yield self.x[i], self.y[i]


def _modules():
    torch.manual_seed(0)
    return Net(), Decay()


def mlo_source(method: str, args: str = "", *, compile: bool, iterations: int = 50,
               every: int = 1, lower_opt: str = "SGD(lr=0.1, momentum=0.9)",
               upper_opt: str = "Adam(lr=0.01)", lower_extra: str = "",
               upper_extra: str = "", engine_extra: str = "") -> str:
    """The ``.mlo`` program's text."""
    return f"""
import torch.nn.functional as F

problem classifier {{
    module     = net
    optimizer  = {lower_opt}
    data       = cdata
    loss(x, y) = F.cross_entropy(classifier(x), y) + reg_loss(classifier, hpo())
    {lower_extra}
}}

problem hpo depends classifier every {every} via {method}({args}) {{
    module     = decay
    optimizer  = {upper_opt}
    data       = hdata
    loss(x, y) = F.cross_entropy(classifier(x), y)
    after_step = clamp_decay
    {upper_extra}
}}

engine {{
    iterations = {iterations}
    seed       = 0
    compile    = {compile}
    {engine_extra}
}}
"""


def mlo_engine(method: str, args: str = "", **kwargs):
    """The ``.mlo`` route's engine (fresh modules, data and seeds)."""
    net, decay = _modules()
    plan = mlodsl.compile(mlo_source(method, args, **kwargs), namespace={
        "net": net, "decay": decay, "reg_loss": reg_loss, "clamp_decay": clamp_decay,
        "cdata": Loader(1), "hdata": Loader(2)})
    return plan.build_engine(console=False)


class Classifier(ImplicitProblem):
    """The lower, hand-written."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.module(x), y) + reg_loss(self.module, self.hpo())


class HPO(ImplicitProblem):
    """The upper, hand-written; its ``param_callback`` clamps."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y)

    def param_callback(self, params):
        clamp_decay(params)


def api_engine(method: str, *, compile: bool, iterations: int = 50, every: int = 1,
               lower_opt=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
               upper_opt=lambda p: torch.optim.Adam(p, lr=0.01), engine: dict | None = None,
               lower_class=None, lower_config: dict | None = None, **method_fields):
    """The Python API route's engine (fresh modules, data and seeds); ``engine``: more
    ``EngineConfig`` fields; ``lower_class``, ``lower_config``: the lower's class (default
    :class:`Classifier`) and ``Config`` fields."""
    net, decay = _modules()
    mlo = dict(type=method, unroll_steps=every, **method_fields)
    classifier = (lower_class or Classifier)(
        name="classifier", module=net, optimizer=lower_opt(net.parameters()),
        train_data_loader=Loader(1), config=Config(**(lower_config or {})))
    hpo = HPO(name="hpo", module=decay, optimizer=upper_opt(decay.parameters()),
              train_data_loader=Loader(2), config=Config(**mlo))
    return Engine(config=EngineConfig(train_iters=iterations, valid_step=0, seed=0,
                                      compile=compile, **(engine or {})),
                  problems=[hpo, classifier],
                  dependencies={"l2u": {classifier: [hpo]}, "u2l": {hpo: [classifier]}})


def parameters(engine) -> dict[str, list[torch.Tensor]]:
    """Every problem's trainable parameters (copies)."""
    return {n: [p.detach().clone() for p in prob.trainable_parameters()]
            for n, prob in engine.problems.items()}


def assert_same_parameters(a, b, rtol: float = 1e-5) -> None:
    """Relative agreement per tensor (on the tensor's scale), and something was trained."""
    for name in a:
        for x, y in zip(a[name], b[name]):
            scale = x.abs().max().clamp_min(1e-12)
            assert float((x - y).abs().max() / scale) <= rtol, name


class Scale(nn.Module):
    """A third level: one scale on the middle problem's decays."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.5))

    def forward(self):
        return self.s


def three_level_engine(compile: bool, lower_method: str = "darts()",
                       upper_method: str = "neumann(iterations=2, alpha=0.5)",
                       iterations: int = 40):
    """classifier <- hpo (lower_method) <- meta (upper_method, every 2): a chain of three."""
    net, decay = _modules()
    scale = Scale()
    src = f"""
import torch.nn.functional as F

problem classifier {{
    module     = net
    optimizer  = SGD(lr=0.1, momentum=0.9)
    data       = cdata
    loss(x, y) = F.cross_entropy(classifier(x), y) + reg_loss(classifier, hpo())
}}

problem hpo depends classifier via {lower_method} {{
    module     = decay
    optimizer  = Adam(lr=0.01)
    data       = hdata
    loss(x, y) = F.cross_entropy(classifier(x), y) + 0.01 * meta() * ((hpo()[0] ** 2).sum() + (hpo()[1] ** 2).sum())
    after_step = clamp_decay
}}

problem meta depends hpo every 2 via {upper_method} {{
    module     = scale
    optimizer  = SGD(lr=50.0)
    data       = mdata
    loss(x, y) = F.cross_entropy(classifier(x), y)
}}

engine {{
    iterations = {iterations}
    seed       = 0
    compile    = {compile}
}}
"""
    plan = mlodsl.compile(src, namespace={
        "net": net, "decay": decay, "scale": scale, "reg_loss": reg_loss,
        "clamp_decay": clamp_decay, "cdata": Loader(1), "hdata": Loader(2),
        "mdata": Loader(3)})
    return plan.build_engine(console=False)
