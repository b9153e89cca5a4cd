from __future__ import annotations

import numpy as np
import pytest

from compressor.arch import Layout
from compressor.planning import plan_heads, plan_neurons
from compressor.recipe import HeadTarget, NeuronTarget
from compressor.types import HeadScores, NeuronScores

LAYOUT = Layout((4, 4), (10, 10), 8, 32)
NEURONS = NeuronScores("t", (np.arange(10, dtype=float), np.arange(10, 0, -1, dtype=float)))


def test_percentile_per_layer_keeps_exactly_the_upper_half():
    plan = plan_neurons(NEURONS, LAYOUT, NeuronTarget(percentile=50, scope="per_layer", min_per_layer=1))
    assert plan == {0: [0, 1, 2, 3, 4], 1: [5, 6, 7, 8, 9]}


def test_percentile_keeps_ties_at_the_threshold():
    scores = NeuronScores("t", (np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1.0]), np.ones(10)))
    plan = plan_neurons(scores, LAYOUT, NeuronTarget(percentile=50, scope="per_layer", min_per_layer=0))
    assert plan == {0: [0, 1, 2, 3]}  # the constant layer loses nothing: no score is below its median


def test_global_percentile_respects_the_floor():
    scores = NeuronScores("t", (np.zeros(10) + np.arange(10) * 1e-3, np.arange(10, 20, dtype=float)))
    plan = plan_neurons(scores, LAYOUT, NeuronTarget(percentile=60, scope="global", min_per_layer=3))
    assert plan == {0: list(range(7)), 1: [0, 1, 2, 3, 4]}


def test_neuron_ratio():
    plan = plan_neurons(NEURONS, LAYOUT, NeuronTarget(ratio=0.3))
    assert plan == {0: [0, 1, 2], 1: [7, 8, 9]}


def test_heads_global_with_floor_and_per_layer():
    # lowest four model-wide: L1H2 (0.05), L0H0, L0H1, L0H2
    scores = HeadScores("t", ((0.1, 0.2, 0.3, 0.4), (5.0, 6.0, 0.05, 7.0)))
    assert plan_heads(scores, LAYOUT, HeadTarget(ratio=0.5, scope="global")) == {0: [0, 1, 2], 1: [2]}
    # a floor of 2 stops layer 0 at two removals; the next lowest is L1H0 (5.0)
    got = plan_heads(scores, LAYOUT, HeadTarget(ratio=0.5, scope="global", min_per_layer=2))
    assert got == {0: [0, 1], 1: [0, 2]}
    assert plan_heads(scores, LAYOUT, HeadTarget(ratio=0.25, scope="per_layer")) == {0: [0], 1: [2]}


def test_whole_layer_can_go_when_floor_is_zero():
    scores = HeadScores("t", ((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)))
    assert plan_heads(scores, LAYOUT, HeadTarget(ratio=0.5, min_per_layer=0)) == {0: [0, 1, 2, 3]}


def test_score_shape_mismatch_is_reported():
    from compressor.errors import RecipeError

    with pytest.raises(RecipeError, match="sizes"):
        plan_heads(HeadScores("t", ((1.0,),)), LAYOUT, HeadTarget(ratio=0.5))
