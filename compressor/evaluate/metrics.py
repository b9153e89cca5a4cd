"""GLUE metrics, computed with scikit-learn and scipy.

``evaluate.load("glue", ...)`` fetches its metric script from the hub, which is not
reachable offline; these are the same definitions (GLUE reports F1 of the positive
class, Matthews correlation, Pearson and Spearman correlation), as plain functions.
"""

from __future__ import annotations

import numpy as np

from ..data.glue import GlueTask


def _accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return float((pred == ref).mean())


def _f1(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(ref, pred, pos_label=1, average="binary", zero_division=0.0))


def _mcc(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(ref, pred))


def _pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    from scipy.stats import pearsonr

    if np.ptp(pred) == 0 or np.ptp(ref) == 0:  # undefined; a constant predictor earns 0
        return 0.0
    return float(pearsonr(pred, ref).statistic)


def _spearman(pred: np.ndarray, ref: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    return float(spearmanr(pred, ref).statistic)


METRICS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
}


def predictions(task: GlueTask, logits: np.ndarray) -> np.ndarray:
    """Class ids from logits [examples, labels], or scores for regression [examples]."""
    if task.is_regression:
        return logits.reshape(len(logits), -1)[:, 0].astype(np.float64)
    return logits.argmax(-1)


def glue_metrics(task: GlueTask, pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The task's GLUE metrics, as fractions (accuracy 0.91, not 91)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{len(pred)} predictions for {len(ref)} labels")
    return {name: METRICS[name](pred, ref) for name in task.metrics}
