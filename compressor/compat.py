"""What differs between the transformers majors we support (4.57.x and 5.x), in one place.

Architecture facts (module paths, head attributes) live in compressor/arch/; this module
holds the rest:
- transformers 5 draws its own "Loading weights" / "Writing model shards" progress bars
  and load reports on stderr, which would break the CLI's one-line error rule and
  ``--quiet``: ``quiet_transformers()`` silences them around a load or save;
- the ONNX exporter: optimum's (optimum-onnx, which requires transformers < 4.58) when
  it can be imported, else compressor's own torch.onnx one (compressor/export/onnx.py).
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
