"""Run a model with some heads disabled, to measure what they contribute to a task.

``zero``: the heads' contexts are multiplied by 0 (what pruning them does).
``uniform``: the heads attend uniformly, 1/L over the real keys (over the prefix for
causal models): their context becomes the mean of their value vectors. This keeps the
heads' average contribution and removes only their pattern, which separates "this head
type's pattern matters" from "this head's output magnitude matters".

Implemented with hooks, so weights are never touched: a pre-hook on each layer's out
projection edits the head slices of its input (the per-head contexts), and for
``uniform`` a hook on the value projection records V.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .arch.base import adapter_for

MODES = ("zero", "uniform")


@contextlib.contextmanager
def ablate_heads(model: nn.Module, heads: dict[int, list[int]], mode: str = "zero") -> Iterator[None]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    adapter = adapter_for(model)
    state: dict = {}
    handles = []

    def grab_mask(module, args, kwargs):
        state["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    handles.append(model.register_forward_pre_hook(grab_mask, with_kwargs=True))
    for layer, hs in heads.items():
        if not hs:
            continue
        d = adapter.head_dim(layer)
        cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(hs)])  # [heads * d]

        if mode == "uniform":
            g = adapter.group_size(layer)
            # a fused qkv's value segment: the last key/value heads * d outputs of [q | k | v]
            v_from = sum(adapter.qkv_widths(layer)) if adapter.spec.qkv is not None else 0

            def grab_v(module, args, out, layer=layer, g=g, v_from=v_from, d=d):
                # [batch, seq, kv_heads * d] -> each query head's value: its group's
                v = out[..., v_from:]
                b, s, w = v.shape
                state[("v", layer)] = v.reshape(b, s, w // d, d).repeat_interleave(g, dim=2).reshape(b, s, w * g)

            handles.append(adapter.module(layer, "qkv" if adapter.spec.qkv else "value").register_forward_hook(grab_v))

        def edit(module, args, layer=layer, cols=cols):
            ctx = args[0].clone()  # [batch, seq, heads * d]
            if mode == "zero":
                ctx[..., cols] = 0
            else:
                ctx[..., cols] = uniform_context(state[("v", layer)][..., cols], state.get("mask"), adapter.spec.causal)
            return (ctx, *args[1:])

        handles.append(adapter.module(layer, "attn_out").register_forward_pre_hook(edit))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def uniform_context(v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Context of uniform attention: mean of v over real keys (the prefix if causal).

    v [batch, seq, f], mask [batch, seq] -> [batch, seq, f]."""
    m = torch.ones(v.shape[:2], dtype=v.dtype) if mask is None else mask.to(v.dtype)
    mv = v * m[..., None]
    if causal:
        return mv.cumsum(1) / m.cumsum(1).clamp_min(1)[..., None]
    mean = mv.sum(1, keepdim=True) / m.sum(1).clamp_min(1)[:, None, None]
    return mean.expand_as(v)


def type_importance(
    model: nn.Module, types: dict[str, list[str]], evaluate: Callable[[nn.Module], float], mode: str = "zero"
) -> dict[str, float]:
    """Metric drop when each type's heads ("layer.head" names) are ablated together:
    evaluate(intact) - evaluate(ablated), per type."""
    base = evaluate(model)
    out = {}
    for name, heads in types.items():
        by_layer: dict[int, list[int]] = {}
        for h in heads:
            layer, idx = (int(x) for x in h.split("."))
            by_layer.setdefault(layer, []).append(idx)
        with ablate_heads(model, by_layer, mode):
            out[name] = base - evaluate(model)
    return out
