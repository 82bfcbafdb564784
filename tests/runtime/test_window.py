"""UnrolledWindow: a problem's differentiable steps as an object of its own."""
import torch
from torch import nn

from mlodsl.runtime.window import UnrolledWindow


def _window(momentum: float = 0.9):
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=momentum)
    params = list(net.parameters())
    return net, opt, UnrolledWindow(lambda: params, lambda: opt)


def test_steps_equal_torch_and_close_writes_parameters_and_state_back():
    net, opt, window = _window()
    twin = nn.Linear(3, 1)
    twin.load_state_dict(net.state_dict())
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    grads = [[torch.randn_like(p) for p in net.parameters()] for _ in range(3)]
    assert not window.is_open and window.fast is None and window.state_dict() is None
    window.open()
    for g in grads:
        window.step(g)
    for g in grads:
        for p, gi in zip(twin.parameters(), g):
            p.grad = gi
        twin_opt.step()
    assert window.is_open and window.steps == 3
    before = [p.detach().clone() for p in net.parameters()]
    for b, p in zip(before, net.parameters()):  # live parameters untouched while open
        assert torch.equal(b, p)
    params = window.close()
    assert not window.is_open and params == list(net.parameters())
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                                   twin_opt.state[q]["momentum_buffer"])
    assert window.close() is None  # closing a closed window does nothing


def test_state_dict_round_trip_and_presenting():
    net, opt, window = _window()
    window.open()
    window.step([torch.ones_like(p) for p in net.parameters()])
    saved = window.state_dict()
    assert saved["steps"] == 1 and len(saved["fast"]) == 2
    other = UnrolledWindow(lambda: list(net.parameters()), lambda: opt)
    other.load_state_dict(saved)
    assert other.is_open and other.steps == 1
    assert all(a is b for a, b in zip(other.fast, saved["fast"]))
    shown = [torch.zeros_like(p) for p in net.parameters()]
    with other.presenting(shown):
        assert all(a is b for a, b in zip(other.fast, shown))
    assert all(a is b for a, b in zip(other.fast, saved["fast"]))
    other.load_state_dict(None)  # closes without writing back
    assert not other.is_open
    assert not torch.equal(net.weight, saved["fast"][0].detach())
