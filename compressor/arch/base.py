"""Architecture adapters: declarative maps from our names to a model's modules.

An adapter is data (``ArchSpec``), not code: the surgery, capture and scorers read
module paths from it, so adding an architecture is one small file with one
``@ARCHITECTURES.register`` call.

Our names, per transformer layer (paths are relative to one layer module):
- ``query``/``key``/``value``: separate projections (BERT, RoBERTa), or ``qkv``: one
  fused projection laid out [q | k | v] on its output axis (GPT-2's ``c_attn``).
- ``attn_out``: the projection that mixes the heads back to the hidden size.
- ``ffn_in`` / ``ffn_out``: the two FFN projections; the neurons are ffn_in's outputs.
- ``attn_core``: the module that owns the head bookkeeping attributes and is replaced
  when a layer loses all of its heads.
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
    ffn_in: str
    ffn_out: str
    num_heads: str  # attribute of attn_core: number of heads
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


@dataclass(frozen=True)
class Layout:
    """The shape of a (possibly pruned) model: what surgery changes and config.json records."""

    heads_per_layer: tuple[int, ...]
    ffn_per_layer: tuple[int, ...]
    head_dim: int
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    def to_json(self) -> dict:
        return {
            "heads_per_layer": list(self.heads_per_layer),
            "ffn_per_layer": list(self.ffn_per_layer),
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(
            tuple(int(h) for h in d["heads_per_layer"]),
            tuple(int(f) for f in d["ffn_per_layer"]),
            int(d["head_dim"]),
            int(d["hidden_size"]),
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

    def module(self, layer: int, role: str) -> nn.Module:
        path = getattr(self.spec, role)
        if path is None:
            raise KeyError(f"{self.spec.name} has no '{role}' module")
        return self.layers[layer].get_submodule(path)

    def set_module(self, layer: int, role: str, new: nn.Module) -> None:
        set_submodule(self.layers[layer], getattr(self.spec, role), new)

    def forward_kwargs(self) -> dict:
        """Extra forward arguments for a plain full-sequence pass: causal models would
        otherwise build a key/value cache nobody reads."""
        return {"use_cache": False} if self.spec.causal else {}

    # -- sizes -----------------------------------------------------------------------
    def num_heads(self, layer: int) -> int:
        return int(getattr(self.module(layer, "attn_core"), self.spec.num_heads))

    def head_dim(self, layer: int) -> int:
        return int(getattr(self.module(layer, "attn_core"), self.spec.head_dim))

    def ffn_size(self, layer: int) -> int:
        return out_features(self.module(layer, "ffn_in"))

    def layout(self) -> Layout:
        n = len(self.layers)
        return Layout(
            heads_per_layer=tuple(self.num_heads(i) for i in range(n)),
            ffn_per_layer=tuple(self.ffn_size(i) for i in range(n)),
            head_dim=self.head_dim(0),
            hidden_size=int(self.model.config.hidden_size),
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
