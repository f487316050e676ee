"""The per-machine cache: what resstudy computes once per machine and keeps between
runs ($XDG_CACHE_HOME/resstudy, else ~/.cache/resstudy): the train flag table, an
empty MLflow store to copy, the digits arrays and the fixed splits.

Nothing in it is a result: every entry is keyed by what it was computed from, and
where the directory cannot be read or written the caller computes the value itself.
Standard library and numpy only (the trainer imports it on the GPU machine).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/resstudy, else ~/.cache/resstudy (RuntimeError without a home)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resstudy"


def arrays_on_disk(name: str, key: dict[str, Any],
                   compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`compute()`'s arrays, computed once per machine and kept in the cache (an .npz
    named by a hash of `key`, no pickles); where it cannot be read or written they
    are computed here."""
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
    try:
        path = cache_dir() / f"{name}-{digest}.npz"
    except RuntimeError:
        return compute()
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, KeyError, EOFError):
        pass
    arrays = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)  # whole or not at all: trials starting at once may race here
    except OSError:
        pass
    return arrays


__all__ = ["arrays_on_disk", "cache_dir"]
