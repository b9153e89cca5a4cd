from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.arch import adapter_for
from compressor.capture import run_capture
from compressor.data.calibration import calibration_batches
from compressor.errors import RecipeError
from compressor.planning import plan_heads
from compressor.recipe import CalibrationConfig, HeadTarget, parse_recipe
from compressor.scorers import SCORERS, ScoringContext
from compressor.scorers.redundancy import cluster_heads
from tests.conftest import tiny_model


def score(model, **params):
    a = adapter_for(model)
    s = SCORERS.get("redundancy")(**params)
    s.begin(ScoringContext(model, a, a.layout(), 0))
    cfg = CalibrationConfig(num_sequences=12, batch_size=5, min_length=4, max_length=10)
    run_capture(model, a, calibration_batches(cfg, None, model.config, 0), [s], progress=False)
    return s, s.finish().heads


def test_matrices_are_distances_and_pruning_keeps_one_per_cluster():
    model = tiny_model("bert")
    s, heads = score(model, metrics=["js", "cosine", "correlation", "bhattacharyya", "dcor", "procrustes", "cca"],
                     ratio=0.5, sentence_sequences=6)
    for name, m in heads.extras["matrices"].items():
        m = np.array(m)
        assert m.shape == (12, 12) and np.allclose(m, m.T) and (np.diag(m) == 0).all(), name
        assert (m >= 0).all() and (m <= 1).all() and m.max() > 0, name
    assert heads.extras["sequences"]["dcor"] == 6 and heads.extras["sequences"]["js"] == 12
    assert heads.extras["clusters"] == 6 and heads.extras["ratio"] == 0.5  # the ratio the clusters were chosen for
    plan = plan_heads(heads, adapter_for(model).layout(), HeadTarget(ratio=0.5, min_per_layer=0))
    removed = {f"{layer}.{h}" for layer, hs in plan.items() for h in hs}
    assert len(removed) == 6 and removed.isdisjoint(heads.extras["representatives"])
    from compressor.planning import make_plan

    plan = make_plan(adapter_for(model).layout(), heads, None, HeadTarget(ratio=0.5, min_per_layer=0), None, {})
    assert plan.source["heads"]["ratio"] == plan.source["heads"]["scores_ratio"] == 0.5


def test_identical_heads_cluster_together():
    # heads 0 and 1 of layer 0 made identical: distance 0, same cluster, one representative
    model = tiny_model("bert")
    with torch.no_grad():
        for name in ("query", "key"):
            w = getattr(model.encoder.layer[0].attention.self, name)
            w.weight[8:16] = w.weight[0:8]
            w.bias[8:16] = w.bias[0:8]
    _, heads = score(model, metrics=["js"], ratio=11 / 12)  # 1 cluster of 12 heads is too coarse
    d = np.array(heads.extras["matrices"]["js"])
    # float32 resolves sqrt(JS) near 0 to ~1e-3 (see js_distance_sums)
    assert d[0, 1] < 1e-3 and d[0, 2] > 50 * d[0, 1]
    assert d[0, 1] == d[np.triu_indices(12, 1)].min()


def test_js_query_sample_is_close_to_exact():
    model = tiny_model("bert")
    _, exact = score(model, metrics=["js"])
    _, sampled = score(model, metrics=["js"], js_query_sample=5)
    e, s = np.array(exact.extras["matrices"]["js"]), np.array(sampled.extras["matrices"]["js"])
    assert np.abs(e - s).max() < 0.1 and np.corrcoef(e[np.triu_indices(12, 1)], s[np.triu_indices(12, 1)])[0, 1] > 0.8


def test_cluster_heads_edge_cases():
    d = np.array([[0, .1, .9, .9], [.1, 0, .9, .9], [.9, .9, 0, .1], [.9, .9, .1, 0]])
    labels, sil, reps = cluster_heads(d, 2, 0)
    assert labels[0] == labels[1] != labels[2] == labels[3] and len(reps) == 2 and (sil > 0.5).all()
    assert cluster_heads(d, 4, 0)[2] == [0, 1, 2, 3]
    assert len(cluster_heads(d, 1, 0)[2]) == 1


def test_recipe_params():
    base = {"scorers": [{"name": "redundancy"}], "targets": {"heads": {"ratio": 0.25}}}
    assert parse_recipe(base).scorers[0].params["ratio"] == 0.25  # follows the target
    own = {"scorers": [{"name": "redundancy", "params": {"ratio": 0.4}}], "targets": {"heads": {"ratio": 0.25}}}
    assert parse_recipe(own).scorers[0].params["ratio"] == 0.4
    with pytest.raises(RecipeError, match=r"'scorers\[0\].params.metrics' must list distinct metrics from js, cosine"):
        parse_recipe({"scorers": [{"name": "redundancy", "params": {"metrics": ["kl"]}}]})
    with pytest.raises(RecipeError, match=r"cluster_on' must be 'mean' or one of the listed metrics"):
        parse_recipe({"scorers": [{"name": "redundancy", "params": {"metrics": ["js"], "cluster_on": "cosine"}}]})
