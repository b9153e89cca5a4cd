"""Fisher importance of heads and neurons (Kwon et al., "A Fast Post-Training Pruning
Framework for Transformers", NeurIPS 2022).

Every head and every FFN neuron gets a mask variable m = 1 that multiplies its output
(compressor.masking). With g_e = d loss_e / d m the gradient of example e's loss, the
empirical Fisher diagonal sum_e g_e^2 estimates (twice) the loss increase of removing
the unit: loss(m = 0) - loss(m = 1) ~ 1/2 (1-m)^T F (1-m) at a minimum of the loss.
All heads and neurons of all layers are scored on this one scale, which is what lets a
shared FLOPs budget rank them together (``shared_scale``).

Loss (``label_free`` unset): the task's own, from the calibration labels; cross-entropy,
or 0.5 * squared error for a one-output (regression, STS-B) head. Needs a model with a
task head and ``calibration.source: glue``.

``label_free: output``: for a model without a head (a sentence encoder) or unlabelled
calibration. The Gauss-Newton (Fisher under a unit Gaussian) diagonal of the final
hidden states h (real tokens): diag(J^T J), J = dh/dm. Estimated with random probes:
z ~ N(0, I) shaped like h, loss = sum <z, h>, g = J^T z, and E[g_i^2] = (J^T J)_ii.
(J^T J)_ii / 2 is the quadratic estimate of ||h(without unit i) - h||^2 / 2, the output
error removing the unit causes; README gives the measured agreement with direct ablation.

``label_free: lm``: for a causal language model (GPT-2, LLaMA) on unlabelled text, its
own label: the next-token negative log-likelihood, per example the sum over its real
positions t whose next token is real of -log p(x_{t+1} | x_<=t) (the loss it was trained
with; Kwon et al.'s task loss, with the text as labels). One backward per batch, like the
task loss. Refused (one line) on a model without an LM head.

One forward and one backward (per probe) per batch; the masks have a batch dimension
so their gradient holds every example's own gradient. Per layer the scorer also
accumulates the Fisher matrix sum_e g_e g_e^T of the layer's heads ([h, h]) and neurons
([f, f]: 1536^2 floats = 9.4 MB per MiniLM layer, independent of the number of
calibration sequences), kept in memory in ``extras["_fisher_blocks"]`` (not saved) for
the budget planner's mask rearrangement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CompressorError, RecipeError
from ..masking import final_hidden, task_losses
from ..task_head import head_labels, lm_head_problem
from ..types import HeadScores, NeuronScores, Scores
from .base import CaptureBatch, Scorer, ScoringContext, register_scorer

BLOCKS = "_fisher_blocks"


@register_scorer
class FisherScorer(Scorer):
    name = "fisher"

    def begin(self, ctx: ScoringContext) -> None:
        super().begin(ctx)
        self.num_labels = head_labels(ctx.model)
        if self.p["label_free"] is None and self.num_labels is None:
            raise RecipeError(
                f"scorer 'fisher' needs a model with a task head for its loss, and {type(ctx.model).__name__} has "
                f"none; fine-tune one first (finetune.base) or set scorers[].params.label_free: output"
                f"{' (or lm: the next-token loss)' if lm_head_problem(ctx.model) is None else ''}"
            )
        if self.p["label_free"] == "lm":
            problem = lm_head_problem(ctx.model)
            if problem is not None:
                raise RecipeError(f"scorer 'fisher' with label_free: lm needs a causal language model; {problem} "
                                  f"(use label_free: output)")
        seed = self.p["seed"] if self.p["seed"] is not None else ctx.seed
        self.gen = torch.Generator().manual_seed(seed)
        lay = ctx.layout
        self.head_sq = [torch.zeros(n, dtype=torch.float64) for n in lay.heads_per_layer]
        self.neuron_sq = [torch.zeros(f, dtype=torch.float64) for f in lay.ffn_per_layer]
        keep = self.p["blocks"]
        self.head_block = [torch.zeros(n, n, dtype=torch.float64) for n in lay.heads_per_layer] if keep else None
        self.neuron_block = [torch.zeros(f, f, dtype=torch.float32) for f in lay.ffn_per_layer] if keep else None
        self.examples = 0

    def losses(self, output: Any, batch: CaptureBatch) -> list[torch.Tensor]:
        if self.p["label_free"] == "lm":
            logits = output.logits  # [batch, seq, vocab]
            mask = batch.attention_mask.to(logits.device).bool()
            ids = batch.input_ids.to(logits.device)
            scored = mask[:, :-1] & mask[:, 1:]  # [batch, seq - 1]: a real token predicting a real next one
            pred = logits[:, :-1][scored]  # [scored, vocab]
            pred = pred if pred.dtype == torch.float64 else pred.float()  # half precision: the loss in float32
            return [F.cross_entropy(pred, ids[:, 1:][scored], reduction="sum")]
        if self.p["label_free"] == "output":
            h = final_hidden(output)  # [batch, seq, hidden]
            real = batch.attention_mask.to(h.device)[:, :, None].to(h.dtype)
            out = []
            for _ in range(self.p["probes"]):
                z = torch.randn(h.shape, generator=self.gen, dtype=torch.float32).to(h.device, h.dtype)
                out.append((z * real * h).sum())
            return out
        if batch.labels is None:
            raise CompressorError("scorer 'fisher' needs labelled calibration data (calibration.source: glue, "
                                  "split: train or dev), or params.label_free: output")
        labels = batch.labels.to(output.logits.device)
        if self.num_labels > 1 and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise CompressorError(f"scorer 'fisher': calibration labels go up to {int(labels.max())}, the model's "
                                  f"head has {self.num_labels} outputs; calibrate on the task the head was trained for")
        return [task_losses(output.logits, labels, reduction="sum")]

    def update(self, batch: CaptureBatch) -> None:
        probes = self.p["probes"] if self.p["label_free"] == "output" else 1
        self.examples += int(batch.input_ids.shape[0])
        for sq, block, grads in ((self.head_sq, self.head_block, batch.head_grads),
                                 (self.neuron_sq, self.neuron_block, batch.neuron_grads)):
            for layer, g in enumerate(grads):
                g = g.flatten(0, -2).cpu()  # [probes * batch, units]; reshape(-1, 0) is ambiguous for emptied layers
                sq[layer] += g.double().pow(2).sum(0) / probes
                if block is not None:
                    block[layer].addmm_(g.t().to(block[layer].dtype), g.to(block[layer].dtype), alpha=1.0 / probes)

    def finish(self) -> Scores:
        loss = {"output": "output (Gauss-Newton, random probes)", "lm": "lm (next-token negative log-likelihood)",
                None: "task"}[self.p["label_free"]]
        info = {"loss": loss, "examples": self.examples,
                "probes": self.p["probes"] if self.p["label_free"] == "output" else None}
        heads_extras: dict[str, Any] = dict(info)
        neuron_extras: dict[str, Any] = dict(info)
        if self.head_block is not None:
            heads_extras[BLOCKS] = [b.numpy() for b in self.head_block]
            neuron_extras[BLOCKS] = [b.numpy() for b in self.neuron_block]
        heads = tuple(tuple(v.tolist()) for v in self.head_sq)
        neurons = tuple(v.numpy().astype(np.float64) for v in self.neuron_sq)
        return Scores(HeadScores(self.name, heads, heads_extras), NeuronScores(self.name, neurons, neuron_extras))


__all__ = ["BLOCKS", "FisherScorer"]
