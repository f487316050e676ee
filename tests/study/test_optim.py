"""study.optim.SGD against torch.optim.SGD: the same update bit for bit, the same
state_dict both ways, and no torch._dynamo import on the way."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from study.optim import SGD


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))


def _groups(net: torch.nn.Module, wd: float) -> list[dict]:
    params = list(net.parameters())
    return [{"params": params[::2], "weight_decay": wd}, {"params": params[1::2], "weight_decay": 0.0}]


def _steps(net: torch.nn.Module, opt, n: int, start: int = 0, skip_first: bool = False) -> None:
    gen = torch.Generator().manual_seed(1 + start)
    for i in range(start, start + n):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        y = torch.randint(0, 5, (8,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = 0.1 / (1 + i)  # a schedule changes lr between steps
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if skip_first and i == 0:
            net[4].bias.grad = None  # a parameter whose first gradient comes a step later
        opt.step()


def _saved(state: dict) -> dict:
    buf = io.BytesIO()  # as a checkpoint carries it: torch.save, then torch.load
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, True, 5e-4), (0.9, False, 1e-3), (0.0, False, 5e-4),
                                                  (0.5, True, 0.0)])
def test_the_update_is_torch_sgds_bit_for_bit(momentum, nesterov, wd, foreach):
    ours, theirs = _net(), _net()
    a = SGD(_groups(ours, wd), lr=0.1, momentum=momentum, nesterov=nesterov)
    b = torch.optim.SGD(_groups(theirs, wd), lr=0.1, momentum=momentum, nesterov=nesterov, foreach=foreach)
    _steps(ours, a, 6, skip_first=True)
    _steps(theirs, b, 6, skip_first=True)
    assert _same(ours, theirs)
    assert not _same(ours, _net())  # it moved the weights


def test_state_dicts_load_both_ways_and_training_goes_on_the_same():
    nets = [_net() for _ in range(4)]
    ours = SGD(_groups(nets[0], 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    theirs = torch.optim.SGD(_groups(nets[1], 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    _steps(nets[0], ours, 3)
    _steps(nets[1], theirs, 3)
    # a checkpoint of each, loaded into the other kind, in a fresh copy of the weights
    nets[2].load_state_dict(nets[0].state_dict())
    nets[3].load_state_dict(nets[1].state_dict())
    into_torch = torch.optim.SGD(_groups(nets[2], 0.0), lr=1.0, momentum=0.0)
    into_ours = SGD(_groups(nets[3], 0.0), lr=1.0, momentum=0.0)
    into_torch.load_state_dict(_saved(ours.state_dict()))
    into_ours.load_state_dict(_saved(theirs.state_dict()))  # the checkpoints of earlier versions
    assert into_ours.param_groups[0]["weight_decay"] == 5e-4 and into_ours.param_groups[0]["momentum"] == 0.9
    for net, opt in zip(nets, (ours, theirs, into_torch, into_ours)):
        _steps(net, opt, 3, start=3)
    assert all(_same(nets[0], n) for n in nets[1:])


def test_a_state_dict_of_another_model_is_refused():
    opt = SGD(_groups(_net(), 0.0), lr=0.1, momentum=0.9)
    other = SGD([{"params": list(_net().parameters())}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="2 parameter groups|1 parameter groups"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="nesterov"):
        SGD(_groups(_net(), 0.0), lr=0.1, momentum=0.0, nesterov=True)


def test_training_with_it_imports_no_dynamo():
    code = ("import sys; import torch; from study.optim import SGD\n"
            "p = torch.nn.Parameter(torch.ones(3)); o = SGD([{'params': [p]}], lr=0.1, momentum=0.9)\n"
            "o.zero_grad(); (p * p).sum().backward(); o.step(); o.load_state_dict(o.state_dict())\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
