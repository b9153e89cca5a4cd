"""OBCE: FFN neurons ranked by the zero-dimensional persistence of their [CLS] outputs.

Balderas, Lastra, Benitez, "Can persistent homology whiten Transformer-based
black-box models? A case study on BERT compression" (arXiv 2312.10702). For every FFN
neuron, its activation at the [CLS]-like token over N calibration inputs is a point
cloud on the line; the H0 persistence of that cloud says how much the neuron varies
across inputs, i.e. how much information it can carry. Low scores are removed.
"""

from __future__ import annotations

import torch

from ..topology.line_h0 import layer_scores
from ..types import NeuronScores, Scores
from .base import CaptureBatch, Scorer, register_scorer


@register_scorer
class PersistenceScorer(Scorer):
    name = "persistence"

    def begin(self, ctx) -> None:
        super().begin(ctx)
        self._chunks: list[list[torch.Tensor]] = [[] for _ in range(ctx.layout.num_layers)]

    def update(self, batch: CaptureBatch) -> None:
        for layer, acts in enumerate(batch.ffn_summary):
            self._chunks[layer].append(acts.detach().float().cpu())  # [batch, neurons]

    def finish(self) -> Scores:
        layers = [torch.cat(chunks, 0) for chunks in self._chunks]  # per layer [inputs, neurons]
        values = layer_scores(layers, self.p["statistic"], self.p["radius"])
        extras = {"statistic": self.p["statistic"], "inputs": int(layers[0].shape[0]) if layers else 0}
        return Scores(neurons=NeuronScores(self.name, tuple(values), extras))
