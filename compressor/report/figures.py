"""Pictures for reports: each function returns PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import math

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _layer_ticks(ax, heads_per_layer: list[int]) -> None:
    edges = np.cumsum([0, *heads_per_layer])
    for e in edges[1:-1]:
        ax.axhline(e - 0.5, color="white", lw=0.6)
        ax.axvline(e - 0.5, color="white", lw=0.6)
    mids = (edges[:-1] + edges[1:]) / 2 - 0.5
    ax.set_xticks(mids, [f"L{i}" for i in range(len(heads_per_layer))], fontsize=7)
    ax.set_yticks(mids, [f"L{i}" for i in range(len(heads_per_layer))], fontsize=7)


def heatmap(matrix, heads_per_layer: list[int], title: str) -> bytes:
    """A head x head distance matrix with layer boundaries."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(m, cmap="viridis", interpolation="nearest")
    _layer_ticks(ax, heads_per_layer)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def kept_grid(heads_before: list[int], heads_after: list[int], removed_heads: dict, ffn_before: list[int],
              ffn_after: list[int]) -> bytes:
    """Per layer: which heads are kept (green) or removed (grey), and the FFN share kept."""
    plt = _plt()
    layers, width = len(heads_before), max(heads_before) if heads_before else 1
    grid = np.full((layers, width), np.nan)
    for i, n in enumerate(heads_before):
        grid[i, :n] = 1.0
        for h in removed_heads.get(str(i), removed_heads.get(i, [])):
            grid[i, h] = 0.0
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 0.45 * layers + 1.4), gridspec_kw={"width_ratios": [width, 4]})
    from matplotlib.colors import ListedColormap

    ax.imshow(grid, cmap=ListedColormap(["#c8c8c8", "#2a9d55"]), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(width), [str(h) for h in range(width)], fontsize=7)
    ax.set_yticks(range(layers), [f"layer {i}" for i in range(layers)], fontsize=8)
    ax.set_xlabel("head (green kept, grey removed)")
    share = [a / b if b else 0 for a, b in zip(ffn_after, ffn_before, strict=True)]
    bx.barh(range(layers), share, color="#2a9d55")
    bx.barh(range(layers), [1 - s for s in share], left=share, color="#c8c8c8")
    bx.set_xlim(0, 1)
    bx.set_yticks(range(layers), [f"{a}/{b}" for a, b in zip(ffn_after, ffn_before, strict=True)], fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("FFN neurons kept")
    fig.tight_layout()
    return _png(fig)


def score_distributions(values: list[list[float]], title: str, unit: str,
                        cuts: list[float | None] | None = None) -> bytes:
    """One box per layer: how a scorer's values spread inside each layer; ``cuts`` (per
    layer, None where nothing was cut) draws the score the plan actually cut at."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.boxplot([np.asarray(v, dtype=float) for v in values], showfliers=False)
    if cuts is not None:
        xs = [i + 1 for i, c in enumerate(cuts) if c is not None]
        ys = [c for c in cuts if c is not None]
        if xs:
            ax.hlines(ys, [x - 0.4 for x in xs], [x + 0.4 for x in xs], color="#d62728", lw=2,
                      label="cut: highest score removed")
            ax.legend(fontsize=7, loc="best")
    ax.set_xticks(range(1, len(values) + 1), [f"L{i}" for i in range(len(values))])
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _pairs(pairs: dict) -> dict[int, np.ndarray]:
    """Diagrams as saved in JSON ({"0": [[birth, death or null], ...]}) or as arrays."""
    return {int(d): np.array([[b, math.inf if e is None else e] for b, e in np.asarray(p, dtype=object).reshape(-1, 2)],
                             dtype=float).reshape(-1, 2) for d, p in pairs.items()}


def barcode(pairs: dict, title: str, max_bars: int = 60) -> bytes:
    """Persistence barcode: one horizontal bar per class, per dimension, longest first."""
    plt = _plt()
    pairs = _pairs(pairs)
    dims = sorted(pairs)
    finite = [b for d in dims for b in pairs[d][:, 1] if math.isfinite(b)]
    top = max(finite) * 1.1 if finite else 1.0
    fig, axes = plt.subplots(len(dims), 1, figsize=(6.5, 1.2 + 1.6 * len(dims)), squeeze=False)
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    for ax, d in zip(axes[:, 0], dims, strict=True):
        p = pairs[d]
        p = p[np.argsort(-(np.where(np.isfinite(p[:, 1]), p[:, 1], top) - p[:, 0]))][:max_bars]
        for y, (b, e) in enumerate(p):
            ax.plot([b, e if math.isfinite(e) else top], [y, y], color=colors[d % 3], lw=2)
        ax.set_xlim(0, top)
        ax.set_yticks([])
        ax.set_ylabel(f"H{d} ({len(pairs[d])})")
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("distance (per-token D); bars reaching the edge never die")
    fig.tight_layout()
    return _png(fig)


def persistence_diagram(named: dict[str, dict], title: str) -> bytes:
    """Birth vs death per dimension; several models overlay with their own markers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    named = {k: _pairs(v) for k, v in named.items()}
    finite = [e for pairs in named.values() for p in pairs.values() for e in p[:, 1] if math.isfinite(e)]
    top = max(finite) * 1.1 if finite else 1.0
    markers = ["o", "^", "s", "D"]
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    for m, (label, pairs) in enumerate(named.items()):
        for d in sorted(pairs):
            p = pairs[d]
            death = np.where(np.isfinite(p[:, 1]), p[:, 1], top)
            ax.scatter(p[:, 0], death, s=14, marker=markers[m % 4], color=colors[d % 3], alpha=0.7,
                       label=f"{label} H{d}")
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.axhline(top, color="grey", lw=0.5, ls=":")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top * 1.03)
    ax.set_xlabel("birth")
    ax.set_ylabel("death (top line: never)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def layer_errors(before: list[float], after: list[float], title: str) -> bytes:
    """Per-layer output error before and after reconstruction, grouped bars on a log axis."""
    plt = _plt()
    x = np.arange(len(before))
    fig, ax = plt.subplots(figsize=(6, 2.8))
    floor = 1e-12  # a log axis cannot show an exact zero
    ax.bar(x - 0.2, np.maximum(before, floor), 0.4, label="after surgery", color="#c44")
    ax.bar(x + 0.2, np.maximum(after, floor), 0.4, label="reconstructed", color="#48c")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"L{i}" for i in x])
    ax.set_ylabel("relative squared error")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
