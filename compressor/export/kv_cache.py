"""ONNX export of a causal LM decoder with a key/value cache at per-layer head counts.

optimum's exporter builds the cache inputs from the config's one global head count; a
pruned decoder has a different number of key/value heads in every layer (down to none),
so compressor traces its own graph from the model instance, in optimum's names:

- inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, past + seq] (real tokens
  of the past and the new ones), ``position_ids`` [batch, seq] where the architecture
  takes them (``ArchSpec.onnx_inputs``), and per layer ``past_key_values.{i}.key`` /
  ``.value`` [batch, kv_heads_i, past, head_dim] (``Adapter.cache_shapes``);
- outputs ``logits`` [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  [batch, kv_heads_i, past + seq, head_dim].

One graph serves the prompt and every decoding step: the prompt is fed a past of length
0, as optimum's current ORTModelForCausalLM feeds its "with past" ``model.onnx``. The
alternative, optimum's older merged decoder (an ``If`` node choosing between a no-past
and a with-past subgraph on a ``use_cache_branch`` input), stores two traced graphs
for no difference in what is computed; the zero-length past costs nothing measurable.

A layer pruned to 0 heads keeps its cache entry, 0 heads wide: [batch, 0, past,
head_dim]. The entries stay numbered 0..layers-1 like the model's layers, and
transformers reads the tokens seen so far from layer 0's entry, which must grow even
when that layer has no heads (``surgery.modules.EmptyAttention`` appends to it).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..arch.base import Adapter, adapter_for
from ..compat import (
    cache_argument,
    cache_from_tensors,
    cache_tensors,
    output_cache,
    quiet_transformers,
    traceable_masks,
)
from ..errors import CompressorError

PAST = "past_key_values.{layer}.{kind}"
PRESENT = "present.{layer}.{kind}"
# axis names as optimum's TextDecoderOnnxConfig writes them
BATCH, SEQ, PAST_SEQ, TOTAL_SEQ = "batch_size", "sequence_length", "past_sequence_length", \
    "past_sequence_length + sequence_length"
DECODE_STEPS = 3  # decoding steps checked by parity after the prompt


def past_names(layers: int) -> list[str]:
    return [PAST.format(layer=i, kind=k) for i in range(layers) for k in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [PRESENT.format(layer=i, kind=k) for i in range(layers) for k in ("key", "value")]


def cache_reason(adapter: Adapter, task: str) -> str | None:
    """Why this model cannot be exported with a key/value cache; None when it can."""
    if adapter.spec.kv_cache is None:
        return f"{adapter.spec.name} is not a decoder: it has no key/value cache"
    if task != "text-generation":
        return f"only a decoder with its LM head (text-generation) is exported with a cache; this model is {task}"
    return None


def resolve_cache(adapter: Adapter, task: str, requested: bool | None) -> bool:
    """Whether to export with a cache: ``None`` means yes wherever possible (a decoder
    with its LM head); ``True`` where it is not possible is an error saying why."""
    reason = cache_reason(adapter, task)
    if requested is None:
        return reason is None
    if requested and reason is not None:
        raise CompressorError(f"cannot export with a key/value cache: {reason}; export without one (cache: false)")
    return bool(requested)


class _CachedDecoder(nn.Module):
    """Flat graph inputs -> the model with a transformers cache -> flat outputs (logits,
    then every layer's keys and values)."""

    def __init__(self, model: nn.Module, input_names: list[str], layers: int) -> None:
        super().__init__()
        self.model, self.input_names, self.layers = model, input_names, layers
        self.cache_arg = cache_argument(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.input_names)
        named = dict(zip(self.input_names, inputs[:n], strict=True))
        past = inputs[n:]
        cache = cache_from_tensors([(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.model(**named, **{self.cache_arg: cache}, use_cache=True, return_dict=True)
        presents = cache_tensors(output_cache(out))
        if len(presents) != self.layers:
            raise CompressorError(f"the model returned a cache of {len(presents)} layers; it has {self.layers}")
        return (out.logits, *(t for kv in presents for t in kv))


def position_ids(mask: np.ndarray, new: int) -> np.ndarray:
    """Positions of the last ``new`` tokens: real tokens counted from 0, padding at 0."""
    return np.clip(np.cumsum(mask, 1) - 1, 0, None)[:, mask.shape[1] - new :].astype(np.int64)


def export_cached(model: nn.Module, path: Path, opset: int) -> None:
    """Trace ``model`` (a decoder with its LM head, eval mode, eager attention) into
    ``path`` with the inputs and outputs of the module docstring."""
    adapter = adapter_for(model)
    shapes = adapter.cache_shapes()
    layers = len(shapes)
    input_names = list(adapter.spec.onnx_inputs)
    # A padded dummy: past 3, 4 new tokens, the second row left-padded, so the graph keeps
    # the general mask path; the past and batch axes are dynamic (a past of 0 included).
    batch, past, seq = 2, 3, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.vocab_size), (batch, seq), generator=g)
    mask = np.ones((batch, past + seq), dtype=np.int64)
    mask[1, :2] = 0
    feeds = {"input_ids": ids, "attention_mask": torch.from_numpy(mask),
             "position_ids": torch.from_numpy(position_ids(mask, seq))}
    missing = [k for k in input_names if k not in feeds]
    if missing:
        raise CompressorError(f"the cached graph wants inputs {missing} that compressor cannot fill")
    dtype = next(model.parameters()).dtype
    past_tensors = [torch.randn(batch, h, past, d, generator=g).to(dtype) for h, d in shapes for _ in range(2)]
    args = tuple(feeds[k] for k in input_names) + tuple(past_tensors)
    axes = {"input_ids": {0: BATCH, 1: SEQ}, "position_ids": {0: BATCH, 1: SEQ},
            "attention_mask": {0: BATCH, 1: TOTAL_SEQ}, "logits": {0: BATCH, 1: SEQ}}
    dynamic_axes = {k: axes[k] for k in input_names}
    dynamic_axes.update({n: {0: BATCH, 2: PAST_SEQ} for n in past_names(layers)})
    dynamic_axes.update({n: {0: BATCH, 2: TOTAL_SEQ} for n in present_names(layers)})
    dynamic_axes["logits"] = axes["logits"]
    wrapper = _CachedDecoder(model, input_names, layers).eval()
    with traceable_masks(), quiet_transformers(), warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about Python bools in transformers' mask and cache code: those
        # branches are fixed for any padded batch, and parity (prompt and decode) checks the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(path), input_names=input_names + past_names(layers),
            output_names=["logits", *present_names(layers)], dynamic_axes=dynamic_axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


# -- running the graph -----------------------------------------------------------------


def graph_past_shapes(session) -> list[tuple[int, int]] | None:
    """(key/value heads, head_dim) per layer from a session's past inputs; None when the
    graph has no cache inputs."""
    inputs = {i.name: i for i in session.get_inputs()}
    shapes = []
    while PAST.format(layer=len(shapes), kind="key") in inputs:
        shape = inputs[PAST.format(layer=len(shapes), kind="key")].shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in (shape[1], shape[3])):
            raise CompressorError(f"cache input {PAST.format(layer=len(shapes), kind='key')} has shape {shape}; "
                                  "expected [batch, heads, past, head_dim] with fixed heads and head_dim")
        shapes.append((int(shape[1]), int(shape[3])))
    return shapes or None


def empty_past(shapes: list[tuple[int, int]], batch: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Zero-length past tensors ([batch, heads, 0, head_dim]) for the prompt."""
    feeds = {}
    for i, (h, d) in enumerate(shapes):
        for k in ("key", "value"):
            feeds[PAST.format(layer=i, kind=k)] = np.zeros((batch, h, 0, d), dtype=dtype)
    return feeds


class OrtDecoder:
    """Runs a cached graph step by step: ``prompt`` then ``step``; keeps the presents and
    the attention mask between calls."""

    def __init__(self, session) -> None:
        self.session = session
        self.shapes = graph_past_shapes(session)
        if self.shapes is None:
            raise CompressorError("the ONNX graph has no key/value cache inputs (past_key_values.0.key ...); "
                                  "export it with a cache (the default for a decoder with its LM head)")
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.layers = len(self.shapes)
        self.past: dict[str, np.ndarray] = {}
        self.mask: np.ndarray | None = None

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask, ids.shape[1]), **past}
        out = self.session.run(None, {k: feeds[k] for k in self.input_names})
        named = dict(zip(self.output_names, out, strict=True))
        self.past = {PAST.format(layer=i, kind=k): named[PRESENT.format(layer=i, kind=k)]
                     for i in range(self.layers) for k in ("key", "value")}
        self.mask = mask
        return named["logits"]

    def prompt(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits [batch, seq, vocab] of a prompt (past of length 0)."""
        return self._run(ids.astype(np.int64), mask.astype(np.int64), empty_past(self.shapes, ids.shape[0]))

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Logits [batch, new, vocab] of ``ids`` [batch, new] after everything fed so far."""
        mask = np.concatenate([self.mask, np.ones(ids.shape, dtype=np.int64)], 1)  # [batch, past + new]
        return self._run(ids.astype(np.int64), mask, self.past)


class TorchDecoder:
    """The same steps in PyTorch with transformers' own DynamicCache (the reference)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache_arg = cache_argument(model)
        self.takes_positions = adapter_for(model).spec.takes_input("position_ids")
        self.cache = None
        self.mask: torch.Tensor | None = None

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        pos = torch.from_numpy(position_ids(mask.numpy(), ids.shape[1]))
        kwargs = {"position_ids": pos} if self.takes_positions else {}
        out = self.model(input_ids=ids, attention_mask=mask, **kwargs, **{self.cache_arg: cache}, use_cache=True)
        self.cache, self.mask = output_cache(out), mask
        return out.logits

    def prompt(self, ids, mask) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache

        return self._run(torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long),
                         DynamicCache())

    def step(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        mask = torch.cat([self.mask, torch.ones_like(ids)], 1)
        return self._run(ids, mask, self.cache)


def compare_cached(model: nn.Module, session, ids: np.ndarray, mask: np.ndarray,
                   steps: int = DECODE_STEPS) -> tuple[float, float, float]:
    """(largest |ONNX - PyTorch| of the prompt's logits at real tokens, the same over
    ``steps`` decoding steps with the past, mean cosine of all compared logit vectors).
    Both decode the same tokens (PyTorch's greedy choice at each row's last position),
    so a difference is the graph's, never a diverging choice."""
    ref, onnx = TorchDecoder(model), OrtDecoder(session)
    t = ref.prompt(ids, mask).numpy()
    o = onnx.prompt(ids, mask)
    if o.shape != t.shape:
        raise CompressorError(f"ONNX logits shape {o.shape} differs from PyTorch's {t.shape}")
    real = mask.astype(bool)
    pairs = [(o[real], t[real])]
    prompt_diff = float(np.abs(o[real] - t[real]).max())
    decode = []
    last = t[:, -1]
    for _ in range(steps):
        nxt = last.argmax(-1)[:, None].astype(np.int64)  # [batch, 1]
        t = ref.step(nxt).numpy()
        o = onnx.step(nxt)
        decode.append(np.abs(o - t).max())
        pairs.append((o.reshape(-1, o.shape[-1]), t.reshape(-1, t.shape[-1])))
        last = t[:, -1]
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    decode_diff = float(np.max(decode)) if decode else 0.0  # np.max keeps a NaN (max() would drop it)
    return prompt_diff, decode_diff, float(cos.mean())
