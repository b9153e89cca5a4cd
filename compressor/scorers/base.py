"""Scorer protocol.

A scorer ranks heads and/or FFN neurons (higher score = keep). It never changes
weights. Data-driven scorers are streaming reducers: the single capture pass calls
``update`` once per batch, then ``finish`` once; memory grows with the batch, not with
the number of calibration sequences (unless the method itself needs every sample,
like persistence, which keeps N x neurons floats per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..arch.base import Adapter, Layout, is_conv1d
from ..registry import Registry
from ..schema import Field
from ..types import Scores
from .specs import SPECS, ScorerSpec


@dataclass
class ScoringContext:
    model: nn.Module  # read only
    adapter: Adapter
    layout: Layout
    seed: int
    tokenizer: Any = None  # for special-token ids; None for tokenizer-less test models


def token_id(tokenizer, token: str | None) -> int:
    """Id of a token string, or -1 (matches nothing) when absent."""
    if tokenizer is None or token is None:
        return -1
    tid = tokenizer.convert_tokens_to_ids(token)
    return -1 if tid is None or tid == tokenizer.unk_token_id else int(tid)


@dataclass
class CaptureBatch:
    """What one forward pass over one calibration batch exposes to the scorers."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq] 1 = real token
    summary_index: torch.Tensor  # [batch] position of the [CLS]-like token
    attentions: tuple[torch.Tensor, ...] | None  # per layer [batch, heads_l, seq(q), seq(k)]
    ffn_summary: tuple[torch.Tensor, ...] | None  # per layer [batch, neurons_l], after the activation
    # needs "gradients" only (compressor.masking.mask_gradients): per-example gradients of
    # the scorer's own losses() w.r.t. each head's / neuron's mask, per layer
    # [probes, batch, heads_l] and [probes, batch, neurons_l]
    head_grads: tuple[torch.Tensor, ...] | None = None
    neuron_grads: tuple[torch.Tensor, ...] | None = None
    labels: torch.Tensor | None = None  # [batch] calibration labels when the source has them
    token_type_ids: torch.Tensor | None = None  # [batch, seq] segments of sentence pairs, when the tokenizer makes them
    # Buffers reused from batch to batch (run_capture passes one dict for the whole run):
    # allocating a fresh copy of all attention maps per batch costs more in page faults
    # than filling it. Scorers reduce each batch before the next, so reuse is safe.
    workspace: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def buffer(self, name: str, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """An uninitialized contiguous float32 tensor, the same storage every batch while
        the shape matches. Only for use within one update(): the next batch overwrites it."""
        buf = self.workspace.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.device != torch.device(device):
            buf = self.workspace[name] = torch.empty(shape, dtype=torch.float32, device=device)
        return buf

    def heads(self) -> torch.Tensor:
        """All heads stacked, padded query rows zeroed: [batch, N, q, k] float32.

        Computed once per batch, into a buffer reused across batches, and shared by
        every scorer. The memory is laid out [batch, q, N, k] and the result is a
        transposed view of it: all heads' rows of one query sit together, which is what
        the per-query products of head_types and sieve_roles read
        (``heads().transpose(1, 2)`` is contiguous) and what keeps a block of queries of
        every head in cache for the pairwise distances."""
        if "heads" not in self._cache:
            layers = [a for a in self.attentions if a.shape[1] > 0]
            if not layers:  # every head of the model was removed: no maps to stack
                b, _, q, k = self.attentions[0].shape
                self._cache["heads"] = self.attentions[0].new_zeros(b, 0, q, k, dtype=torch.float32)
                return self._cache["heads"]
            b, _, q, k = layers[0].shape
            n = sum(a.shape[1] for a in layers)
            store = self.buffer("heads", (b, q, n, k), layers[0].device)
            start = 0
            for a in layers:  # copy_ also converts half-precision maps to float32
                store[:, :, start : start + a.shape[1]].copy_(a.transpose(1, 2))
                start += a.shape[1]
            if not bool(self.attention_mask.all()):
                store.mul_(self.attention_mask[:, :, None, None].to(store.dtype))  # padded query rows -> 0
            self._cache["heads"] = store.transpose(1, 2)
        return self._cache["heads"]


class Scorer:
    """A built-in scorer sets only ``name``: its needs, products and parameters come from
    its ScorerSpec in specs.py (readable without torch). A plug-in sets them here."""

    name: ClassVar[str]
    # subset of {"attentions", "ffn_summary"} (one no-grad pass shared by all scorers) or
    # {"gradients"} (a gradient-enabled pass of its own: capture calls losses() on the
    # model's output and hands update() the per-example mask gradients)
    needs: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()  # subset of {"heads", "neurons"}
    # True when head and neuron scores are on one scale (comparable across kinds and
    # layers), so a shared budget can rank them together (targets.budget, split: auto)
    shared_scale: ClassVar[bool] = False
    params: ClassVar[dict[str, Field]] = {}
    spec: ClassVar[ScorerSpec]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if name in SPECS:
            spec = SPECS[name]
            cls.needs, cls.produces, cls.params = spec.needs, spec.produces, spec.params
            cls.follows_head_ratio, cls.shared_scale = spec.follows_head_ratio, spec.shared_scale
        else:
            spec = ScorerSpec(name, cls.__module__, frozenset(cls.produces), frozenset(cls.needs), dict(cls.params),
                              bool(getattr(cls, "follows_head_ratio", False)), shared_scale=cls.shared_scale,
                              labels=lambda p, cls=cls: cls.needs_labels(p))
        cls.spec = spec

    @classmethod
    def check_params(cls, data: dict[str, Any], path: str) -> dict[str, Any]:
        return cls.spec.check_params(data, path)

    def __init__(self, **params: Any) -> None:
        self.p = self.check_params(params, f"scorers.{self.name}.params")

    def begin(self, ctx: ScoringContext) -> None:
        self.ctx = ctx

    @classmethod
    def needs_labels(cls, params: dict[str, Any]) -> bool:
        """Whether, with these (checked) params, the scorer needs labelled calibration
        (a built-in scorer answers through its spec)."""
        spec = SPECS.get(cls.__dict__.get("name", ""))
        return spec.needs_labels(params) if spec is not None else False

    def losses(self, output: Any, batch: CaptureBatch) -> list[torch.Tensor]:
        """needs "gradients": scalar losses (each a sum of per-example losses) whose mask
        gradients update() receives; one per probe."""
        raise NotImplementedError

    def update(self, batch: CaptureBatch) -> None:
        """Called once per calibration batch; scorers with no ``needs`` are never called."""

    def finish(self) -> Scores:
        raise NotImplementedError


SCORERS: Registry[type[Scorer]] = Registry("scorer")


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    return SCORERS.register(cls.name)(cls)


def per_layer(flat, heads_per_layer) -> tuple[tuple[tuple[float, ...], ...], list[str]]:
    """Split one score per head of the whole model into per-layer tuples, with the
    heads' "layer.head" names in the same order."""
    values, names, start = [], [], 0
    for layer, h in enumerate(heads_per_layer):
        values.append(tuple(float(v) for v in flat[start : start + h]))
        names += [f"{layer}.{i}" for i in range(h)]
        start += h
    return tuple(values), names


def delimiter_ids(tokenizer) -> dict[str, int]:
    """Ids of the sequence-start and sequence-end tokens ([CLS]/[SEP], <s>/</s>, or
    GPT-2's bos/eos); -1 where the model has none."""
    def first(*attrs):
        return next((getattr(tokenizer, a) for a in attrs if getattr(tokenizer, a, None)), None)

    return {"cls": token_id(tokenizer, first("cls_token", "bos_token")),
            "sep": token_id(tokenizer, first("sep_token", "eos_token"))}


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """A projection's weight as [out, in], whatever its storage (Linear or Conv1D)."""
    w = module.weight.detach()
    return w.t() if is_conv1d(module) else w
