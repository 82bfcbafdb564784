"""BatchNorm running statistics advance exactly once per step of their own problem."""
import torch
from torch import nn
import torch.nn.functional as F

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem


class Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x).squeeze(-1) * self.upper().sum(), y)


class Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.lower(x).squeeze(-1), y)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(1))

    def forward(self):
        return self.s


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g) * 3 + 1, torch.randn(16, generator=g))
            for _ in range(n)]


def test_running_statistics_match_plain_training():
    steps = 6
    lower_data, upper_data = batches(steps, 1), batches(steps, 2)
    for method in ("darts", "first_order"):
        net = make_net()
        scale = Scale()
        lo = Lower("lower", Config(), net, torch.optim.SGD(net.parameters(), lr=0.0),
                   train_data_loader=lower_data)
        up = Upper("upper", Config(type=method), scale, torch.optim.SGD(scale.parameters(), lr=0.0),
                   train_data_loader=upper_data)
        e = Engine(EngineConfig(train_iters=steps), [up, lo], {"l2u": {lo: [up]}})
        e.history.console = False
        e.run()

        # reference: the same net, trained mode, one forward per lower batch, nothing else
        ref = make_net()
        for x, _ in lower_data:
            ref(x)
        bn, ref_bn = net[1], ref[1]
        assert bn.num_batches_tracked.item() == steps
        assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6), method
        assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6), method
