"""compressor: make BERT- and GPT-2-style transformers smaller, and say why.

The names below are imported on first use (PEP 562), so ``import compressor`` and the
command line's help and validation errors do not wait for torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_LAZY = {
    "load_model": ".models",
    "save_model": ".models",
    "apply_plan": ".surgery.prune",
    "mask_plan": ".surgery.prune",
    "PruningPlan": ".types",
    "HeadScores": ".types",
    "NeuronScores": ".types",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        importlib.import_module(".arch", __name__)  # registers the architectures
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
