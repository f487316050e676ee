"""Per-trial artifacts for MLflow: the epsilon discarded-block map, SGS scaling
heat maps and quotient statistics, as JSON plus a PNG a person can read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(info: dict[str, Any], result: dict[str, Any], out: Path, variant: str | None = None) -> list[Path]:
    """Every artifact the trial's variant (all variants when None: each writes
    only from its own info/metrics) and the features declare."""
    from study.variants import features, get_variant, list_variants

    out.mkdir(parents=True, exist_ok=True)
    variants = [variant] if variant is not None else list_variants()
    fns = [*(get_variant(v).artifacts for v in variants), *(f.artifacts for f in features())]
    return [p for fn in fns if fn is not None for p in fn(info, result, out)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def block_map(dead: dict[str, bool], result: dict[str, Any], out: Path) -> list[Path]:
    path = out / "epsilon_discarded_blocks.json"
    summary = {k: result.get(k) for k in ("discarded_blocks", "discarded_ratio", "params", "params_compressed")}
    path.write_text(json.dumps({"blocks": dead, **summary}, indent=2))
    plt = _plt()
    names = list(dead)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(names)), 1.8))
    ax.imshow([[1.0 if dead[n] else 0.0 for n in names]], cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks([])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_title(f"discarded blocks (black): {sum(dead.values())}/{len(names)}")
    fig.tight_layout()
    png = out / "epsilon_discarded_blocks.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [path, png]


def scaling_maps(scalings: dict[str, list[list[float]]], out: Path) -> list[Path]:
    path = out / "sgs_scalings.json"
    path.write_text(json.dumps(scalings))
    if not scalings:
        return [path]
    plt = _plt()
    names = list(scalings)
    cols = min(6, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows), squeeze=False)
    vmax = max(max(max(r) for r in m) for m in scalings.values())
    for ax, name in zip(axes.flat, names):
        im = ax.imshow(scalings[name], cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    png = out / "sgs_scalings.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [path, png]
