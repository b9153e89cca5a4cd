from __future__ import annotations

import pytest
import torch

from compressor import PruningPlan, mask_plan
from compressor.ablation import ablate_heads, type_importance
from tests.conftest import batch, outputs, tiny_model


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_zero_equals_masking(kind):
    model = tiny_model(kind)
    ids, mask = batch(kind)
    heads = {0: [1, 3], 2: [0]}
    with ablate_heads(model, heads, "zero"):
        ablated = outputs(model, ids, mask)
    torch.testing.assert_close(ablated, outputs(mask_plan(model, PruningPlan.build(heads=heads)), ids, mask),
                               atol=1e-5, rtol=0)
    assert not torch.allclose(outputs(model, ids, mask), ablated)  # hooks are gone afterwards


def test_uniform_equals_constant_attention_scores():
    # zero query and key weights of a head: its scores are constant, so softmax over the
    # real keys is exactly uniform - the oracle for mode="uniform"
    model = tiny_model("bert")
    ids, mask = batch("bert")
    with ablate_heads(model, {1: [2]}, "uniform"):
        ablated = outputs(model, ids, mask)
    oracle = tiny_model("bert")
    with torch.no_grad():
        for name in ("query", "key"):
            lin = getattr(oracle.encoder.layer[1].attention.self, name)
            lin.weight[16:24] = 0
            lin.bias[16:24] = 0
    torch.testing.assert_close(ablated, outputs(oracle, ids, mask), atol=1e-5, rtol=0)


def test_type_importance_reports_a_drop_per_type():
    model = tiny_model("bert")
    ids, mask = batch("bert")
    ref = outputs(model, ids, mask)

    def similarity(m):  # 1 for the intact model
        return float(torch.nn.functional.cosine_similarity(outputs(m, ids, mask).flatten(), ref.flatten(), dim=0))

    drops = type_importance(model, {"a": ["0.0", "0.1"], "b": ["2.3"]}, similarity, "uniform")
    assert set(drops) == {"a", "b"} and all(d > 0 for d in drops.values())
    assert similarity(model) == pytest.approx(1.0)
