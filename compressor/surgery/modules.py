"""Slicing of projection layers and the modules that stand in for emptied attention."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..arch.base import is_conv1d


class PrunedConv1D(Conv1D):
    """GPT-2's Conv1D that also works with zero input or output features.

    Conv1D flattens with ``view(-1, nx)``, which is ambiguous for zero-element tensors;
    ``flatten`` is not. Same parameters and state-dict keys as Conv1D.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.shape[:-1] + (self.nf,)
        # Zero-width cases avoid reshapes through a 0-sized axis: ONNX's Reshape reads a 0
        # in the target shape as "copy that axis", so the exported graph would fail in ONNX Runtime.
        if self.nf == 0:
            return x[..., :0]  # [..., 0]: no output features
        if self.weight.shape[0] == 0:
            return self.bias.expand(size_out)  # no input features: the output is the bias
        y = torch.addmm(self.bias, x.flatten(0, -2), self.weight)  # [tokens, nf]
        return y.view(size_out)


@torch.no_grad()
def slice_projection(module: nn.Module, index: torch.Tensor, dim: str) -> nn.Module:
    """A copy of a Linear/Conv1D keeping only ``index`` along its 'out' or 'in' features."""
    if dim not in ("out", "in"):
        raise ValueError(dim)
    w = module.weight
    index = index.to(w.device)
    with warnings.catch_warnings():
        # an emptied projection has zero-element weights, whose initialization torch
        # warns is a no-op; the weights are assigned below anyway
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return _sliced(module, w, index, dim)


def _sliced(module: nn.Module, w: torch.Tensor, index: torch.Tensor, dim: str) -> nn.Module:
    if is_conv1d(module):
        # Conv1D weight: [in, out]
        new_w = w.index_select(1 if dim == "out" else 0, index)
        new = PrunedConv1D(new_w.shape[1], new_w.shape[0])
        new.bias = nn.Parameter(module.bias.index_select(0, index).clone() if dim == "out" else module.bias.clone())
    elif isinstance(module, nn.Linear):
        # Linear weight: [out, in]
        new_w = w.index_select(0 if dim == "out" else 1, index)
        new = nn.Linear(new_w.shape[1], new_w.shape[0], bias=module.bias is not None)
        if module.bias is not None:
            b = module.bias.index_select(0, index) if dim == "out" else module.bias
            new.bias = nn.Parameter(b.clone())
    else:
        raise TypeError(f"cannot slice {type(module).__name__}")
    new.weight = nn.Parameter(new_w.clone())
    new.to(device=w.device, dtype=w.dtype)
    new.train(module.training)
    return new


class EmptyAttention(nn.Module):
    """Stands in for the attention core of a layer whose heads were all removed.

    It keeps the original's (now zero-width) child modules so parameter names, module
    paths and the state dict stay those of the architecture. ``returns`` says what the
    caller expects back:
    - "context": an empty [batch, seq, 0] context; the caller's out projection then adds
      its bias, exactly what the masked original computes (BERT, RoBERTa).
    - "projection": the projected output, i.e. out projection bias (GPT-2), or zeros
      when it has none (LLaMA).

    ``as_original_class``: build it as a subclass of the original's class (see
    ``empty_attention``), for models that collect attention maps by hooking every
    module of that class (transformers 4.57's LLaMA family).
    """

    def __init__(self, original: nn.Module, returns: str, attrs: dict[str, int], attn_out_name: str | None,
                 always_maps: bool = False, input_name: str = "hidden_states"):
        nn.Module.__init__(self)  # not super(): in a subclass of the original's class, its __init__ is next
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, value in attrs.items():
            setattr(self, name, value)
        # which entry of a key/value cache is this layer's (decoders; None: no cache)
        if "layer_idx" not in attrs:
            self.layer_idx = getattr(original, "layer_idx", None)
        self.returns = returns
        self.attn_out_name = attn_out_name
        self.always_maps = always_maps
        self.input_name = input_name

    def forward(self, *args, **kwargs):
        # the input comes first, or by keyword (DistilBERT: query=x)
        hidden_states = args[0] if args else kwargs[self.input_name]
        batch, seq, _ = hidden_states.shape  # [batch, seq, hidden]
        context = hidden_states.new_zeros(batch, seq, 0)  # [batch, seq, 0]
        if self.returns == "projection":
            out = getattr(self, self.attn_out_name)(context)  # [batch, seq, hidden]: the bias
        else:
            out = context
        # [batch, 0, q, k]: no heads. Hook-collected maps need one per layer (a None is skipped).
        wants = kwargs.get("output_attentions") or self.always_maps
        attn = hidden_states.new_zeros(batch, 0, seq, seq) if wants else None
        self._record_in_cache(hidden_states, args, kwargs)
        return out, attn

    def _record_in_cache(self, hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """A decoder's cache keeps one entry per layer, and transformers reads the tokens
        seen so far from layer 0's entry: append this layer's keys and values, which have
        no heads ([batch, 0, seq, head_dim]), so the entry grows like every other layer's.
        The cache arrives under a name that differs across transformers versions
        (past_key_values, cache), so it is found by its type."""
        from transformers.cache_utils import Cache

        from ..compat import record_empty_layer

        layer_idx = getattr(self, "layer_idx", None)
        cache = next((v for v in (*kwargs.values(), *args) if isinstance(v, Cache)), None)
        if cache is None or layer_idx is None:
            return
        batch, seq, _ = hidden_states.shape
        empty = hidden_states.new_zeros(batch, 0, seq, int(getattr(self, "head_dim", 0) or 0))  # [batch, 0, seq, d]
        record_empty_layer(cache, layer_idx, empty, empty)


def empty_attention(original: nn.Module, returns: str, attrs: dict[str, int], attn_out_name: str | None,
                    as_original_class: bool = False, input_name: str = "hidden_states") -> EmptyAttention:
    """An ``EmptyAttention`` for ``original``; with ``as_original_class`` it is also an
    instance of the original's class (EmptyAttention first in the MRO, so its forward
    runs), so transformers' class-based output recorders still see one attention per layer."""
    if not as_original_class:
        return EmptyAttention(original, returns, attrs, attn_out_name, input_name=input_name)
    cls = _EMPTY_CLASSES.get(type(original))
    if cls is None:
        cls = type(f"Empty{type(original).__name__}", (EmptyAttention, type(original)), {})
        _EMPTY_CLASSES[type(original)] = cls
    empty = cls(original, returns, attrs, attn_out_name, always_maps=True, input_name=input_name)
    # the original class's plain attributes (config, layer_idx, ...), which code that
    # walks modules of that class may read; the head bookkeeping in attrs wins
    for name, value in vars(original).items():
        if not name.startswith("_") and name not in attrs and not isinstance(value, (nn.Module, torch.Tensor)):
            setattr(empty, name, value)
    return empty


_EMPTY_CLASSES: dict[type, type] = {}


class ConfigView:
    """A model config with some attributes overridden for one module.

    Phi-3's attention reads its head count from the config shared by every layer
    (config.num_attention_heads) at run time, so a layer with its own head count needs
    its own value there. Every other attribute (``_attn_implementation`` included) is
    read from the shared config live, so switching the model's attention implementation
    reaches this layer too. ``copy.deepcopy`` of the model keeps the view on the copy's
    config (one memo for the whole model); save_pretrained writes the model's config,
    never a view.
    """

    def __init__(self, base, **overrides) -> None:
        if isinstance(base, ConfigView):  # a second surgery: one view over the shared config
            overrides = {**base.__dict__["_overrides"], **overrides}
            base = base.__dict__["_base"]
        self.__dict__["_base"] = base
        self.__dict__["_overrides"] = dict(overrides)

    def __getattr__(self, name: str):
        # only reached for names not in __dict__; dunder lookups (copy, pickle) must fail
        d = self.__dict__
        if name.startswith("__") or "_base" not in d:
            raise AttributeError(name)
        if name in d["_overrides"]:
            return d["_overrides"][name]
        return getattr(d["_base"], name)

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__["_overrides"]:
            self.__dict__["_overrides"][name] = value
        else:
            setattr(self.__dict__["_base"], name, value)

    def __repr__(self) -> str:
        return f"ConfigView({type(self.__dict__['_base']).__name__}, {self.__dict__['_overrides']})"
