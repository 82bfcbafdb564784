"""Data parallel on torch.distributed (gloo, 2 CPU processes) against one process.

The lower's Dataset is sharded by ``make_loader`` (DistributedSampler); the upper's data is a
list of batches, used as is on every rank. With every rank seeing the same upper batch, the
average of the ranks' darts hypergradients is the hypergradient of the combined lower batch,
so two processes with per-rank batch 8 must match one process with batch 16.
"""
import os

import pytest
import torch

from tests.support import mlp_hpo as P
from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime import distributed as dist
from mlodsl.runtime.data import make_loader


def _upper_batches():
    x, y = P.dataset(64, seed=7).tensors
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def _engine(batch: int, **kw):
    return P.build(12, lower_data=make_loader(P.dataset(), batch, shuffle=False),
                   upper_data=_upper_batches(), engine_kwargs=kw)


def _worker(out_dir: str) -> None:
    """One rank: train, save parameters, and report what this rank did."""
    torch.set_num_threads(1)
    ck = os.path.join(out_dir, "ck")
    engine = _engine(8, strategy="distributed", checkpoint_dir=ck, checkpoint_every=6,
                     run_dir=os.path.join(out_dir, "run"))
    sampler = engine.lower.train_data_loader.sampler
    calls = []
    validation = engine.validation
    engine.validation = lambda: (calls.append(1), validation())[1]
    engine.run()
    rank = dist.rank()
    torch.save({"params": P.params_of(engine), "sampler": type(sampler).__name__,
                "validations": len(calls), "records": len(engine.history.validation()),
                "device": str(engine.lower.device)},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_combined_batch(tmp_path):
    dist.launch(2, _worker, str(tmp_path))
    single = _engine(16)
    single.history.console = False
    single.run()
    ref = P.params_of(single)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["sampler"] == "DistributedSampler"
        for k in ref:
            assert torch.allclose(got["params"][k], ref[k], atol=1e-5, rtol=0), (rank, k)
        # every rank follows the validations, but only rank 0 computes them
        assert got["records"] == len(single.history.validation())
    assert torch.load(tmp_path / "rank0.pt")["validations"] == 12 // 5
    assert torch.load(tmp_path / "rank1.pt")["validations"] == 0
    # only rank 0 writes checkpoints and the run folder
    assert sorted(os.listdir(tmp_path / "ck")) == ["ckpt-00000006.pt", "ckpt-00000012.pt"]
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_make_loader_without_distribution_is_a_seeded_loader():
    ds = P.dataset()
    a = [y.tolist() for _, y in make_loader(ds, 16, shuffle=True, seed=3)]
    b = [y.tolist() for _, y in make_loader(ds, 16, shuffle=True, seed=3)]
    assert a == b and len(a) == 6
    assert len(list(make_loader(ds, 40, shuffle=False, drop_last=True))) == 2


def test_strategy_distributed_without_a_launcher_is_a_clear_error(monkeypatch):
    from mlodsl import MLOError

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MLOError, match="torchrun"):
        _engine(8, strategy="distributed")
    assert not dist.wants_distributed("default")
    with pytest.raises(MLOError, match="not supported yet"):
        dist.wants_distributed("fsdp")


class _ScaledLower(ImplicitProblem):
    """The upper scales the lower's inputs: the lower's best-response Jacobian depends on the
    batch, so per-rank hypergradients averaged are *not* the combined-batch one."""

    def training_step(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.module(x * self.upper()), y)


class _ScaleUpper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.lower(x), y)


class _Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(20))

    def forward(self):
        return self.s


def _both_sharded(batch: int, **kw):
    torch.manual_seed(0)
    net, scale = P.Net(), _Scale()
    lower = _ScaledLower(name="lower", module=net, config=Config(),
                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                         train_data_loader=make_loader(P.dataset(), batch, shuffle=False))
    upper = _ScaleUpper(name="upper", module=scale, config=Config(type="darts"),
                        optimizer=torch.optim.SGD(scale.parameters(), lr=0.5),
                        train_data_loader=make_loader(P.dataset(64, seed=7), batch,
                                                      shuffle=False))
    return Engine(EngineConfig(train_iters=8, valid_step=0, **kw), [upper, lower],
                  {"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})

def _sharded_worker(out_dir: str) -> None:
    """One rank of a run where the upper's data is sharded too."""
    torch.set_num_threads(1)
    engine = _both_sharded(8, strategy="distributed")
    engine.history.console = False
    engine.run()
    torch.save(P.params_of(engine), os.path.join(out_dir, f"rank{dist.rank()}.pt"))


@pytest.mark.slow
def test_sharded_upper_batches_give_the_combined_batch_hypergradient(tmp_path):
    # The upper's cotangent v is averaged across ranks before darts pushes it, so the ranks'
    # averaged hypergradients equal darts on the combined upper and lower batches.
    dist.launch(2, _sharded_worker, str(tmp_path))
    single = _both_sharded(16)
    single.history.console = False
    single.run()
    ref = P.params_of(single)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=0), (rank, k)
