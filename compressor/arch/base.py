"""Architecture adapters: declarative maps from our names to a model's modules.

An adapter is data (``ArchSpec``), not code: the surgery, capture and scorers read
module paths from it, so adding an architecture is one small file with one
``@ARCHITECTURES.register`` call.

Our names, per transformer layer (paths are relative to one layer module):
- ``query``/``key``/``value``: separate projections (BERT, RoBERTa), or ``qkv``: one
  fused projection laid out [q | k | v] on its output axis (GPT-2's ``c_attn``).
- ``attn_out``: the projection that mixes the heads back to the hidden size.
- ``ffn_in`` (a tuple) / ``ffn_out``: the FFN's input projections and its output
  projection; neuron j is output j of every input projection (BERT's one dense; a gated
  FFN's gate and up, which are pruned together) and input j of ffn_out.
- ``attn_core``: the module that owns the head bookkeeping attributes and is replaced
  when a layer loses all of its heads.

Head groups (grouped-query attention, LLaMA-style decoders): ``group_size`` query heads
share one key/value head. Heads are counted, scored and planned as query heads; a plan
removes whole groups only (query heads g*G .. g*G+G-1 with their key/value head g), so
the group size stays the architecture's and no other module attribute changes. The
alternative, removing query heads evenly within groups, keeps every key/value head and
so saves less; it is not implemented.

Everything else a stage needs to know about an architecture is a field here too (graph
inputs, ONNX Runtime fusion type, pad-token policy, norms, what an emptied sublayer
returns): nothing outside ``compressor/arch/`` tests a model type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import CompressorError, ModelLoadError
from ..registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the nn.ModuleList of layers, relative to model.base_model
    attn_core: str
    attn_out: str
    # The FFN's input projections, pruned together on their output axis (gate and up of a
    # gated FFN); a single path is accepted and stored as a one-element tuple.
    ffn_in: tuple[str, ...] | str
    ffn_out: str
    # attribute of attn_core holding the number of (query) heads; None: the core has no
    # such attribute (LLaMA), and the count is the query projection's width / head_dim
    num_heads: str | None
    head_dim: str  # attribute of attn_core: features per head
    # attributes of attn_core that hold heads * head_dim and must follow the head count
    width_attrs: tuple[str, ...] = ()
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None
    # Where the [CLS]-like summary token sits: BERT's [CLS] is first; a causal model
    # only sees the whole sequence at its last real token.
    summary_token: Literal["first", "last"] = "first"
    causal: bool = False
    # A layer with no heads left returns either an empty context (the out projection
    # lives outside attn_core and adds its bias) or the projected output itself.
    empty_attention_returns: Literal["context", "projection"] = "context"
    # transformers collects this model's attention maps by hooking every module of the
    # attention core's class (4.57's LLaMA family), so the stand-in for an emptied core
    # must be an instance of that class to keep one map per layer.
    attention_maps_by_class: bool = False
    # Where a sublayer's residual sum proj(x) + residual can be read: the path of the
    # module whose first input it is (BERT's post-norm LayerNorm, GPT-2's ln_2), or ""
    # when it is the layer's own output (GPT-2's FFN). None: not declared, so the
    # reconstruct stage cannot run on this architecture.
    attn_residual_sum: str | None = None
    ffn_residual_sum: str | None = None
    # Graph inputs of an ONNX export, named and ordered as optimum's exporter names them
    # (its OnnxConfig for this architecture), so exports from either exporter take the
    # same feeds. Inputs the model does not have are left out (RoBERTa: token types).
    onnx_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    # RoBERTa numbers positions from padding_idx + 1, so pad_token_id + 1 of its
    # max_position_embeddings rows are never used by a real token.
    positions_after_padding: bool = False
    # attribute of attn_core holding the query heads per key/value head (LLaMA's
    # num_key_value_groups); None: every head has its own keys and values (group size 1).
    group_size: str | None = None
    # What an FFN whose neurons were all removed returns: ffn_out's bias ("bias": BERT,
    # GPT-2), or zeros ("zeros": an out projection without bias, LLaMA's down_proj).
    # Either way the residual path carries the layer; surgery needs no stand-in module.
    empty_ffn_returns: Literal["bias", "zeros"] = "bias"
    # The norm the layers use: LayerNorm (centres and scales) or RMSNorm (scales only).
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # ONNX Runtime's transformer optimizer model_type that fuses this architecture's
    # attention ("bert", "gpt2"); None: none is known, the exported graph is not optimized.
    ort_model_type: str | None = "bert"
    # A classifier pools the last non-pad token, so its config needs a pad_token_id; a
    # model without one (GPT-2, LLaMA) gets its eos_token_id as the pad id.
    pad_token_from_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ffn_in, str):
            object.__setattr__(self, "ffn_in", (self.ffn_in,))
        if self.num_heads is None and self.query is None:
            raise ValueError(f"{self.name}: num_heads=None needs a separate query projection to count heads")

    def takes_input(self, name: str) -> bool:
        """Whether the model's forward (and its exported graph) takes this input, e.g.
        ``token_type_ids`` (BERT does; RoBERTa, GPT-2 and LLaMA do not)."""
        return name in self.onnx_inputs


@dataclass(frozen=True)
class Layout:
    """The shape of a (possibly pruned) model: what surgery changes and config.json records."""

    heads_per_layer: tuple[int, ...]  # query heads
    ffn_per_layer: tuple[int, ...]
    head_dim: int
    hidden_size: int
    # query heads per key/value head (grouped-query attention); 1: no groups. Constant
    # across layers and under pruning, since only whole groups are removed.
    group_size: int = 1
    # FFN input projections per neuron: 1, or 2 for a gated FFN (gate and up); FLOPs count it
    ffn_inputs: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    @property
    def groups_per_layer(self) -> tuple[int, ...]:
        """Key/value heads per layer (= heads_per_layer without groups)."""
        return tuple(h // self.group_size for h in self.heads_per_layer)

    def unit_costs(self, kind: str, seq_len: int, qkv_bias: bool = True, ffn_bias: bool = True) -> tuple[int, int]:
        """(cost of one attention unit, cost of one FFN channel): the units a plan removes.

        An attention unit is a key/value group: its G = group_size query heads (their q
        rows, out-projection columns, scores and context) with its one key and one value
        head (their k/v rows); without groups (G = 1) one head with its own k/v. An FFN
        channel is its row of every input projection (gate and up of a gated FFN) and its
        column of the out projection. With d the hidden size, dh the head size, I the FFN
        input projections:

        - ``flops``: multiply-adds x 2 per token at ``seq_len``, exactly the terms of
          ``metrics.encoder_flops_per_token``: a group 2*d*dh*(2G + 2) + 4*seq*G*dh
          (q 2*d*G*dh, k and v 2*d*2*dh, out 2*G*dh*d, scores and context 4*seq*G*dh),
          a channel 2*(I + 1)*d.
        - ``params``: the weights and biases the unit owns (out-projection biases are
          shared, so not owned): a group d*dh*(2G + 2), plus (G + 2)*dh with q/k/v
          biases; a channel (I + 1)*d, plus I with input-projection biases.
        """
        d, dh, g, fi = self.hidden_size, self.head_dim, self.group_size, self.ffn_inputs
        if kind == "flops":
            return 2 * d * dh * (2 * g + 2) + 4 * seq_len * g * dh, 2 * (fi + 1) * d
        if kind == "params":
            return d * dh * (2 * g + 2) + ((g + 2) * dh if qkv_bias else 0), (fi + 1) * d + (fi if ffn_bias else 0)
        raise ValueError(f"unknown cost kind {kind!r}; allowed: flops, params")

    def to_json(self) -> dict:
        d = {
            "heads_per_layer": list(self.heads_per_layer),
            "ffn_per_layer": list(self.ffn_per_layer),
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
        }
        if self.group_size != 1:  # written only with groups: ungrouped layouts read as before
            d["group_size"] = self.group_size
        if self.ffn_inputs != 1:
            d["ffn_inputs"] = self.ffn_inputs
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(
            tuple(int(h) for h in d["heads_per_layer"]),
            tuple(int(f) for f in d["ffn_per_layer"]),
            int(d["head_dim"]),
            int(d["hidden_size"]),
            int(d.get("group_size", 1)),
            int(d.get("ffn_inputs", 1)),
        )


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")


def register(spec: ArchSpec) -> ArchSpec:
    return ARCHITECTURES.register(spec.name)(spec)


class Adapter:
    """Resolves an ``ArchSpec`` against one model instance."""

    def __init__(self, model: nn.Module, spec: ArchSpec) -> None:
        self.model = model
        self.spec = spec

    # -- modules ---------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.base_model.get_submodule(self.spec.layers)

    def _paths(self, role: str) -> tuple[str, ...]:
        path = getattr(self.spec, role)
        if path is None:
            raise KeyError(f"{self.spec.name} has no '{role}' module")
        return path if isinstance(path, tuple) else (path,)

    def module(self, layer: int, role: str) -> nn.Module:
        """The one module of a role. A tuple role (``ffn_in``) with several modules (a
        gated FFN) raises: callers must handle all of them through ``modules``."""
        paths = self._paths(role)
        if len(paths) != 1:
            raise KeyError(f"{self.spec.name}'s '{role}' is {len(paths)} modules; use Adapter.modules")
        return self.layers[layer].get_submodule(paths[0])

    def modules(self, layer: int, role: str) -> list[nn.Module]:
        """Every module of a role, in the spec's order (one for a plain role)."""
        return [self.layers[layer].get_submodule(p) for p in self._paths(role)]

    def set_module(self, layer: int, role: str, new: nn.Module, index: int = 0) -> None:
        """Replace a role's module (``index``: which one of a tuple role)."""
        set_submodule(self.layers[layer], self._paths(role)[index], new)

    def forward_kwargs(self) -> dict:
        """Extra forward arguments for a plain full-sequence pass: causal models would
        otherwise build a key/value cache nobody reads."""
        return {"use_cache": False} if self.spec.causal else {}

    # -- sizes -----------------------------------------------------------------------
    def num_heads(self, layer: int) -> int:
        """Query heads of a layer."""
        if self.spec.num_heads is None:
            return out_features(self.module(layer, "query")) // self.head_dim(layer)
        return int(getattr(self.module(layer, "attn_core"), self.spec.num_heads))

    def head_dim(self, layer: int) -> int:
        return int(getattr(self.module(layer, "attn_core"), self.spec.head_dim))

    def group_size(self, layer: int = 0) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        if self.spec.group_size is None:
            return 1
        return int(getattr(self.module(layer, "attn_core"), self.spec.group_size))

    def kv_heads(self, layer: int) -> int:
        """Key/value heads of a layer (= its head groups)."""
        return self.num_heads(layer) // self.group_size(layer)

    def has_bias(self, role: str) -> bool:
        """Whether every module of a role carries a bias (Qwen2's q/k/v do, Llama's do not;
        BERT's all do): what the parameter costs of a unit count."""
        return all(m.bias is not None for m in self.modules(0, role))

    def ffn_size(self, layer: int) -> int:
        return out_features(self.modules(layer, "ffn_in")[0])

    def layout(self) -> Layout:
        n = len(self.layers)
        return Layout(
            heads_per_layer=tuple(self.num_heads(i) for i in range(n)),
            ffn_per_layer=tuple(self.ffn_size(i) for i in range(n)),
            head_dim=self.head_dim(0),
            hidden_size=int(self.model.config.hidden_size),
            group_size=self.group_size(0),
            ffn_inputs=len(self.spec.ffn_in),
        )


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D stores its weight transposed: [in, out].
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def out_features(module: nn.Module) -> int:
    w: torch.Tensor = module.weight
    return int(w.shape[1] if is_conv1d(module) else w.shape[0])


def spec_for(model_type: str | None) -> ArchSpec:
    """The registered adapter for a config's ``model_type``; a clear error otherwise."""
    for name in ARCHITECTURES.names():
        spec = ARCHITECTURES.get(name)
        if model_type in spec.model_types:
            return spec
    raise ModelLoadError(
        f"unsupported architecture '{model_type}'; supported: {', '.join(ARCHITECTURES.names())}"
    )


def adapter_for(model: nn.Module) -> Adapter:
    return Adapter(model, spec_for(getattr(model.config, "model_type", None)))


def max_positions(config) -> int | None:
    """How many tokens one sequence may have: the position table's rows a real token can
    use (GPT-2's n_positions is max_position_embeddings through its attribute map).
    None when the config does not say."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    n = int(n)
    spec = spec_for(getattr(config, "model_type", None))
    if spec.positions_after_padding:
        n -= int(getattr(config, "pad_token_id", None) or 0) + 1
    return n


def check_max_length(config, max_length: int | None, what: str, default: int = 128) -> int:
    """The sequence length to use: ``max_length`` when the model has that many positions
    (a ``CompressorError`` naming both numbers otherwise); when None, ``default`` or the
    model's positions when fewer."""
    n = max_positions(config)
    if max_length is None:
        return default if n is None else min(default, n)
    if n is not None and max_length > n:
        raise CompressorError(f"{what} is {max_length}, but the model takes at most {n} tokens per sequence "
                              f"(max_position_embeddings {config.max_position_embeddings}); use at most {n}")
    return max_length
