"""The trainer's optimiser: SGD with momentum (Nesterov optional) and each parameter
group's own coupled weight decay, the update and the state_dict of torch.optim.SGD
(dampening 0, maximize off).

Written out because every method of a torch.optim optimiser imports torch._dynamo at
its first call (so that compiled code never traces into it): about 1 s of each trial's
start on 2 cores, on the path to the first epoch, while the trainer never compiles its
optimiser step. The step is torch's multi-tensor one (its CPU and CUDA default
kernels); a checkpoint of either optimiser loads into the other, and
tests/study/test_optim.py holds the two equal, bit for bit, step for step.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

# the hyper-parameters torch.optim.SGD keeps in each group, at the values this one runs
_GROUP = {"dampening": 0.0, "maximize": False, "foreach": None, "differentiable": False, "fused": None}


class SGD:
    """``SGD(groups, lr, momentum, nesterov)``: groups as torch.optim takes them (a list of
    dicts with ``params`` and optionally ``weight_decay`` or ``lr``); ``param_groups``
    is the live list, whose ``lr`` the schedule sets before each step."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, momentum: float = 0.0,
                 nesterov: bool = False) -> None:
        if momentum < 0:
            raise ValueError(f"momentum: {momentum!r} is negative")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov: needs momentum > 0")
        self.param_groups: list[dict[str, Any]] = []
        for g in groups:
            g = dict(g)
            params = list(g.pop("params"))
            self.param_groups.append({"lr": lr, "momentum": momentum, "weight_decay": 0.0, "nesterov": nesterov,
                                      **_GROUP, **g, "params": params})
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params: list[torch.Tensor] = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
            wd, momentum, lr = g["weight_decay"], g["momentum"], g["lr"]
            if wd != 0:
                grads = list(torch._foreach_add(grads, params, alpha=wd))
            if momentum != 0:
                bufs: list[torch.Tensor] = []
                old: list[torch.Tensor] = []  # the buffers from an earlier step, and their gradients
                old_grads: list[torch.Tensor] = []
                for p, grad in zip(params, grads):
                    s = self.state.setdefault(p, {})
                    if "momentum_buffer" in s:
                        old.append(s["momentum_buffer"])
                        old_grads.append(grad)
                    else:  # the first step: the buffer starts as the gradient
                        s["momentum_buffer"] = grad.detach().clone()
                    bufs.append(s["momentum_buffer"])
                if old:
                    torch._foreach_mul_(old, momentum)
                    torch._foreach_add_(old, old_grads, alpha=1.0)
                grads = list(torch._foreach_add(grads, bufs, alpha=momentum)) if g["nesterov"] else bufs
            torch._foreach_add_(params, grads, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters by their index over the groups, in order."""
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state: {len(groups)} parameter groups, this model has "
                             f"{len(self.param_groups)}")
        by_index: dict[int, torch.Tensor] = {}
        for mine, theirs in zip(self.param_groups, groups):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError(f"optimizer state: a group of {len(theirs['params'])} parameters, this "
                                 f"model's has {len(mine['params'])}")
            by_index.update(zip(theirs["params"], mine["params"]))
        for mine, theirs in zip(self.param_groups, groups):
            mine.update({k: v for k, v in theirs.items() if k != "params"})
        self.state = {}
        for i, s in saved["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) and p.is_floating_point()
                             else v for k, v in s.items() if v is not None}
