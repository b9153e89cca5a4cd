"""Mask variables per attention head and per FFN neuron, applied with hooks.

A head's mask multiplies its context (its slice of the attention out projection's
input, [batch, seq, heads, head_dim]); a neuron's mask multiplies its activation (its
input of the FFN out projection). Masks of 1 leave the model as it is; 0 equals
removing the unit, which is what surgery does physically (``surgery.prune.mask_plan``
is the weight-zeroing form of the same thing). Weights are never touched.

Used for two things:
- ``mask_gradients``: per-example gradients of a loss w.r.t. every mask, from one
  forward and one backward per batch (the mask has a batch dimension, so row e of its
  gradient is example e's gradient): the input of the fisher scorer;
- ``CalibrationLoss``: the calibration loss of the model with a set of units masked to
  0, the measurement the budget planner uses to split a budget between heads and
  neurons for scorers whose two kinds of scores are not on one scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch.base import Adapter
from .data.calibration import Batch
from .progress import bar
from .task_head import head_labels


@contextlib.contextmanager
def unit_masks(
    adapter: Adapter,
    heads: Sequence[torch.Tensor | None] = (),
    neurons: Sequence[torch.Tensor | None] = (),
) -> Iterator[None]:
    """Multiply units by masks while the context is open.

    heads[l]: [batch or 1, heads_l]; neurons[l]: [batch or 1, neurons_l]; a None entry
    (or a missing layer) leaves that layer alone."""
    handles = []

    def head_hook(module, args, m, dh):
        x = args[0]  # [batch, seq, heads * head_dim]
        b, s, w = x.shape
        y = (x.reshape(b, s, w // dh, dh) * m[:, None, :, None].to(x.dtype)).reshape(b, s, w)
        return (y, *args[1:])

    def neuron_hook(module, args, m):
        return (args[0] * m[:, None, :].to(args[0].dtype), *args[1:])  # [batch, seq, neurons]

    try:
        for layer, m in enumerate(heads):
            if m is not None:
                dh = adapter.head_dim(layer)
                handles.append(adapter.module(layer, "attn_out").register_forward_pre_hook(
                    lambda mod, args, m=m, dh=dh: head_hook(mod, args, m, dh)))
        for layer, m in enumerate(neurons):
            if m is not None:
                handles.append(adapter.module(layer, "ffn_out").register_forward_pre_hook(
                    lambda mod, args, m=m: neuron_hook(mod, args, m)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters do not require gradients inside (so the backward computes only the
    masks' gradients, no weight gradients); the flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward(model: nn.Module, adapter: Adapter, batch: Batch, hidden: bool = False):
    dev = _device(model)
    types = getattr(batch, "token_type_ids", None)  # sentence pairs: their segments, as at inference
    return model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                 output_hidden_states=hidden, **({"token_type_ids": types.to(dev)} if types is not None else {}),
                 **adapter.forward_kwargs())


def mask_gradients(
    model: nn.Module,
    adapter: Adapter,
    batch: Batch,
    losses: Callable[[object, Batch], Sequence[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-example gradients of each loss w.r.t. every head and neuron mask at m = 1.

    ``losses(model_output, batch)`` returns P scalar losses, each a sum over examples of
    a per-example loss (P > 1 for random probes; all share the one forward pass).
    Returns (heads, neurons): per layer [P, batch, heads_l] and [P, batch, neurons_l].
    The output has hidden states (``output_hidden_states=True``)."""
    layout = adapter.layout()
    dtype = next(model.parameters()).dtype
    dev = _device(model)
    b = batch.input_ids.shape[0]
    hm = [torch.ones(b, n, dtype=dtype, device=dev, requires_grad=True) for n in layout.heads_per_layer]
    nm = [torch.ones(b, f, dtype=dtype, device=dev, requires_grad=True) for f in layout.ffn_per_layer]
    masks = hm + nm
    with torch.enable_grad(), frozen(model), unit_masks(adapter, hm, nm):
        out = forward(model, adapter, batch, hidden=True)
        ls = list(losses(out, batch))
        per_probe = []
        for p, loss in enumerate(ls):
            g = torch.autograd.grad(loss, masks, retain_graph=p + 1 < len(ls), allow_unused=True)
            # a layer whose out projection never runs (no heads left) has no gradient: 0
            per_probe.append([torch.zeros_like(m) if gi is None else gi for gi, m in zip(g, masks, strict=True)])
    stacked = [torch.stack([pp[i] for pp in per_probe]).detach() for i in range(len(masks))]
    return stacked[: len(hm)], stacked[len(hm) :]


def task_losses(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The task's negative log-likelihood: cross-entropy over classes, or for a one-output
    (regression) head 0.5 * squared error (a unit-variance Gaussian's)."""
    x = logits if logits.dtype == torch.float64 else logits.float()  # half precision: the loss in float32
    if x.shape[-1] == 1:
        return F.mse_loss(x[:, 0], labels.to(x.dtype), reduction=reduction) * 0.5
    return F.cross_entropy(x, labels.long(), reduction=reduction)


def final_hidden(out) -> torch.Tensor:
    """[batch, seq, hidden]: the encoder's last hidden states (after GPT-2's ln_f)."""
    return out.hidden_states[-1]


class CalibrationLoss:
    """Loss of the model on the calibration batches with some units masked to 0.

    ``task``: mean task loss (cross-entropy, or MSE for one output) when the model has
    a task head and every batch has labels. ``output``: otherwise, the relative output
    error sum ||h - h_ref||^2 / sum ||h_ref||^2 of the final hidden states over real
    tokens, h_ref the unmasked model's (computed once)."""

    def __init__(self, model: nn.Module, adapter: Adapter, batches: Sequence[Batch], progress: bool = False) -> None:
        self.model, self.adapter, self.batches, self.progress = model, adapter, list(batches), progress
        self.layout = adapter.layout()
        has_labels = all(b.labels is not None for b in self.batches)
        self.mode = "task" if head_labels(model) is not None and has_labels else "output"
        self.reference: list[torch.Tensor] = []
        if self.mode == "output":
            with torch.no_grad():
                self.reference = [self._hidden(b) for b in self.batches]
        self.calls = 0

    def _hidden(self, batch: Batch) -> torch.Tensor:
        h = final_hidden(forward(self.model, self.adapter, batch, hidden=True)).float()  # [batch, seq, hidden]
        return h * batch.attention_mask.to(h.device)[:, :, None]

    @torch.no_grad()
    def __call__(self, heads: dict[int, Sequence[int]], neurons: dict[int, Sequence[int]]) -> float:
        """The loss with the given (layer -> removed indices) heads and neurons masked."""
        dtype = next(self.model.parameters()).dtype
        dev = _device(self.model)
        hm = [torch.ones(1, n, dtype=dtype, device=dev) for n in self.layout.heads_per_layer]
        nm = [torch.ones(1, f, dtype=dtype, device=dev) for f in self.layout.ffn_per_layer]
        for layer, idx in heads.items():
            hm[layer][0, list(idx)] = 0
        for layer, idx in neurons.items():
            nm[layer][0, list(idx)] = 0
        was_training = self.model.training
        self.model.eval()
        total = norm = 0.0
        try:
            with unit_masks(self.adapter, hm, nm):
                for i, batch in enumerate(bar(self.batches, self.progress, desc="split loss", unit="batch",
                                              leave=False)):
                    if self.mode == "task":
                        logits = forward(self.model, self.adapter, batch).logits
                        total += float(task_losses(logits, batch.labels.to(dev), reduction="sum"))
                        norm += batch.input_ids.shape[0]
                    else:
                        ref = self.reference[i]
                        total += float((self._hidden(batch) - ref).pow(2).sum())
                        norm += float(ref.pow(2).sum())
        finally:
            self.model.train(was_training)
        self.calls += 1
        return total / max(norm, 1e-30)
