"""The seed's example, through the public Python API, on the bundled digits data."""
import pytest
import torch

from examples.hpo import hpo_python
from examples.hpo.parts import digits


@pytest.fixture(scope="module")
def data():
    return tuple(digits(s) for s in ("train", "val", "test"))


@pytest.mark.slow
def test_seed_program_learns_and_drives_decay_to_the_clamp(data):
    engine = hpo_python.build("seed", data, [64, 200, 10], iterations=300, seed=0,
                              valid_step=100)
    engine.history.console = False
    engine.run()
    summary = hpo_python.summarize(engine)
    assert summary["acc"] > 80.0  # chance is 10%
    assert engine.problems["hpo"].count == 300 and engine.problems["classifier"].count == 300
    # the seed's formulation pushes the coefficients down (towards the clamp)
    assert summary["decay_mean"] < 5e-4
    assert [r["iteration"] for r in engine.history.validation()] == [100, 200, 300]


def test_heldout_variant_runs_and_keeps_decay_positive(data):
    engine = hpo_python.build("heldout", data, [64, 200, 10], iterations=60, seed=0,
                              valid_step=60)
    engine.history.console = False
    engine.run()
    decays = torch.cat([d.flatten() for d in engine.hpo.module()])
    assert decays.min().item() >= torch.tensor(1e-8).item()  # clamped, in float32
    assert hpo_python.summarize(engine)["acc"] > 30.0


def test_same_seed_same_parameters(data):
    params = []
    for _ in range(2):
        engine = hpo_python.build("seed", data, [64, 200, 10], iterations=20, seed=3,
                                  valid_step=1000)
        engine.history.console = False
        engine.run()
        params.append([p.detach().clone() for p in engine.classifier.module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def _write_idx(path, array, gz):
    import gzip
    import struct
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(">" + "I" * array.dim(),
                                                                     *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
    from examples.hpo.parts import mnist
    g = torch.Generator().manual_seed(0)
    sfx = ".gz" if gz else ""
    train_x = torch.randint(0, 256, (30, 28, 28), generator=g)
    train_y = torch.randint(0, 10, (30,), generator=g)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", train_x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", train_y, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", train_x[:7], gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", train_y[:7], gz)
    tr = mnist(str(tmp_path), "train", val_size=10)
    va = mnist(str(tmp_path), "val", val_size=10)
    te = mnist(str(tmp_path), "test")
    assert (len(tr), len(va), len(te)) == (20, 10, 7)
    x, y = tr[0]
    assert x.shape == (784,) and y.item() == train_y[0].item()
    expected = (train_x[0].float().flatten() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected)
