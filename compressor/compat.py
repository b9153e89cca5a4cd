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
