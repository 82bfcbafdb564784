"""TrainingState: the whole training state as one structure (mlodsl.runtime.state)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem, IterativeProblem
from mlodsl.runtime.data import make_loader
from mlodsl.runtime.state import TrainingState


class _Lower(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        out = F.dropout(self.module(x), 0.2).squeeze(-1)  # draws from torch's RNG
        return F.mse_loss(out, y) + self.upper.module.weight.exp().sum() * \
            (self.module.weight ** 2).sum()


class _IterLower(_Lower, IterativeProblem):
    pass


class _Upper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.lower(x).squeeze(-1), y)


def _engine(iters: int, iterative: bool = False) -> Engine:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(24, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    net, decay = nn.Linear(3, 1), nn.Linear(1, 1, bias=False)
    lower = (_IterLower if iterative else _Lower)(
        name="lower", module=net, train_data_loader=make_loader(data, 5, seed=3),
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    upper = _Upper(name="upper", module=decay, optimizer=torch.optim.Adam(decay.parameters(),
                                                                         lr=0.01),
                   train_data_loader=make_loader(data, 6, seed=4),
                   config=Config(type="unroll" if iterative else "darts", unroll_steps=2))
    engine = Engine(config=EngineConfig(train_iters=iters, seed=0), problems=[upper, lower],
                    dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    engine.history.console = False
    return engine


def _params(engine):
    return {f"{n}.{k}": v.detach().clone() for n, p in engine.problems.items()
            for k, v in p.module.named_parameters()}


def test_flatten_gives_the_live_tensors_and_unflatten_inverts_it():
    engine = _engine(2)
    engine.run()
    state = engine.training_state()
    leaves, spec = state.flatten()
    assert spec.n_leaves == len(leaves)
    # Live references: the modules' own parameters, not copies.
    live = {id(p) for prob in engine.problems.values() for p in prob.module.parameters()}
    assert live <= {id(t) for t in leaves}
    again = TrainingState.unflatten(spec, leaves)
    assert again.global_step == 2 and again.problems["lower"].count == 2
    assert [id(t) for t in again.tensors()] == [id(t) for t in leaves]
    with pytest.raises(ValueError):
        TrainingState.unflatten(spec, leaves[:-1])


def test_a_loaded_snapshot_takes_the_same_steps_again():
    engine = _engine(3)
    engine.run()
    snapshot = engine.training_state().copy()
    engine.config.train_iters = 7
    engine.run()
    first = _params(engine)
    records = list(engine.history.records)
    assert engine.global_step == 7
    engine.load_training_state(snapshot)
    assert engine.global_step == 3 and engine.problems["lower"].count == 3
    engine.run()
    second = _params(engine)
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert engine.history.records == records


def test_an_open_window_is_part_of_the_state_and_cannot_be_saved():
    engine = _engine(1, iterative=True)
    engine.run()  # the lower has stepped once of its two: its window is open
    state = engine.training_state()
    window = state.problems["lower"].window
    assert window is not None and window["steps"] == 1
    assert all(t.requires_grad for t in window["fast"])
    assert state.has_open_window()
    with pytest.raises(ValueError):
        state.to_checkpoint(None)
    engine.config.train_iters = 2
    engine.run()  # the upper stepped and closed the window
    assert engine.training_state().problems["lower"].window is None
