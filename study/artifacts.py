"""Per-trial artifacts for MLflow: the epsilon discarded-block map, SGS scaling
heat maps and quotient statistics, as JSON plus a PNG a person can read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(info: dict[str, Any], result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "epsilon_dead_blocks" in info:
        paths += _dead_blocks(info["epsilon_dead_blocks"], result, out)
    if "sgs_scalings" in info:
        paths += _scalings(info["sgs_scalings"], out)
    quotient = {k: v for k, v in result.items() if k.startswith("q_")}
    if quotient:
        path = out / "quotient_stats.json"
        path.write_text(json.dumps(quotient, indent=2))
        paths.append(path)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dead_blocks(dead: dict[str, bool], result: dict[str, Any], out: Path) -> list[Path]:
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


def _scalings(scalings: dict[str, list[list[float]]], out: Path) -> list[Path]:
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
