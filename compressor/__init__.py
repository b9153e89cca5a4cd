"""compressor: make BERT- and GPT-2-style transformers smaller, and say why."""

from . import arch  # noqa: F401  (registers architectures)
from .models import load_model, save_model
from .surgery.prune import apply_plan, mask_plan
from .types import HeadScores, NeuronScores, PruningPlan

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "apply_plan", "mask_plan", "PruningPlan", "HeadScores", "NeuronScores"]
