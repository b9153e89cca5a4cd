"""Physical removal of attention heads and FFN neurons.

Removing head h of a layer drops its slice [h*d, (h+1)*d) from the q/k/v outputs and
from the out projection's inputs; removing neuron j drops output j of every ffn_in
projection (a gated FFN's gate and up; rows j and j + F of a fused gate/up projection) and
ffn_out's input j. A fused qkv projection loses the head's rows in each of its q, k and v
segments (k and v narrower than q with head groups). Both are exact: the result
equals the original with those heads' contexts (or those neurons' activations)
multiplied by zero.

With head groups (grouped-query attention, group size G) only whole groups go: query
heads g*G .. g*G+G-1 with key/value head g (``PruningPlan.validate`` refuses anything
else before any change). The key/value head serves no query once its group is gone, so
dropping it too is still exact.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from ..arch.base import Adapter, adapter_for, is_conv1d
from ..types import PruningPlan
from .modules import ConfigView, EmptyAttention, empty_attention, slice_projection


def _head_feature_index(keep_heads: list[int], head_dim: int) -> torch.Tensor:
    # [kept * head_dim] feature indices of the kept heads, in order
    if not keep_heads:
        return torch.zeros(0, dtype=torch.long)
    heads = torch.tensor(keep_heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def remove_heads(adapter: Adapter, layer: int, heads: Iterable[int]) -> None:
    spec = adapter.spec
    remove = set(int(h) for h in heads)
    if not remove:
        return
    n_heads, head_dim, group = adapter.num_heads(layer), adapter.head_dim(layer), adapter.group_size(layer)
    keep = [h for h in range(n_heads) if h not in remove]
    index = _head_feature_index(keep, head_dim)
    # key/value heads kept: the groups of the kept query heads (whole groups, validated)
    kv_index = _head_feature_index(sorted({h // group for h in keep}), head_dim)
    if spec.qkv is not None:
        # [q | k | v] on the output axis: q is heads * d wide, k and v key/value heads * d each
        q_width, kv_width = adapter.qkv_widths(layer)
        qkv_index = torch.cat([index, q_width + kv_index, q_width + kv_width + kv_index])  # [(kept + 2 kept/G) * d]
        adapter.set_module(layer, "qkv", slice_projection(adapter.module(layer, "qkv"), qkv_index, "out"))
    else:
        for role, idx in (("query", index), ("key", kv_index), ("value", kv_index)):
            adapter.set_module(layer, role, slice_projection(adapter.module(layer, role), idx, "out"))
    adapter.set_module(layer, "attn_out", slice_projection(adapter.module(layer, "attn_out"), index, "in"))

    core = adapter.module(layer, "attn_core")
    kv_kept = len(keep) // group
    attrs = {a: len(keep) * head_dim for a in spec.width_attrs}
    if spec.num_heads is not None:
        attrs[spec.num_heads] = len(keep)
    attrs.update({a: kv_kept for a in spec.kv_heads_attrs})
    for name, value in attrs.items():
        setattr(core, name, value)
    if spec.core_config_attrs:
        # the core reads head counts from its config: give it a view with this layer's own
        counts = {"heads": len(keep), "kv_heads": kv_kept}
        core.config = ConfigView(core.config, **{name: counts[kind] for name, kind in spec.core_config_attrs})
    if not keep and not isinstance(core, EmptyAttention):
        attn_out_name = None
        if spec.empty_attention_returns == "projection":
            # the out projection lives inside attn_core: its path relative to it
            attn_out_name = spec.attn_out[len(spec.attn_core) + 1 :]
        attrs[spec.head_dim] = head_dim
        if spec.group_size is not None:
            attrs[spec.group_size] = group
        empty = empty_attention(core, spec.empty_attention_returns, attrs, attn_out_name,
                                as_original_class=spec.attention_maps_by_class, input_name=spec.attn_input)
        empty.train(core.training)
        adapter.set_module(layer, "attn_core", empty)


def remove_neurons(adapter: Adapter, layer: int, neurons: Iterable[int]) -> None:
    remove = set(int(j) for j in neurons)
    if not remove:
        return
    size = adapter.ffn_size(layer)
    index = torch.tensor([j for j in range(size) if j not in remove], dtype=torch.long)
    rows = adapter.ffn_rows(layer, index)  # a fused gate/up keeps rows j and j + F together
    for i, proj in enumerate(adapter.modules(layer, "ffn_in")):  # gate and up together
        adapter.set_module(layer, "ffn_in", slice_projection(proj, rows, "out"), index=i)
    adapter.set_module(layer, "ffn_out", slice_projection(adapter.module(layer, "ffn_out"), index, "in"))


def apply_plan(model: nn.Module, plan: PruningPlan, inplace: bool = False) -> nn.Module:
    """Remove the plan's heads and neurons; returns the pruned model.

    The plan is validated against the model first, so a bad plan changes nothing.
    """
    adapter = adapter_for(model)
    plan.validate(adapter.layout())
    if not inplace:
        model = copy.deepcopy(model)
        adapter = adapter_for(model)
    for layer, heads in plan.heads.items():
        remove_heads(adapter, layer, heads)
    for layer, neurons in plan.neurons.items():
        remove_neurons(adapter, layer, neurons)
    return model


@torch.no_grad()
def mask_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of the model with the plan's heads/neurons zeroed instead of removed.

    This is the reference the surgery must match: zeroing the out projection's inputs
    of a head equals multiplying its context by zero (what ``head_mask`` used to do).
    """
    adapter = adapter_for(model)
    plan.validate(adapter.layout())
    model = copy.deepcopy(model)
    adapter = adapter_for(model)

    def zero_inputs(module: nn.Module, index: torch.Tensor) -> None:
        if is_conv1d(module):
            module.weight[index, :] = 0  # [in, out]
        else:
            module.weight[:, index] = 0  # [out, in]

    for layer, heads in plan.heads.items():
        index = _head_feature_index(sorted(heads), adapter.head_dim(layer))
        zero_inputs(adapter.module(layer, "attn_out"), index)
    for layer, neurons in plan.neurons.items():
        zero_inputs(adapter.module(layer, "ffn_out"), torch.tensor(sorted(neurons), dtype=torch.long))
    return model
