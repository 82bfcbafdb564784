"""Data parallel on torch.distributed (gloo, 2 CPU processes) against one process.

The lower's Dataset is sharded by ``make_loader`` (DistributedSampler); the upper's data is a
list of batches, used as is on every rank. With every rank seeing the same upper batch, the
average of the ranks' darts hypergradients is the hypergradient of the combined lower batch,
so two processes with per-rank batch 8 must match one process with batch 16.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

import _programs as P
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
    sys.path.insert(0, str(Path(__file__).parent))
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
