"""Architecture adapters. Importing this package registers every supported one: each
module of this folder other than ``base`` describes one family and registers it, so
adding a family is adding one file (and its tests)."""

import importlib
import pkgutil

from .base import ARCHITECTURES, Adapter, ArchSpec, Layout, adapter_for, is_conv1d, out_features, spec_for

# sorted, so the registry (and the "supported: ..." list in errors) has one order everywhere
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ARCHITECTURES", "Adapter", "ArchSpec", "Layout", "adapter_for", "is_conv1d", "out_features", "spec_for"]
