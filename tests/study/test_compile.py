"""The compiled training step: when it compiles, its fallback, and the trainer wired to it."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import study.compile as compile_lib
from study.compile import CompiledStep, compile_wanted, use_cache_dir
from study.config import TrainConfig
from study.train import train

CPU = torch.device("cpu")
TINY = dict(dataset="digits", image_size=8, depth=8, batch_size=64, val_size=0.15, epochs=2, threads=1,
            limit_train_batches=3)


def test_compile_wanted():
    assert not compile_wanted("off", CPU)
    assert not compile_wanted("auto", CPU)  # CPU: eager unless asked
    assert compile_wanted("auto", torch.device("cuda")) == compile_lib.compile_available()
    assert compile_wanted("on", CPU) == compile_lib.compile_available()
    with pytest.raises(ValueError, match="compile: 'yes'"):
        compile_wanted("yes", CPU)


def test_use_cache_dir_sets_only_an_unset_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded first, so what use_cache_dir sets is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_cache_dir(None) is None
    got = use_cache_dir(tmp_path / "cache")
    assert got == tmp_path / "cache" and got.is_dir()
    assert compile_lib.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got)
    assert use_cache_dir(tmp_path / "other") == got  # the user's (or first) choice wins


def _net_and_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    return net, x, y


class _Broken(Exception):
    pass


_Broken.__module__ = "torch._inductor.exc"  # what the compiler's own errors look like


def test_fallback_when_compile_raises_on_first_call(monkeypatch, caplog):
    net, x, y = _net_and_batch()

    def fwd(x, y):
        out = net(x)
        return F.cross_entropy(out, y), out

    def broken_compile(fn, **kw):
        def call(*a):
            raise _Broken("no C compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = CompiledStep(fwd, True, CPU)
    with caplog.at_level(logging.WARNING, logger="study.compile"):
        loss, _ = step(x, y)
        step.backward(loss)
        loss2, _ = step(x, y)
    assert step.compiled is False and "no C compiler" in step.error
    assert [r.getMessage() for r in caplog.records if "training eager" in r.getMessage()] == [
        "compile of the training step failed, training eager: _Broken: no C compiler"]  # one line
    assert torch.equal(loss, fwd(x, y)[0]) and torch.equal(loss2, loss)
    assert net[0].weight.grad is not None


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("backward graph failed to compile")


def test_fallback_when_the_backward_fails_retries_the_step_eagerly(monkeypatch):
    net, x, y = _net_and_batch()

    def fwd(x, y):
        out = net(x)
        return F.cross_entropy(out, y), out

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: (_FailingBackward.apply(fn(*a)[0]), None))
    step = CompiledStep(fwd, True, CPU)
    zeroed = []
    loss, _ = step(x, y)
    step.backward(loss, on_retry=lambda: zeroed.append(1))
    assert step.retry and zeroed == [1] and step.compiled is False
    loss, out = step(x, y)  # the caller redoes the step: eager now
    assert out is not None


@pytest.mark.compile
def test_a_real_error_is_not_swallowed(monkeypatch):
    step = CompiledStep(lambda x: x @ x, True, CPU)
    step.compiled = True  # as after a successful first step
    step._fn = lambda x: (_ for _ in ()).throw(ValueError("shape mismatch"))
    with pytest.raises(ValueError, match="shape mismatch"):
        step(torch.ones(2, 3))


def test_disabled_is_plain_eager():
    net, x, y = _net_and_batch()
    step = CompiledStep(lambda x, y: F.cross_entropy(net(x), y), False, CPU)
    assert step.compiled is False and step._fn is step.eager
    assert torch.equal(step(x, y), F.cross_entropy(net(x), y))


@pytest.fixture(scope="module")
def eager_rows():
    rows = []
    train(TrainConfig(variant="resnet", **TINY), lambda m, i, s: rows.append(dict(m)))
    return rows


@pytest.mark.compile
@pytest.mark.skipif(not compile_lib.compile_available(), reason="torch.compile unavailable")
def test_trainer_compiled_matches_eager_and_reports_compile_time(eager_rows, inductor_cache):
    # the tests' Inductor cache (tests/conftest.py), kept between runs: only the first pays the full compile
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    rows = []
    train(TrainConfig(variant="resnet", compile="on", **TINY), lambda m, i, s: rows.append(dict(m)))
    assert Path(cache_dir()) == inductor_cache and any((inductor_cache / "fxgraph").iterdir())
    assert "compile_seconds" not in eager_rows[0]
    assert rows[0]["compile_seconds"] > 0 and "compile_seconds" not in rows[1]
    assert all(r["images_per_s"] > 0 for r in rows)
    # the same training, up to float reassociation in the fused kernels
    for got, want in zip(rows, eager_rows):
        assert math.isclose(got["train_loss"], want["train_loss"], rel_tol=1e-3, abs_tol=1e-4)
        assert abs(got["val_acc"] - want["val_acc"]) <= 0.02
