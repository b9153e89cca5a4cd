"""The one batched forward pass that feeds every data-driven scorer.

Per batch it exposes, only when some scorer needs them:
- attention maps, [batch, heads, q, k] per layer (eager attention, padding keys get 0);
- FFN activations after the nonlinearity at the [CLS]-like token, [batch, neurons]
  per layer, read by a pre-hook on ffn_out (its input is exactly that activation).
Scorers reduce each batch as it comes, so nothing is kept across batches here.

Scorers that need "gradients" (fisher) get a separate, gradient-enabled loop of their
own: per batch one forward with a mask per head and per neuron
(compressor.masking), the scorer's losses(), one backward per loss, and update() with
the per-example mask gradients. Weights are untouched and get no gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .arch.base import Adapter
from .data.calibration import Batch
from .progress import bar
from .scorers.base import CaptureBatch, Scorer


def summary_positions(adapter: Adapter, attention_mask: torch.Tensor) -> torch.Tensor:
    # [batch]: [CLS] is first in BERT-style models; a causal model's summary of the
    # whole input is its last real token (inputs are right-padded).
    if adapter.spec.summary_token == "first":
        return torch.zeros(attention_mask.shape[0], dtype=torch.long)
    return attention_mask.sum(1).long() - 1


@torch.no_grad()
def run_capture(
    model: torch.nn.Module,
    adapter: Adapter,
    batches: Sequence[Batch],
    scorers: Sequence[Scorer],
    progress: bool = True,
) -> None:
    graded = [s for s in scorers if "gradients" in s.needs]
    if graded:
        _gradient_pass(model, adapter, batches, graded, progress)
    scorers = [s for s in scorers if s not in graded]
    needs = set().union(*(s.needs for s in scorers)) if scorers else set()
    active = [s for s in scorers if s.needs]
    if not active:
        return
    want_attn = "attentions" in needs
    want_ffn = "ffn_summary" in needs
    if want_attn and model.config._attn_implementation != "eager":
        raise RuntimeError("attention maps need a model loaded with attn_implementation='eager'")

    ffn: list[torch.Tensor | None] = [None] * len(adapter.layers)
    state: dict[str, torch.Tensor] = {}
    handles = []
    if want_ffn:
        for i in range(len(adapter.layers)):

            def hook(module, args, i=i):
                acts = args[0]  # [batch, seq, neurons]
                ffn[i] = acts[torch.arange(acts.shape[0]), state["summary"]]  # [batch, neurons]

            handles.append(adapter.module(i, "ffn_out").register_forward_pre_hook(hook))
    extra = adapter.forward_kwargs()
    was_training = model.training
    model.eval()
    workspace: dict = {}  # buffers the batches share (CaptureBatch.buffer)
    try:
        for batch in bar(batches, progress, desc="capture", unit="batch"):
            state["summary"] = summary_positions(adapter, batch.attention_mask)
            types = getattr(batch, "token_type_ids", None)  # sentence pairs: the model sees their segments
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                output_attentions=want_attn,
                **({"token_type_ids": types} if types is not None else {}),
                **extra,
            )
            cb = CaptureBatch(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                token_type_ids=types,
                summary_index=state["summary"],
                attentions=tuple(out.attentions) if want_attn else None,
                ffn_summary=tuple(ffn) if want_ffn else None,
                workspace=workspace,
            )
            for s in active:
                s.update(cb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _gradient_pass(
    model: torch.nn.Module,
    adapter: Adapter,
    batches: Sequence[Batch],
    scorers: Sequence[Scorer],
    progress: bool = True,
) -> None:
    """One forward + backward per batch and scorer, gradients w.r.t. unit masks only."""
    from .masking import mask_gradients

    was_training = model.training
    model.eval()
    try:
        for batch in bar(batches, progress, desc="gradients", unit="batch"):
            summary = summary_positions(adapter, batch.attention_mask)
            for s in scorers:
                cb = CaptureBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  summary_index=summary, attentions=None, ffn_summary=None, labels=batch.labels,
                                  token_type_ids=getattr(batch, "token_type_ids", None))
                heads, neurons = mask_gradients(model, adapter, batch, lambda out, _b, s=s, cb=cb: s.losses(out, cb))
                cb.head_grads, cb.neuron_grads = tuple(heads), tuple(neurons)
                s.update(cb)
    finally:
        model.train(was_training)
