"""Every hypergradient method on the device under test gives the CPU's answer (float64), and
the closed-form one where it is exact; no mlodsl code creates a CPU tensor on the way."""
import pytest
import torch

from tests.support import cuda as H
from mlodsl.runtime.hypergrad.chain import total_gradient

pytestmark = H.requires_device

DATA = H.ridge_data()
W_STAR, HESS, EXACT = H.ridge_exact(*DATA)
LMAX = float(torch.linalg.eigvalsh(HESS).max())

IMPLICIT = {
    "darts": {},
    "neumann": dict(neumann_iterations=400, neumann_alpha=1.0 / LMAX),
    "cg": dict(cg_iterations=10),
    "sama": {},
    "first_order": {},
}


def _hypergradient(method, device):
    """The upper's total gradient at w* on ``device``, with the CPU-tensor trap on."""
    engine, upper, lower = H.ridge_engine(method, device, IMPLICIT[method], data=DATA)
    lower.next_batch()
    batch = upper.next_batch()
    trap = H.CPUTensorTrap(active=H.ON_GPU and device.type != "cpu")
    with trap:
        loss = engine.evaluate_loss(upper, batch)
        grad = total_gradient(engine, upper, loss)[0]
    return grad, trap.hits


@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_implicit_hypergradient_matches_cpu(method):
    got, hits = _hypergradient(method, H.DEVICE)
    ref, _ = _hypergradient(method, H.CPU)
    assert H.same_device(got), got.device
    assert got.dtype == torch.float64
    assert hits == [], f"CPU tensors created by mlodsl on the {H.DEVICE} path: {hits}"
    assert H.close(got, ref, rtol=1e-9, atol=1e-13), (got, ref)


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_converged_methods_reach_the_closed_form_on_the_device(method):
    got, _ = _hypergradient(method, H.DEVICE)
    err = torch.linalg.vector_norm(got.cpu() - EXACT) / torch.linalg.vector_norm(EXACT)
    assert err <= 1e-6, err


def test_sama_with_sgd_is_darts_and_first_order_is_zero():
    sama, _ = _hypergradient("sama", H.DEVICE)
    darts, _ = _hypergradient("darts", H.DEVICE)
    assert H.close(sama, darts, rtol=1e-12, atol=1e-15)
    fo, _ = _hypergradient("first_order", H.DEVICE)
    assert torch.count_nonzero(fo) == 0  # the upper reads lam only through the lower


# ----------------------------------------------------------------------------- whole runs

def _w0():
    g = torch.Generator().manual_seed(5)
    return W_STAR + 0.5 * torch.randn(W_STAR.shape, generator=g, dtype=torch.float64)


RUNS = {
    # name: (method, Config fields, unroll window, lower class, lower optimizer)
    "darts": ("darts", {}, 1, H.RidgeLower, None),
    "neumann": ("neumann", dict(neumann_iterations=3, neumann_alpha=0.5 / LMAX), 1,
                H.RidgeLower, None),
    "cg": ("cg", dict(cg_iterations=3), 1, H.RidgeLower, None),
    "sama-adam": ("sama", {}, 1, H.RidgeLower, lambda ps: torch.optim.Adam(ps, lr=0.05)),
    "first_order": ("first_order", {}, 1, H.RidgeLower, None),
    "unroll": ("unroll", dict(first_order=False), 3, H.RidgeLower, None),
    "unroll-adam": ("unroll", dict(first_order=False), 3, H.RidgeLower,
                    lambda ps: torch.optim.Adam(ps, lr=0.05)),
    "unroll-ckpt": ("unroll", dict(first_order=False, unroll_checkpoint=True), 4,
                    H.RidgeLower, None),
    "unroll-first-order": ("unroll", dict(first_order=True), 3, H.RidgeLower, None),
    "iterative": ("unroll", dict(first_order=False), 3, H.RidgeLowerIter, None),
}


def _run(name, device, trap=True):
    method, cfg, every, cls, opt = RUNS[name]
    engine, upper, lower = H.ridge_engine(method, device, cfg, w0=_w0(), data=DATA,
                                          lower_cls=cls, every=every, iters=4 * every,
                                          upper_lr=0.5, lower_opt=opt)
    t = H.CPUTensorTrap(active=trap and H.ON_GPU and device.type != "cpu")
    with t:
        engine.run()
    return engine, t.hits


@pytest.mark.parametrize("name", sorted(RUNS))
def test_engine_run_matches_cpu(name):
    """Four upper steps: same parameters as on the CPU, all state on the device."""
    dev, hits = _run(name, H.DEVICE)
    ref, _ = _run(name, H.CPU, trap=False)
    assert H.placement_errors(dev) == []
    assert hits == [], f"CPU tensors created by mlodsl on the {H.DEVICE} path: {hits}"
    a, b = H.params_cpu(dev), H.params_cpu(ref)
    moved = H.params_cpu(H.ridge_engine("darts", H.CPU, w0=_w0(), data=DATA)[0])
    assert any(not torch.equal(a[k], moved[k]) for k in a), "nothing was trained"
    for k in a:
        assert torch.isfinite(a[k]).all(), k
        assert H.close(a[k], b[k], rtol=1e-9, atol=1e-12), (k, a[k], b[k])


def test_reinforce_runs_on_the_device_deterministically():
    """Sampling differs between the CPU and a GPU generator: check it runs, stays finite and on
    the device, moves theta, and repeats itself exactly with the same seed."""
    runs = []
    for _ in range(2):
        engine = H.reinforce_engine(H.DEVICE, iters=30, seed=0)
        before = engine.problems["upper"].module.theta.detach().clone()
        trap = H.CPUTensorTrap()
        with trap:
            engine.run()
        assert trap.hits == [], trap.hits
        assert H.placement_errors(engine) == []
        theta = engine.problems["upper"].module.theta.detach()
        assert torch.isfinite(theta).all()
        assert not torch.equal(theta, before)
        baseline = engine.method_state("upper", "lower").get("baseline")
        assert baseline is not None and H.same_device(baseline)
        runs.append(H.params_cpu(engine))
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


# ----------------------------------------------------------------------------- three levels

CG = dict(type="cg", cg_iterations=10, cg_alpha=0.5)
NEU = dict(type="neumann", neumann_iterations=600, neumann_alpha=0.25)


@pytest.mark.parametrize("top_m,mid_m", [(CG, CG), (NEU, CG), (CG, dict(type="darts"))],
                         ids=["cg-cg", "neumann-cg", "cg-darts"])
def test_three_level_hypergradient_matches_cpu(top_m, mid_m):
    out = {}
    for device in (H.DEVICE, H.CPU):
        engine, top, mid, low = H.three_level_engine(device, top_m, mid_m)
        for p in (low, mid, top):
            p.next_batch()
        trap = H.CPUTensorTrap(active=H.ON_GPU and device.type != "cpu")
        with trap:
            out[device.type] = total_gradient(engine, top, engine.evaluate_loss(top, 0))[0]
        assert trap.hits == [], trap.hits
    got = out[H.DEVICE.type]
    assert H.same_device(got)
    assert H.close(got, out["cpu"], rtol=1e-9, atol=1e-12)
    if mid_m["type"] != "darts":  # exact methods: the nested closed form
        exact = H.three_level_exact(H.three_level_consts())
        err = torch.linalg.vector_norm(got.cpu() - exact) / torch.linalg.vector_norm(exact)
        assert err <= 1e-4, err
