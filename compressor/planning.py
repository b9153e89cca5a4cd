"""Scores + targets -> PruningPlan. Pure: no model, no weights, no data."""

from __future__ import annotations

import numpy as np

from .arch.base import Layout
from .errors import RecipeError
from .recipe import HeadTarget, NeuronTarget
from .types import HeadScores, NeuronScores, PruningPlan


def _lowest_first(scores: list[np.ndarray]) -> np.ndarray:
    """(layer, index) pairs of all units, lowest score first; ties broken by position."""
    layer = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)]).astype(int)
    index = np.concatenate([np.arange(len(s)) for s in scores]).astype(int)
    value = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    order = np.lexsort((index, layer, value))
    return np.stack([layer[order], index[order]], 1)


def _take_lowest(scores: list[np.ndarray], counts: list[int]) -> dict[int, list[int]]:
    out = {}
    for i, (s, k) in enumerate(zip(scores, counts, strict=True)):
        if k > 0:
            out[i] = sorted(np.lexsort((np.arange(len(s)), np.asarray(s, dtype=np.float64)))[:k].tolist())
    return out


def _take_global(scores: list[np.ndarray], total: int, floor: int) -> dict[int, list[int]]:
    """Remove the ``total`` lowest units model-wide while every layer keeps >= floor."""
    room = [max(len(s) - floor, 0) for s in scores]
    out: dict[int, list[int]] = {}
    taken = 0
    for layer, index in _lowest_first(scores):
        if taken == total:
            break
        if room[layer] > 0:
            room[layer] -= 1
            out.setdefault(int(layer), []).append(int(index))
            taken += 1
    return {k: sorted(v) for k, v in out.items()}


def plan_heads(scores: HeadScores, layout: Layout, target: HeadTarget) -> dict[int, list[int]]:
    values = [np.asarray(v, dtype=np.float64) for v in scores.values]
    _check_shapes("head", [len(v) for v in values], list(layout.heads_per_layer), scores.scorer)
    if target.scope == "per_layer":
        counts = [min(int(round(target.ratio * n)), max(n - target.min_per_layer, 0)) for n in layout.heads_per_layer]
        return _take_lowest(values, counts)
    total = int(round(target.ratio * sum(layout.heads_per_layer)))
    return _take_global(values, total, target.min_per_layer)


def plan_neurons(scores: NeuronScores, layout: Layout, target: NeuronTarget) -> dict[int, list[int]]:
    values = [np.asarray(v, dtype=np.float64) for v in scores.values]
    _check_shapes("neuron", [len(v) for v in values], list(layout.ffn_per_layer), scores.scorer)
    floor = target.min_per_layer
    if target.ratio is not None:
        if target.scope == "per_layer":
            counts = [min(int(round(target.ratio * len(v))), max(len(v) - floor, 0)) for v in values]
            return _take_lowest(values, counts)
        return _take_global(values, int(round(target.ratio * sum(map(len, values)))), floor)
    # percentile: remove every unit strictly below the p-th percentile (of its layer, or
    # of the whole model), so ties at the threshold are kept, never split arbitrarily.
    if target.scope == "per_layer":
        counts = [
            min(int((v < np.percentile(v, target.percentile)).sum()), max(len(v) - floor, 0)) if len(v) else 0
            for v in values
        ]
        return _take_lowest(values, counts)
    everything = np.concatenate(values)
    threshold = np.percentile(everything, target.percentile) if len(everything) else 0.0
    return _take_global(values, int((everything < threshold).sum()), floor)


def _check_shapes(kind: str, got: list[int], want: list[int], scorer: str) -> None:
    if got != want:
        raise RecipeError(f"scorer '{scorer}' returned {kind} scores of sizes {got}, the model has {want}")


def make_plan(
    layout: Layout,
    head_scores: HeadScores | None,
    neuron_scores: NeuronScores | None,
    heads: HeadTarget | None,
    neurons: NeuronTarget | None,
    source: dict,
) -> PruningPlan:
    h = plan_heads(head_scores, layout, heads) if heads is not None else {}
    n = plan_neurons(neuron_scores, layout, neurons) if neurons is not None else {}
    src = dict(source)
    if heads is not None:
        src["heads"] = {"scorer": heads.scorer, **{k: v for k, v in heads.__dict__.items() if k != "scorer"}}
    if neurons is not None:
        src["neurons"] = {"scorer": neurons.scorer, **{k: v for k, v in neurons.__dict__.items() if k != "scorer"}}
    return PruningPlan.build(h, n, src)
