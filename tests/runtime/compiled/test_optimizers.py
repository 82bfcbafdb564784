"""The functional optimizers of the compiled mode give torch.optim's numbers."""
import pytest
import torch

from mlodsl.runtime.compiled.optimizers import FunctionalOptimizer, NotCapturable

CASES = [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    (torch.optim.Adam, dict(lr=0.01, maximize=True, eps=1e-6)),
    (torch.optim.RMSprop, dict(lr=0.01)),
    (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
    (torch.optim.Adagrad, dict(lr=0.1)),
    (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.01,
                               initial_accumulator_value=0.1)),
]


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_functional_update_matches_torch_optim(cls, kwargs):
    """Ten steps with changing gradients and a scheduled lr: same parameters and state."""
    live = [torch.nn.Parameter(p) for p in _params()]
    ref = [torch.nn.Parameter(p.clone()) for p in _params()]
    groups = [{"params": [live[0]]}, {"params": [live[1]], "lr": kwargs["lr"] / 2}]
    ref_groups = [{"params": [ref[0]]}, {"params": [ref[1]], "lr": kwargs["lr"] / 2}]
    opt, ref_opt = cls(groups, **kwargs), cls(ref_groups, **kwargs)
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        grads = [torch.randn(p.shape, generator=g) for p in live]
        for q, gr in zip(ref, grads):
            q.grad = gr.clone()
        ref_opt.step()
        fo = FunctionalOptimizer(opt, live)
        if step == 0:  # torch creates the state at its first step; so does the engine
            for p, gr in zip(live, grads):
                p.grad = gr.clone()
            opt.step()
        else:
            assert fo.ready()
            new, states = fo.update([p.detach() for p in live], grads, fo.states(),
                                    fo.learning_rates())
            with torch.no_grad():
                for p, n in zip(live, new):
                    p.copy_(n)
                for live_s, s in zip(fo.states(), states):
                    for k, t in live_s.items():
                        t.copy_(s[k])
        for group, ref_group in zip(opt.param_groups, ref_opt.param_groups):
            group["lr"] *= 0.9
            ref_group["lr"] *= 0.9
    for p, q in zip(live, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    for p, q in zip(live, ref):
        for k, v in ref_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][k], v, rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_is_not_capturable():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(NotCapturable, match="LBFGS"):
        FunctionalOptimizer(torch.optim.LBFGS([p]), [p])


def test_signature_changes_with_a_hyperparameter_not_with_lr():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    fo = FunctionalOptimizer(opt, [p])
    before = fo.signature()
    opt.param_groups[0]["lr"] = 0.5
    assert fo.signature() == before
    assert float(fo.learning_rates()[0]) == 0.5
    opt.param_groups[0]["momentum"] = 0.5
    assert fo.signature() != before
