"""What differs between the transformers majors we support (4.57.x and 5.x), in one place.

Architecture facts (module paths, head attributes) live in compressor/arch/; this module
holds the rest:
- transformers 5 draws its own "Loading weights" / "Writing model shards" progress bars
  and load reports on stderr, which would break the CLI's one-line error rule and
  ``--quiet``: ``quiet_transformers()`` silences them around a load or save;
- whether optimum's ONNX exporter can be imported (optimum-onnx requires transformers
  < 4.58); compressor exports with its own torch.onnx exporter by default
  (compressor/export/onnx.py), which under 4.57 needs masks built without torch.vmap
  (``traceable_masks``). Under 5.x it needs per-layer head counts written back into the
  graph (``export.onnx.explicit_head_counts``, a graph fact, so it lives there).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@functools.cache
def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars off and its logging at ERROR for the duration."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@functools.cache
def optimum_exporter_available() -> bool:
    """optimum's ONNX exporter imports (optimum-onnx is installed and accepts this
    transformers). Any failure counts as absent: optimum-onnx 0.1 installed beside
    transformers 5 fails at import, not at install time only."""
    try:
        from optimum.exporters.onnx import onnx_export_from_model  # noqa: F401
    except Exception:
        return False
    return True


@contextlib.contextmanager
def traceable_masks() -> Iterator[None]:
    """Attention masks that TorchScript tracing (``torch.onnx.export(dynamo=False)``) can
    follow, for the duration.

    transformers 4.53-4.57 build every 4-D mask (the eager one too) with ``torch.vmap``,
    which the tracer cannot record (GPT-2 fails with ``unordered_map::at``); here the same
    mask function is evaluated on broadcast index grids instead, which gives the same
    boolean mask. transformers 5 builds masks without vmap unless asked: nothing to do.
    """
    import torch
    from transformers import masking_utils as mu

    if transformers_major() >= 5 or not hasattr(mu, "_vmap_for_bhqkv"):
        yield
        return

    def sdpa_mask_broadcast(batch_size, cache_position, kv_length, kv_offset=0, mask_function=mu.causal_mask_function,
                            attention_mask=None, local_size=None, allow_is_causal_skip=True, **kwargs):
        q_length = cache_position.shape[0]
        padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
        if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(padding_mask, q_length, kv_length, kv_offset, local_size):
            return None
        if padding_mask is not None:
            mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
        device = cache_position.device
        b = torch.arange(batch_size, device=device)[:, None, None, None]  # [batch, 1, 1, 1]
        h = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]  # [1, 1, 1, 1]
        q = cache_position[None, None, :, None]  # [1, 1, q, 1]
        kv = (torch.arange(kv_length, device=device) + kv_offset)[None, None, None, :]  # [1, 1, 1, kv]
        return mask_function(b, h, q, kv).expand(batch_size, 1, q_length, kv_length)  # [batch, 1, q, kv]

    before = mu.sdpa_mask
    mu.sdpa_mask = sdpa_mask_broadcast  # eager_mask calls the module-level sdpa_mask
    try:
        yield
    finally:
        mu.sdpa_mask = before


# -- key/value caches -----------------------------------------------------------------
# transformers 4.57 and 5.x both keep a DynamicCache as a list of DynamicLayer objects
# holding ``keys``/``values`` [batch, kv_heads, seq, head_dim]. They differ in names: the
# forward argument and output field are ``past_key_values`` in 4.57 and ``cache`` in 5.x
# (``past_key_values`` is a deprecated alias there).


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes a key/value cache."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The key/value cache a forward returned (None when it returned none)."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def _counted_layer_class():
    """DynamicLayer whose length is its tensors' sequence axis even when they hold no
    elements. transformers' DynamicLayer reports length 0 for an empty tensor, so a layer
    pruned to 0 key/value heads ([batch, 0, seq, head_dim]) would read as an empty cache,
    and a model whose layer 0 has no heads would number positions and size masks from 0
    at every decoding step (both read the length of layer 0)."""
    global _COUNTED
    if _COUNTED is None:
        from transformers.cache_utils import DynamicLayer

        class CountedDynamicLayer(DynamicLayer):
            def get_seq_length(self) -> int:
                if not self.is_initialized or self.keys is None or self.keys.dim() < 2:
                    return 0
                return self.keys.shape[-2]

        _COUNTED = CountedDynamicLayer
    return _COUNTED


_COUNTED = None


def cache_from_tensors(pairs):
    """A DynamicCache holding ``pairs`` [(keys, values)] per layer, each [batch, kv_heads,
    past, head_dim] (past may be 0, kv_heads may be 0), set directly rather than through
    ``update``: update concatenates onto a 1-D empty tensor, which an ONNX trace cannot
    express as a Concat of same-rank tensors."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    layer_class = _counted_layer_class()
    for keys, values in pairs:
        layer = layer_class()
        layer.keys, layer.values, layer.is_initialized = keys, values, True
        layer.dtype, layer.device = keys.dtype, keys.device
        cache.layers.append(layer)
    return cache


def cache_tensors(cache) -> list[tuple]:
    """[(keys, values)] per layer of a cache (its self-attention part)."""
    cache = getattr(cache, "self_attention_cache", cache)
    return [(layer.keys, layer.values) for layer in cache.layers]


def record_empty_layer(cache, layer_idx: int, keys, values) -> None:
    """Append a headless layer's zero-head keys/values ([batch, 0, seq, head_dim]) to its
    cache layer, so the cache keeps one entry per layer whose sequence length counts the
    tokens seen (see ``_counted_layer_class``)."""
    from transformers.cache_utils import DynamicLayer

    cache = getattr(cache, "self_attention_cache", cache)
    cache.update(keys, values, layer_idx)
    layers = getattr(cache, "layers", None)
    if layers is not None and type(layers[layer_idx]) is DynamicLayer:
        # same state, a length read from the sequence axis (no new attributes)
        layers[layer_idx].__class__ = _counted_layer_class()
