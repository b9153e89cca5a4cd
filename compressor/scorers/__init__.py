"""Scorers. Importing this package registers every built-in one."""

from ..topology import heads as _topology  # noqa: F401  (registration side effect)
from . import baseline, fisher, head_types, persistence, redundancy, sieve_roles  # noqa: F401
from .base import SCORERS, CaptureBatch, Scorer, ScoringContext

__all__ = ["SCORERS", "CaptureBatch", "Scorer", "ScoringContext"]
