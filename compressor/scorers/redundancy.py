"""Redundancy: distances between every pair of heads, and zero-shot pruning by clustering.

Bian, Huang, Cai, Yuan, Church, "On Attention Redundancy: A Comprehensive Study",
NAACL 2021. The redundancy matrix holds, for every pair of the model's heads, a
distance between their attention maps averaged over inputs; heads in one cluster do
the same thing, so keeping one representative per cluster prunes without task data
(the paper finds the matrices barely change between real text and random tokens).

Distances are averaged per sentence first (over its real query tokens), then over
sentences, as Bian et al. do; pooling all tokens of all sentences instead weights long
sentences more (on MiniLM the mean JS distance differs by about 0.015, see
docs/reproductions.md).

Scores: spectral clustering of the (mean) distance matrix into N - round(ratio * N)
clusters (planning.removal_count, the planner's own rounding), for the scorer's explicit
``ratio`` param (recorded in the extras); in each cluster the head with the best
silhouette is the representative.
Representatives score 2 + silhouette and the rest their silhouette in [-1, 1], so
removing the lowest ``ratio`` of heads removes exactly the non-representatives.
"""

from __future__ import annotations

import numpy as np
import torch

from ..head_distances import (
    SENTENCE_METRICS, TOKEN_METRICS, cca_similarity, dcor_similarity, js_distance_sums,
    procrustes_disparity, query_weights, token_metric_means,
)
from ..planning import removal_count
from ..types import HeadScores, Scores
from .base import CaptureBatch, Scorer, per_layer, register_scorer

# similarities in [-1, 1] or [0, 1] -> distances in [0, 1]
SIMILARITY_TO_DISTANCE = {
    "cosine": lambda s: 1 - s,
    "correlation": lambda s: (1 - s) / 2,
    "bhattacharyya": lambda s: 1 - s,
}


@register_scorer
class RedundancyScorer(Scorer):
    name = "redundancy"

    def begin(self, ctx) -> None:
        super().begin(ctx)
        n = sum(ctx.layout.heads_per_layer)
        self._sums = {m: torch.zeros(n, n, dtype=torch.float64) for m in self.p["metrics"]}
        self._counts = dict.fromkeys(self.p["metrics"], 0)
        self._gen = torch.Generator().manual_seed(ctx.seed)

    def update(self, batch: CaptureBatch) -> None:
        mask = batch.attention_mask
        a = batch.heads()  # [batch, N, q, k], padded queries 0
        b = a.shape[0]
        sampled_js = "js" in self.p["metrics"] and self.p["js_query_sample"] is not None
        token = [m for m in self.p["metrics"] if m in TOKEN_METRICS and not (m == "js" and sampled_js)]
        if token:
            # causal maps: Pearson's samples are each query's visible keys (head_distances.keys_seen)
            for m, per_seq in token_metric_means(a, mask, token, causal=self.ctx.adapter.spec.causal).items():
                self._add(m, per_seq if m == "js" else SIMILARITY_TO_DISTANCE[m](per_seq), b)
        if sampled_js:
            self._add("js", *self._sampled_js(a, mask))
        for m in self.p["metrics"]:
            if m not in SENTENCE_METRICS:
                continue
            take = min(b, self.p["sentence_sequences"] - self._counts[m])
            if take <= 0:
                continue
            sub, sub_mask = a[:take], mask[:take]
            if m == "dcor":
                d = 1 - dcor_similarity(sub, sub_mask)
            elif m == "procrustes":
                d = procrustes_disparity(sub, sub_mask, self.p["svd_rank"])
            else:
                d = 1 - cca_similarity(sub, sub_mask, self.p["svd_rank"])
            self._add(m, d, take)

    def _sampled_js(self, a: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        k = self.p["js_query_sample"]
        if k >= a.shape[2]:
            return js_distance_sums(a, query_weights(mask), mask), a.shape[0]
        idx = torch.randperm(a.shape[2], generator=self._gen)[:k].sort().values
        sub_mask = mask[:, idx]
        seen = sub_mask.sum(1) > 0  # sequences with at least one sampled real query
        d = js_distance_sums(a[seen][:, :, idx], query_weights(sub_mask[seen]), mask[seen])
        return d, int(seen.sum())

    def _add(self, metric: str, per_sequence: torch.Tensor, count: int) -> None:
        self._sums[metric] += per_sequence.double().sum(0)
        self._counts[metric] += count

    def matrices(self) -> dict[str, np.ndarray]:
        out = {}
        for m, total in self._sums.items():
            d = (total / max(self._counts[m], 1)).numpy()
            d = (d + d.T) / 2
            np.fill_diagonal(d, 0.0)
            out[m] = d.clip(0, 1)
        return out

    def finish(self) -> Scores:
        return Scores(heads=self.head_scores(self.p["ratio"]))

    def head_scores(self, ratio: float) -> HeadScores:
        """Scores for pruning ``ratio`` of the heads: the matrices are kept, so one capture
        serves several ratios (clusters depend on it)."""
        mats = self.matrices()
        d = np.mean(list(mats.values()), axis=0) if self.p["cluster_on"] == "mean" else mats[self.p["cluster_on"]]
        n = d.shape[0]
        # the planner's rounding (planning.removal_count): removing `ratio` removes exactly the non-representatives
        k = min(n, max(1, n - removal_count(n, ratio)))
        labels, silhouette, reps = cluster_heads(d, k, self.ctx.seed)
        flat = silhouette.copy()
        flat[reps] += 2.0
        values, names = per_layer(flat, self.ctx.layout.heads_per_layer)
        extras = {
            "heads": names,
            "matrices": {m: v.round(6).tolist() for m, v in mats.items()},
            "clustered_on": self.p["cluster_on"],
            # the clusters (so these scores) are chosen for this share of heads pruned:
            # the scorer's explicit ``ratio`` param (targets.heads.ratio unless set)
            "ratio": float(ratio),
            "clusters": int(k),
            "labels": labels.tolist(),
            "silhouette": silhouette.round(6).tolist(),
            "representatives": [names[i] for i in reps],
            "sequences": dict(self._counts),
        }
        return HeadScores(self.name, tuple(values), extras)


def cluster_heads(d: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Spectral clustering of a distance matrix into k clusters; returns labels,
    per-head silhouette (0 where undefined) and one representative per cluster."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import silhouette_samples

    n = d.shape[0]
    if k >= n:
        return np.arange(n), np.zeros(n), list(range(n))
    if k == 1:
        labels = np.zeros(n, dtype=int)
        sil = np.zeros(n)
        return labels, sil, [int(d.mean(1).argmin())]  # the most central head
    affinity = (1 - d).clip(0, 1)
    labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                assign_labels="cluster_qr").fit_predict(affinity)
    defined = 1 < len(set(labels)) < n  # silhouette needs 2..n-1 clusters
    sil = silhouette_samples(d, labels, metric="precomputed") if defined else np.zeros(n)
    reps = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        reps.append(int(members[np.argmax(sil[members])]))  # ties: the lowest index
    return labels, sil, sorted(reps)
