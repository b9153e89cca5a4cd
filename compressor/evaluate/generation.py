"""Greedy generation with a key/value cache, in ONNX Runtime and in PyTorch, and its timing.

``ort_greedy`` runs a graph exported with a cache (export/kv_cache.py): the prompt once
with a past of length 0, then one token per step with the presents fed back as the past.
``torch_greedy`` does the same steps with transformers' DynamicCache; both pick the
highest logit at the last position of each row and generate exactly ``new_tokens``
tokens (no end-of-sequence stop), so for the same model they return the same tokens,
which ``model.generate(do_sample=False, eos_token_id=None)`` returns too. Batches are
left-padded, as for transformers' ``generate``: the last position of each row is real.

``time_generation`` measures prompt latency (one forward over the prompt, building the
cache) and decoding speed (``new_tokens`` steps after it, tokens per second), interleaved
across models and backends as ``latency.measure`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compat import cache_from_tensors, cache_tensors
from ..errors import CompressorError
from ..export.kv_cache import OrtDecoder, TorchDecoder


def _prompt(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise CompressorError(f"input_ids must be [batch, length >= 1]; got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != ids.shape:
        raise CompressorError(f"attention_mask shape {mask.shape} differs from input_ids' {ids.shape}")
    return ids, mask


def _greedy(decoder, ids: np.ndarray, mask: np.ndarray, new_tokens: int, to_numpy) -> np.ndarray:
    out = np.zeros((ids.shape[0], new_tokens), dtype=np.int64)  # [batch, new_tokens]
    if new_tokens == 0:
        return out
    logits = to_numpy(decoder.prompt(ids, mask))
    for t in range(new_tokens):
        out[:, t] = logits[:, -1].argmax(-1)
        if t + 1 < new_tokens:
            logits = to_numpy(decoder.step(out[:, t : t + 1]))
    return out


def ort_greedy(session_or_path, input_ids, attention_mask=None, new_tokens: int = 16) -> np.ndarray:
    """The ``new_tokens`` [batch, new_tokens] a cached ONNX graph generates greedily after
    a (left-padded) prompt. ``session_or_path``: an ``onnxruntime.InferenceSession`` or a
    .onnx file."""
    if isinstance(session_or_path, (str, Path)):
        from ..export.onnx import _session

        session_or_path = _session(Path(session_or_path))
    ids, mask = _prompt(input_ids, attention_mask)
    return _greedy(OrtDecoder(session_or_path), ids, mask, new_tokens, np.asarray)


def torch_greedy(model: nn.Module, input_ids, attention_mask=None, new_tokens: int = 16) -> np.ndarray:
    """The same greedy steps in PyTorch, with transformers' DynamicCache."""
    ids, mask = _prompt(input_ids, attention_mask)
    return _greedy(TorchDecoder(model.eval()), ids, mask, new_tokens, lambda t: t.float().numpy())


# -- timing --------------------------------------------------------------------------


@dataclass
class GenerationTiming:
    model: str
    backend: str
    batch: int
    prompt_len: int
    new_tokens: int
    prompt_ms: float  # median over runs: one forward over the prompt, cache built
    prompt_p90_ms: float
    decode_ms_per_token: float  # median over runs of (time of new_tokens steps) / new_tokens
    tokens_per_s: float  # batch * new_tokens / median decode time
    runs: int
    # this row over the first subject's (the original) with the same backend: prompt_ms
    # and tokens_per_s ratios; empty for the first subject
    vs_first: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _runners(decoder, ids: np.ndarray, mask: np.ndarray, new_tokens: int, save, restore, to_numpy):
    """(prompt runner, decode runner): the decode runner starts every call from the state
    after the prompt, so each call times the same ``new_tokens`` steps."""
    first = to_numpy(decoder.prompt(ids, mask))[:, -1].argmax(-1)[:, None]  # [batch, 1]
    state = save(decoder)

    def prompt():
        decoder.prompt(ids, mask)

    def decode():
        restore(decoder, state)
        nxt = first
        for _ in range(new_tokens):
            nxt = to_numpy(decoder.step(nxt))[:, -1].argmax(-1)[:, None]

    return prompt, decode


def ort_runners(session, ids, mask, new_tokens):
    def save(d):
        return d.past, d.mask

    def restore(d, state):
        d.past, d.mask = state

    return _runners(OrtDecoder(session), ids, mask, new_tokens, save, restore, np.asarray)


def torch_runners(model: nn.Module, ids, mask, new_tokens):
    def save(d):
        return [(k.clone(), v.clone()) for k, v in cache_tensors(d.cache)], d.mask

    def restore(d, state):
        # the cache grows in place as it decodes: a fresh one holding the prompt's tensors
        d.cache, d.mask = cache_from_tensors(state[0]), state[1]

    with torch.inference_mode():
        return _runners(TorchDecoder(model.eval()), ids, mask, new_tokens, save, restore, lambda t: t.float().numpy())


def time_generation(
    subjects: list,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    runs: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    spin: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[GenerationTiming]:
    """Prompt latency and decoding speed of every subject (``latency.Subject``: a PyTorch
    model and/or an export folder with a cached graph) x backend, on one random prompt
    [batch, prompt_len]; ratios against the first subject (the original) per backend."""
    from .latency import _vocab_size, measure, onnx_files, ort_session, random_batch

    ids = random_batch(_vocab_size(subjects[0]), batch, prompt_len)["input_ids"]
    mask = np.ones_like(ids)
    prompts: dict[tuple[str, str], Callable] = {}
    decodes: dict[tuple[str, str], Callable] = {}
    for s in subjects:
        if s.model is not None:
            prompts[(s.label, s.torch_backend)], decodes[(s.label, s.torch_backend)] = torch_runners(
                s.model, ids, mask, new_tokens)
        if s.onnx_dir is not None:
            for name, path in onnx_files(s.onnx_dir).items():
                sess = ort_session(path, threads, spin)
                prompts[(s.label, name)], decodes[(s.label, name)] = ort_runners(sess, ids, mask, new_tokens)
    prompt_t = measure(prompts, warmup, runs)
    decode_t = measure(decodes, warmup, runs)
    rows = []
    for key, (med, p90) in prompt_t.items():
        dec = decode_t[key][0]
        rows.append(GenerationTiming(key[0], key[1], batch, prompt_len, new_tokens, med, p90, dec / new_tokens,
                                     batch * new_tokens / (dec / 1e3), runs))
    first = {r.backend: r for r in rows if r.model == subjects[0].label}
    for r in rows:
        ref = first.get(r.backend)
        if ref is not None and r is not ref:
            r.vs_first = {"prompt_ms": r.prompt_ms / ref.prompt_ms, "tokens_per_s": r.tokens_per_s / ref.tokens_per_s}
    if progress:
        for r in rows:
            rel = (f"  (x{r.vs_first['prompt_ms']:.2f} prompt, x{r.vs_first['tokens_per_s']:.2f} tokens/s)"
                   if r.vs_first else "")
            progress(f"{r.model:>14s} {r.backend:>10s} batch {r.batch:>2d}: prompt {r.prompt_len} tokens "
                     f"{r.prompt_ms:8.2f} ms, decode {r.new_tokens} tokens {r.tokens_per_s:8.1f} tokens/s{rel}")
    return rows
