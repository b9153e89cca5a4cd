"""Head types from distance features (Guan et al., "How Far Does BERT Look At:
Distance-based Clustering and Analysis of BERT's Attention", COLING 2020).

Every key of a query token falls in exactly one of 21 categories: the query itself,
[CLS], [SEP], ',', '.', or one of 16 windows of distance |i - j| of width L/16 (L the
sequence's real length). A head's features are its attention mass per category,
averaged over real query tokens and inputs, so they sum to 1. K-means (k=4) groups the
heads; clusters are named from their mean profile:
- vertical: most mass on [CLS]/[SEP]/punctuation;
- diagonal: most mass on the query itself and the nearest window;
- dense: mass spread over the distance windows;
- dense+vertical: the remaining mix.

Scores (higher = keep): heads of types earlier in ``prune_order`` score lower (default:
vertical first, since attention parked on [SEP]/[CLS] often acts as a no-op, Clark et al.
2019), and within a type the most typical head (nearest the centroid) scores lowest, as
the one its type-mates replace best.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..types import HeadScores, Scores
from .base import CaptureBatch, Scorer, delimiter_ids, per_layer, register_scorer, token_id

WINDOWS = 16
FEATURES = ["cls", "sep", "comma", "period", "self"] + [f"window{i}" for i in range(WINDOWS)]


def key_categories(input_ids: torch.Tensor, mask: torch.Tensor, special: dict[str, int]) -> torch.Tensor:
    """Category of every (query, key) pair: [batch, q, k] in 0..20 (see FEATURES)."""
    b, s = input_ids.shape
    pos = torch.arange(s)
    dist = (pos[None, :, None] - pos[None, None, :]).abs()  # [1, q, k]
    length = mask.sum(1).clamp_min(1)[:, None, None]  # [batch, 1, 1]
    cat = 5 + torch.clamp(dist * WINDOWS // length, max=WINDOWS - 1)  # [batch, q, k]
    # priority (later wins): punctuation and specials over windows, self over all
    for index, name in ((3, "period"), (2, "comma"), (1, "sep"), (0, "cls")):
        cat = torch.where((input_ids == special[name])[:, None, :], index, cat)
    return torch.where(dist == 0, 4, cat)


def distance_features(
    attn: torch.Tensor, categories: torch.Tensor, mask: torch.Tensor, buffer: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sequence and head, mean over real queries of attention mass per category.

    attn [batch, N, q, k], categories [batch, q, k] -> [batch, N, 21]. One batched
    matmul per query, all heads' rows against the query's one-hot key categories
    (weighted by the query's share of the mean), then a sum over queries. It reads
    attn as [batch, q, N, k], the layout of CaptureBatch.heads(), where that is free.
    ``buffer`` ([batch, q, k, 21], reused across batches) holds the one-hot matrix:
    a fresh one costs more in page faults than the matmul."""
    b, n, q, k = attn.shape
    w = mask.float() / mask.sum(1, keepdim=True).clamp_min(1)  # [batch, q]
    onehot = buffer if buffer is not None else attn.new_empty(b, q, k, len(FEATURES))
    onehot.zero_().scatter_(-1, categories[..., None], w[:, :, None, None].expand(b, q, k, 1))  # [batch, q, k, 21]
    return (attn.transpose(1, 2) @ onehot).sum(1)  # [batch, q, N, 21] -> [batch, N, 21]


def name_clusters(centroids: np.ndarray) -> list[str]:
    """Names for k=4 centroids ([4, 21]) from their profiles; 'type-i' for other k."""
    k = len(centroids)
    if k != 4:
        return [f"type-{i}" for i in range(k)]
    special = centroids[:, 0:4].sum(1)
    local = centroids[:, 4] + centroids[:, 5]
    broad = centroids[:, 6:].sum(1)
    names: list[str | None] = [None] * 4
    order = [("vertical", special), ("diagonal", local), ("dense", broad - special)]
    for name, key in order:
        free = [i for i in range(4) if names[i] is None]
        names[max(free, key=lambda i: key[i])] = name
    names[names.index(None)] = "dense+vertical"
    return names  # type: ignore[return-value]


@register_scorer
class HeadTypesScorer(Scorer):
    name = "head_types"

    def begin(self, ctx) -> None:
        super().begin(ctx)
        tok = ctx.tokenizer
        self.special = {**delimiter_ids(tok), "comma": token_id(tok, ","), "period": token_id(tok, ".")}
        self._features: list[torch.Tensor] = []  # per batch [batch, N, 21]

    def update(self, batch: CaptureBatch) -> None:
        cats = key_categories(batch.input_ids, batch.attention_mask, self.special)
        b, q = batch.input_ids.shape
        buf = batch.buffer("head_types_onehot", (b, q, q, len(FEATURES)), batch.input_ids.device)
        self._features.append(distance_features(batch.heads(), cats, batch.attention_mask, buf))

    def finish(self) -> Scores:
        from sklearn.cluster import KMeans

        per_seq = torch.cat(self._features).double().numpy()  # [sequences, N, 21]
        feats = per_seq.mean(0)  # [N, 21]
        k = min(self.p["k"], len(feats))
        km = KMeans(n_clusters=k, n_init=10, random_state=self.ctx.seed).fit(feats)
        names = name_clusters(km.cluster_centers_)
        types = [names[c] for c in km.labels_]
        dist = np.linalg.norm(feats - km.cluster_centers_[km.labels_], axis=1)
        order = self.p["prune_order"] if k == 4 else sorted(set(names))
        rank = np.array([order.index(t) if t in order else len(order) for t in types], dtype=float)
        flat = rank + dist / (dist.max() + 1e-12) * 0.999  # type rank first, then atypicality
        values, heads = per_layer(flat, self.ctx.layout.heads_per_layer)
        extras = {
            "heads": heads,
            "features": FEATURES,
            "head_features": feats.round(6).tolist(),
            "types": types,
            "type_counts": {n: types.count(n) for n in names},
            "centroids": {names[i]: km.cluster_centers_[i].round(6).tolist() for i in range(k)},
            "stability": stability(per_seq, km.labels_, k, self.p["stability_splits"], self.ctx.seed),
        }
        if self.p["tsne"] and len(feats) > 3:
            extras["figures"] = {"head_types_tsne": tsne_png(feats, types, heads, self.ctx.seed)}
        return Scores(heads=HeadScores(self.name, tuple(values), extras))


def stability(per_seq: np.ndarray, labels: np.ndarray, k: int, splits: int, seed: int) -> dict:
    """How stable the types are when K-means is refit on random halves of the inputs,
    cluster labels matched to the full fit (Hungarian on the confusion).

    ``stable_share``: Guan et al.'s figure, the share of heads whose type is the same in
    every refit. ``mean`` / ``min``: per refit, the share of heads that keep their type,
    averaged over refits / at the worst refit (mean >= stable_share: a head that flips
    in one refit counts against stable_share entirely)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    n_seq = per_seq.shape[0]
    if splits == 0 or n_seq < 2:
        return {"splits": 0}
    rng = np.random.default_rng(seed)
    shares = []
    same = np.ones(len(labels), dtype=bool)  # [N] type unchanged in every refit so far
    for split in range(splits):
        half = rng.permutation(n_seq)[: max(1, n_seq // 2)]
        sub = KMeans(n_clusters=k, n_init=10, random_state=seed + split + 1).fit(per_seq[half].mean(0)).labels_
        confusion = np.zeros((k, k))
        np.add.at(confusion, (sub, labels), 1)
        rows, cols = linear_sum_assignment(-confusion)
        to_full = np.empty(k, dtype=int)
        to_full[rows] = cols
        kept = to_full[sub] == labels  # [N]
        same &= kept
        shares.append(kept.mean())
    return {"splits": splits, "stable_share": float(same.mean()), "mean": float(np.mean(shares)),
            "min": float(np.min(shares))}


def tsne_png(feats: np.ndarray, types: list[str], heads: list[str], seed: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, perplexity=min(30.0, (len(feats) - 1) / 3), random_state=seed,
              init="pca").fit_transform(feats)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    for t in sorted(set(types)):
        sel = [i for i, x in enumerate(types) if x == t]
        ax.scatter(xy[sel, 0], xy[sel, 1], label=f"{t} ({len(sel)})", s=28)
    for i, name in enumerate(heads):
        ax.annotate(name, xy[i], fontsize=5, alpha=0.6)
    ax.set_title("Attention heads by distance features (t-SNE)")
    ax.legend(fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
