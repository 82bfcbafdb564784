"""Engine runs on the device under test keep everything there: parameters, gradients, buffers,
optimizer state, batches and losses (no silent fallback to the CPU), for darts, unroll and a
three-level program; a float64 MLP run gives the CPU's parameters."""
import os

import pytest
import torch

from tests.support import cuda as H
from mlodsl import MLOError
from mlodsl.runtime.device import resolve_device

pytestmark = H.requires_device


def _run_trapped(engine):
    trap = H.CPUTensorTrap()
    with trap:
        engine.run()
    return trap.hits


def test_trap_catches_a_cpu_tensor_made_by_mlodsl_code():
    """The trap itself: a factory call without device= in a file under mlodsl/ is caught."""
    ns = {"torch": torch}
    fake = os.path.join(H.MLODSL_DIR, "runtime", "hypergrad", "_trap_selftest.py")
    exec(compile("def make(x):\n    return x * torch.tensor(2.0)\n", fake, "exec"), ns)
    trap = H.CPUTensorTrap(active=True)
    with trap:
        ns["make"](torch.ones(2, device=H.DEVICE))  # the product is on the device...
        torch.zeros(2)  # ...and the tests' own CPU tensors do not count
    assert trap.hits and all("_trap_selftest.py:2 (make)" in h for h in trap.hits), trap.hits
    assert trap.hits[0].split(" at ")[0].endswith("tensor"), trap.hits
    if H.ON_GPU:  # the product lives on the device: only the constant is caught
        assert len(trap.hits) == 1, trap.hits


@pytest.mark.parametrize("method,iterative,extra", [
    ("darts", False, {}),
    ("neumann", False, dict(neumann_iterations=2, neumann_alpha=0.1)),
    ("unroll", True, dict(first_order=False)),
    ("unroll", False, dict(first_order=False, unroll_checkpoint=True)),
], ids=["darts", "neumann", "unroll", "unroll-ckpt"])
def test_mlp_run_stays_on_the_device(method, iterative, extra):
    engine = H.mlp_engine(H.DEVICE, iters=12, method=method, every=3 if method == "unroll" else 2,
                          iterative=iterative, upper_config=extra)
    before = H.params_cpu(engine)
    hits = _run_trapped(engine)
    assert hits == [], f"CPU tensors created by mlodsl: {hits}"
    assert H.placement_errors(engine) == []
    after = H.params_cpu(engine)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["upper.wd"], after["upper.wd"]), "the upper never stepped"
    bn = engine.problems["lower"].module.bn
    assert H.same_device(bn.running_mean) and int(bn.num_batches_tracked) == 12


def test_float64_mlp_run_matches_cpu():
    """BatchNorm buffers, momentum and Adam state included: float64 CUDA = CPU to 1e-9."""
    runs = {}
    for device in (H.DEVICE, H.CPU):
        engine = H.mlp_engine(device, iters=10, dtype=torch.float64)
        engine.run()
        runs[device.type] = engine
    a, b = H.params_cpu(runs[H.DEVICE.type]), H.params_cpu(runs["cpu"])
    for k in a:
        assert H.close(a[k], b[k], rtol=1e-7, atol=1e-9), k
    ba = runs[H.DEVICE.type].problems["lower"].module.bn.running_var
    bb = runs["cpu"].problems["lower"].module.bn.running_var
    assert H.close(ba, bb, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mid", ["cg", "darts", "unroll"])
def test_three_level_run_stays_on_the_device(mid):
    top_m = dict(type="cg", cg_iterations=3, cg_alpha=0.5)
    mid_m = dict(type=mid, first_order=False)
    engine, top, midp, low = H.three_level_engine(H.DEVICE, top_m, mid_m, lr=0.05, iters=4,
                                                  iterative_low=mid == "unroll")
    before = top.module.p.detach().clone()
    hits = _run_trapped(engine)
    assert hits == [], hits
    assert H.placement_errors(engine) == []
    assert torch.isfinite(top.module.p).all() and not torch.equal(before, top.module.p.detach())
    ref, rtop, _, _ = H.three_level_engine(H.CPU, top_m, mid_m, lr=0.05, iters=4,
                                           iterative_low=mid == "unroll")
    ref.run()
    for k, v in H.params_cpu(ref).items():
        assert H.close(H.params_cpu(engine)[k], v, rtol=1e-9, atol=1e-12), k


def test_device_spellings():
    """EngineConfig(device=...) and Engine(device=...) agree; 'auto' picks CUDA when there is one."""
    a = H.mlp_engine(H.DEVICE, iters=1)
    assert a.problems["lower"].device.type == H.DEVICE.type
    if H.ON_GPU:
        assert resolve_device("auto").type == "cuda"
        assert resolve_device(None).type == "cuda"
        auto = H.mlp_engine("auto", iters=1)
        assert auto.problems["lower"].device.type == "cuda"
        assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_a_missing_gpu_is_a_clear_error():
    """cuda:7 on a machine with fewer GPUs (or none): an MLOError naming the device."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(MLOError, match="cuda:7"):
        resolve_device("cuda:7")
    with pytest.raises(MLOError, match="cuda:7"):
        H.mlp_engine("cuda:7", iters=1)


def test_optimizer_state_loaded_before_the_engine_moves_to_the_device():
    """A user who restores an optimizer's state (on the CPU) before building the engine:
    momentum and Adam moments follow the module to the device, and training goes on."""
    from mlodsl import Config, Engine, EngineConfig
    from mlodsl.runtime.data import make_loader

    torch.manual_seed(0)
    net, decay = H.Net(), H.Decay()
    opt_net = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_decay = torch.optim.Adam(decay.parameters(), lr=1e-3)
    for opt, module in ((opt_net, net), (opt_decay, decay)):  # one CPU step: state exists
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        opt.zero_grad()
    assert all(s for s in opt_net.state.values())
    lower = H.MLPLower(name="lower", module=net, optimizer=opt_net,
                       train_data_loader=make_loader(H.mlp_data(96, 123), 16, shuffle=True,
                                                     seed=1), config=Config())
    upper = H.MLPUpper(name="upper", module=decay, optimizer=opt_decay,
                       train_data_loader=make_loader(H.mlp_data(64, 7), 16, shuffle=True,
                                                     seed=2),
                       config=Config(type="darts", unroll_steps=2))
    engine = H.quiet(Engine(config=EngineConfig(train_iters=6, valid_step=0,
                                                device=str(H.DEVICE)),
                            problems=[upper, lower],
                            dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}}))
    engine.run()
    assert H.placement_errors(engine) == []
