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
    # (of a fused qkv: its width * G / ((G + 2) * head_dim)); the same when a named
    # attribute is absent on the instance (transformers 5's ModernBERT)
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
    # Fused FFN input: each ffn_in projection stacks this many blocks of the FFN's channels
    # on its output axis and the model splits them with chunk(n) (ModernBERT's Wi and
    # Phi-3's gate_up_proj: [first | second], n = 2), so channel j is rows j, j + F, ...
    # (F the FFN size) and they go together. 1: one row per channel.
    ffn_in_chunks: int = 1
    # The keyword under which the attention core receives its input when it is not passed
    # positionally (DistilBERT calls attention(query=x, key=x, value=x, ...)); the stand-in
    # for an emptied core reads it there.
    attn_input: str = "hidden_states"
    # attributes of attn_core holding the number of key/value heads, which must follow a
    # removal of whole groups (Phi-3's num_key_value_heads, read to split its fused qkv)
    kv_heads_attrs: tuple[str, ...] = ()
    # Attributes of the model config that the attention core reads at run time through its
    # own ``config`` attribute, as (name, "heads" | "kv_heads") pairs (Phi-3 splits its
    # fused qkv at config.num_attention_heads * head_dim). Surgery gives such a core a
    # per-layer view of the config (``surgery.modules.ConfigView``) holding its own counts.
    core_config_attrs: tuple[tuple[str, str], ...] = ()
    # Config attributes that build the model's per-layer sizes, for a config that stock
    # transformers loads when a pruned layout is uniform (every layer alike): the FFN
    # size (BERT's intermediate_size, GPT-2's n_inner), the query heads, the key/value
    # heads, the per-head width. ``config_heads`` is only rewritten when the config states
    # the head width itself (``config_head_dim``: LLaMA's head_dim); BERT-style configs
    # derive it as hidden_size / heads, so fewer heads would mean wider heads there, and
    # such a layout is stock-loadable only with its heads unpruned (see ``stock_config``).
    config_ffn: str | None = None
    config_heads: str | None = None
    config_kv_heads: str | None = None
    config_head_dim: str | None = None
    # The key/value cache a decoder's forward takes and returns (transformers' Cache,
    # ``past_key_values``): "per_layer_bhsd" = one keys and one values tensor per layer,
    # each [batch, kv_heads of that layer, seq, head_dim]; a layer without heads has
    # [batch, 0, seq, head_dim]. None: no cache (encoders). A KV-cache ONNX export names
    # them past_key_values.{layer}.key/.value and present.{layer}.key/.value.
    kv_cache: Literal["per_layer_bhsd"] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ffn_in, str):
            object.__setattr__(self, "ffn_in", (self.ffn_in,))
        if self.num_heads is None and self.query is None and self.qkv is None:
            raise ValueError(f"{self.name}: num_heads=None needs a query or fused qkv projection to count heads")
        if self.ffn_in_chunks < 1:
            raise ValueError(f"{self.name}: ffn_in_chunks must be >= 1")

    def stock_config(self, layout: Layout, config) -> dict | None:
        """Config values with which stock transformers builds exactly this layout (so a
        plain ``from_pretrained`` loads the pruned weights), or None when none exist: the
        layout differs between layers, a layer has no heads or no FFN, or the head count
        changed in a config that derives the head width from it."""
        heads, ffn = set(layout.heads_per_layer), set(layout.ffn_per_layer)
        if len(heads) != 1 or len(ffn) != 1 or 0 in heads or 0 in ffn or self.config_ffn is None \
                or self.config_heads is None:
            return None
        (h,), (f,) = heads, ffn
        values = {self.config_ffn: f}
        if self.config_head_dim is not None:
            values[self.config_head_dim] = layout.head_dim
            values[self.config_heads] = h
            if self.config_kv_heads is not None:
                values[self.config_kv_heads] = h // layout.group_size
        elif getattr(config, self.config_heads, None) != h:
            return None  # fewer heads here would mean wider heads (head width = hidden / heads)
        return values

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
        core = self.module(layer, "attn_core")
        if self.spec.num_heads is None or not hasattr(core, self.spec.num_heads):
            # no head-count attribute (LLaMA; transformers 5's ModernBERT): count the query width
            if self.spec.query is None:
                # fused [q | k | v] with groups: width (H + 2H/G) * d, so H = width * G / ((G + 2) * d)
                g = self.group_size(layer)
                return out_features(self.module(layer, "qkv")) * g // ((g + 2) * self.head_dim(layer))
            return out_features(self.module(layer, "query")) // self.head_dim(layer)
        return int(getattr(core, self.spec.num_heads))

    def qkv_widths(self, layer: int) -> tuple[int, int]:
        """(query width, key width = value width) of a layer's projections: heads * d and
        key/value heads * d; a fused qkv is laid out [q | k | v] with these widths."""
        d = self.head_dim(layer)
        return self.num_heads(layer) * d, self.kv_heads(layer) * d

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

    def cache_shapes(self) -> list[tuple[int, int]]:
        """(key/value heads, head_dim) of each layer's cache entry (see ``ArchSpec.kv_cache``);
        a layer pruned to no heads has 0 key/value heads. Empty without a cache."""
        if self.spec.kv_cache is None:
            return []
        return [(self.kv_heads(i), self.head_dim(i)) for i in range(len(self.layers))]

    def has_bias(self, role: str) -> bool:
        """Whether every module of a role carries a bias (Qwen2's q/k/v do, Llama's do not;
        BERT's all do): what the parameter costs of a unit count."""
        return all(m.bias is not None for m in self.modules(0, role))

    def ffn_size(self, layer: int) -> int:
        return out_features(self.modules(layer, "ffn_in")[0]) // self.spec.ffn_in_chunks

    def ffn_rows(self, layer: int, neurons: torch.Tensor) -> torch.Tensor:
        """Output rows of each ffn_in projection that hold these channels: the channels
        themselves, or with a fused input (``ffn_in_chunks`` = n) j, j + F, ... j + (n-1)F."""
        n = self.spec.ffn_in_chunks
        if n == 1:
            return neurons
        f = self.ffn_size(layer)
        return (torch.arange(n)[:, None] * f + neurons[None, :]).reshape(-1)  # [n * len(neurons)]

    def layout(self) -> Layout:
        n = len(self.layers)
        return Layout(
            heads_per_layer=tuple(self.num_heads(i) for i in range(n)),
            ffn_per_layer=tuple(self.ffn_size(i) for i in range(n)),
            head_dim=self.head_dim(0),
            hidden_size=int(self.model.config.hidden_size),
            group_size=self.group_size(0),
            ffn_inputs=len(self.spec.ffn_in) * self.spec.ffn_in_chunks,
        )

    def check(self) -> None:
        """Every module the spec names exists in layer 0 of this model, so an adapter that
        does not fit (an unexpected class, a renamed module) fails here with the path it
        looked for, not later inside surgery or a hook."""
        layers = self.spec.layers
        try:
            stack = self.layers
        except AttributeError:
            raise ModelLoadError(f"{self.spec.name} adapter: no layer list at '{layers}' in "
                                 f"{type(self.model.base_model).__name__}") from None
        if not isinstance(stack, nn.ModuleList) or len(stack) == 0:
            raise ModelLoadError(f"{self.spec.name} adapter: '{layers}' in {type(self.model.base_model).__name__} "
                                 "is not a non-empty list of layers")
        what = {"attn_core": "attention module", "attn_out": "attention output projection",
                "query": "query projection", "key": "key projection", "value": "value projection",
                "qkv": "fused qkv projection", "ffn_in": "FFN input projection", "ffn_out": "FFN output projection"}
        for role, name in what.items():
            if getattr(self.spec, role) is None:
                continue
            for path in self._paths(role):
                try:
                    stack[0].get_submodule(path)
                except AttributeError:
                    raise ModelLoadError(f"{self.spec.name} adapter: no {name} found at '{layers}.0.{path}' in "
                                         f"{type(stack[0]).__name__}") from None
        core = stack[0].get_submodule(self.spec.attn_core)
        # (a missing num_heads attribute is counted from the projection widths instead)
        for attr in (self.spec.head_dim, self.spec.group_size):
            if attr is not None and not hasattr(core, attr):
                raise ModelLoadError(f"{self.spec.name} adapter: the attention module '{layers}.0.{self.spec.attn_core}' "
                                     f"({type(core).__name__}) has no '{attr}' attribute")


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
        f"unsupported architecture '{model_type}'; supported: {', '.join(ARCHITECTURES.names())} "
        f"(no ArchSpec in compressor/arch/ declares model_type '{model_type}'; adding one: README, \"Adding a family\")"
    )


def adapter_for(model: nn.Module) -> Adapter:
    """The model's adapter, checked against the model: a module the spec names but the
    model lacks fails here, naming the path (``Adapter.check``)."""
    adapter = Adapter(model, spec_for(getattr(model.config, "model_type", None)))
    adapter.check()
    return adapter


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
