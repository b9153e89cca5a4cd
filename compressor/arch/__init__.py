"""Architecture adapters. Importing this package registers every supported one."""

from . import bert, gpt2, llama, mistral, qwen2, qwen3, roberta  # noqa: F401  (registration side effect)
from .base import ARCHITECTURES, Adapter, ArchSpec, Layout, adapter_for, is_conv1d, out_features, spec_for

__all__ = ["ARCHITECTURES", "Adapter", "ArchSpec", "Layout", "adapter_for", "is_conv1d", "out_features", "spec_for"]
