"""Baselines every research scorer must beat: weight magnitude and random."""

from __future__ import annotations

import numpy as np

from ..types import HeadScores, NeuronScores, Scores
from .base import Scorer, register_scorer, weight_out_in


@register_scorer
class MagnitudeScorer(Scorer):
    """L2 norm of all weights coupled to a head or neuron (Torch-Pruning's group norm).

    Head h: its rows of q, k and v (or of the fused qkv) and its input columns of the
    out projection; with head groups (GQA) the shared key/value rows count 1/G towards
    each of the group's G query heads. Neuron j: row j (with its bias) of every ffn_in
    projection (a gated FFN's gate and up; rows j and j + F of a fused gate/up) and
    ffn_out's column j.
    """

    name = "magnitude"

    def finish(self) -> Scores:
        a, layout = self.ctx.adapter, self.ctx.layout
        heads, neurons = [], []
        for i in range(layout.num_layers):
            n, d, g = a.num_heads(i), a.head_dim(i), a.group_size(i)
            if a.spec.qkv is not None:
                rows = weight_out_in(a.module(i, "qkv")).pow(2).sum(1)  # [(n + 2n/G) * d]: [q | k | v]
                qw, kvw = a.qkv_widths(i)
                q_sq, k_sq, v_sq = rows[:qw], rows[qw : qw + kvw], rows[qw + kvw :]
            else:
                q_sq = weight_out_in(a.module(i, "query")).pow(2).sum(1)  # [n * d]
                k_sq, v_sq = (weight_out_in(a.module(i, r)).pow(2).sum(1) for r in ("key", "value"))  # [n/G * d]
            sq = q_sq.view(n, d).sum(1)  # [n]
            kv = (k_sq + v_sq).view(n // g, d).sum(1)  # [groups]
            sq = sq + (kv / g).repeat_interleave(g)  # [n]: each query head's share of its group's k/v
            out = weight_out_in(a.module(i, "attn_out"))  # [hidden, n * d]
            sq = sq + out.pow(2).sum(0).view(n, d).sum(1)
            heads.append(tuple(sq.sqrt().tolist()))

            sq = weight_out_in(a.module(i, "ffn_out")).pow(2).sum(0)  # [neurons]
            f = sq.shape[0]
            for proj in a.modules(i, "ffn_in"):
                row = weight_out_in(proj).pow(2).sum(1)  # [chunks * neurons]: a fused gate/up has rows j and j + F
                if proj.bias is not None:
                    row = row + proj.bias.detach().pow(2)
                sq = sq + row.view(-1, f).sum(0)
            neurons.append(sq.sqrt().double().numpy())
        return Scores(HeadScores(self.name, tuple(heads)), NeuronScores(self.name, tuple(neurons)))


@register_scorer
class RandomScorer(Scorer):
    """Uniform random scores from the recipe's seed: the floor any method should clear."""

    name = "random"

    def finish(self) -> Scores:
        layout = self.ctx.layout
        seed = self.p["seed"] if self.p["seed"] is not None else self.ctx.seed
        rng = np.random.default_rng(seed)
        heads = tuple(tuple(rng.random(n).tolist()) for n in layout.heads_per_layer)
        neurons = tuple(rng.random(f) for f in layout.ffn_per_layer)
        return Scores(HeadScores(self.name, heads), NeuronScores(self.name, neurons))


__all__ = ["MagnitudeScorer", "RandomScorer"]
