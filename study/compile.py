"""torch.compile for the training step, with a clean fallback to eager.

The trainer compiles its forward + loss function; AOTAutograd compiles the
matching backward, so ``loss.backward()`` runs compiled too. Eval stays
eager (a second graph per eval shape would cost more compile than it saves on
the small eval sets). Where the compiler is missing or fails (no C compiler,
an op Inductor cannot lower, an old torch), ``CompiledStep`` logs one line and
runs eager from then on: a trial never dies of compilation.

Compiled kernels are cached on disk (``TORCHINDUCTOR_CACHE_DIR``); pointing
every trial of a study at one directory makes the first trial pay the compile
(tens of seconds) and the later ones a cache hit (a few seconds).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from study.config import CORE

log = logging.getLogger("study.compile")


def compile_wanted(mode: str, device: torch.device) -> bool:
    """Whether option ``compile`` asks for compilation on ``device``.

    ``auto`` compiles on CUDA, where small nets are launch-bound and compile
    (with CUDA graphs) pays most. On CPU it stays eager: a first compile costs
    tens of seconds of a trial (later trials hit the cache), which a short
    trial does not win back.
    """
    CORE["compile"].check(mode)  # OptionError naming the modes
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    return compile_available()


def compile_available() -> bool:
    # torch.compile exists since 2.0; Dynamo refuses some Python versions.
    if not hasattr(torch, "compile"):
        return False
    try:
        importlib.import_module("torch._dynamo")
    except Exception:  # pragma: no cover - broken installs
        return False
    return True


def use_cache_dir(path: str | Path | None) -> Path | None:
    """Point Inductor's on-disk cache at ``path`` (shared by a study's trials).

    Only set where the user has not chosen one; returns the directory in use.
    Must run before the first compile in the process.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    if path is None:
        return None
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def compile_mode(device: torch.device) -> str | None:
    """Inductor mode: CUDA graphs on CUDA (the small CIFAR nets are launch-bound)."""
    return "reduce-overhead" if device.type == "cuda" else None


def _is_compile_error(e: BaseException) -> bool:
    # Dynamo, AOTAutograd and Inductor raise from their own modules (BackendCompilerFailed,
    # InductorError, Unsupported, ...); a user's error in eager code does not.
    mod = type(e).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx"))


class CompiledStep:
    """``fn`` compiled on first call; on any compiler failure, eager for good.

    ``compiled`` is True once a compiled call (and its backward, reported by
    the caller through ``backward(loss)``) succeeded, False after a fallback,
    None before the first call. ``compile_seconds`` is the wall time of the
    first call and its backward (compilation plus one step).
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool, device: torch.device,
                 mode: str | None = None, name: str = "training step") -> None:
        self.eager, self.name, self.device, self.enabled = fn, name, device, enabled
        self.compile_seconds = 0.0
        self.compiled: bool | None = None if enabled else False
        self.error: str | None = None
        self._fn = fn
        if enabled:
            try:
                self._fn = torch.compile(fn, mode=mode if mode is not None else compile_mode(device))
            except Exception as e:  # torch.compile itself can refuse (unsupported Python, backend missing)
                self._fallback(e)

    def _fallback(self, e: BaseException) -> None:
        self.compiled, self._fn = False, self.eager
        self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log.warning("compile of the %s failed, training eager: %s", self.name, self.error)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            if self._fn is self.eager:
                return self._fn(*args)
            try:
                return self._fn(*args)
            except Exception as e:  # a recompile (new shape, guard) that fails: eager from here on
                if not _is_compile_error(e):
                    raise
                self._fallback(e)
                return self._fn(*args)
        t0 = time.perf_counter()
        try:
            out = self._fn(*args)
        except Exception as e:  # compile errors surface on the first call
            self._fallback(e)
            out = self._fn(*args)
        self.compile_seconds = time.perf_counter() - t0
        return out

    def backward(self, loss: torch.Tensor, on_retry: Callable[[], Any] | None = None) -> None:
        """``loss.backward()``; the first one compiles the backward graph.

        If that compile fails, ``on_retry`` (zero the grads) runs and the caller
        must redo the step eagerly: returns normally, with ``self.compiled``
        False and ``retry`` True.
        """
        self.retry = False
        if self.compiled is not None:
            loss.backward()
            return
        t0 = time.perf_counter()
        try:
            loss.backward()
            self.compiled = self._fn is not self.eager
        except Exception as e:
            if on_retry is not None:
                on_retry()
            self._fallback(e)
            self.retry = True
        self.compile_seconds += time.perf_counter() - t0


__all__ = ["CompiledStep", "compile_available", "compile_mode", "compile_wanted", "use_cache_dir"]
