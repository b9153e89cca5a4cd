"""Surgery is exact: pruned model == original with the same heads/neurons zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import PruningPlan, apply_plan, load_model, mask_plan, save_model
from compressor.arch import adapter_for
from compressor.errors import PlanError
from tests.conftest import batch, outputs, tiny_model

KINDS = ["bert", "roberta", "gpt2"]
ATOL = 1e-5
MODELS = {k: tiny_model(k) for k in KINDS}


@st.composite
def plans(draw):
    heads = {}
    neurons = {}
    for layer in range(3):
        heads[layer] = draw(st.sets(st.integers(0, 3), max_size=4))  # up to all 4 heads
        neurons[layer] = draw(st.sets(st.integers(0, 36), max_size=37))  # up to all 37
    return PruningPlan.build(heads, neurons)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans())
def test_pruned_equals_masked(kind, plan):
    model = MODELS[kind]
    ids, mask = batch(kind)
    pruned = apply_plan(model, plan)
    masked = mask_plan(model, plan)
    diff = (outputs(pruned, ids, mask) - outputs(masked, ids, mask)).abs()
    assert diff.max().item() <= ATOL
    layout = adapter_for(pruned).layout()
    assert layout == plan.kept_layout(adapter_for(model).layout())


@pytest.mark.parametrize("kind", KINDS)
def test_empty_plan_is_identity(kind):
    model = MODELS[kind]
    ids, mask = batch(kind)
    pruned = apply_plan(model, PruningPlan())
    assert torch.equal(outputs(pruned, ids, mask), outputs(model, ids, mask))


@pytest.mark.parametrize("kind", KINDS)
def test_pruning_changes_outputs(kind):
    """Guards the equality test above: removing heads must change the function."""
    model = MODELS[kind]
    ids, mask = batch(kind)
    pruned = apply_plan(model, PruningPlan.build(heads={1: [0, 2]}))
    assert (outputs(pruned, ids, mask) - outputs(model, ids, mask)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_whole_layers_removed_save_and_reload(kind, tmp_path):
    model = MODELS[kind]
    plan = PruningPlan.build(heads={0: [0, 1, 2, 3], 2: [1]}, neurons={1: range(37), 2: [0, 3]})
    pruned = apply_plan(model, plan)
    a = adapter_for(pruned)
    assert a.layout().heads_per_layer == (0, 4, 3)
    assert a.layout().ffn_per_layer == (37, 0, 35)
    save_model(pruned, tmp_path / "m")
    reloaded = load_model(str(tmp_path / "m"))
    ids, mask = batch(kind)
    assert torch.equal(outputs(reloaded, ids, mask), outputs(pruned, ids, mask))
    assert adapter_for(reloaded).layout() == a.layout()
    n = sum(p.numel() for p in pruned.parameters())
    assert n == sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_prune_twice_equals_masked_composition(kind):
    """A pruned model can be pruned again; indices then refer to the remaining units."""
    model = MODELS[kind]
    first = PruningPlan.build(heads={0: [1]}, neurons={0: [0, 1]})
    second = PruningPlan.build(heads={0: [0]}, neurons={0: [0]})  # original head 0, neuron 2
    twice = apply_plan(apply_plan(model, first), second)
    once = mask_plan(model, PruningPlan.build(heads={0: [0, 1]}, neurons={0: [0, 1, 2]}))
    ids, mask = batch(kind)
    assert (outputs(twice, ids, mask) - outputs(once, ids, mask)).abs().max() <= ATOL


def test_apply_plan_leaves_input_untouched():
    model = MODELS["bert"]
    before = copy.deepcopy(model.state_dict())
    apply_plan(model, PruningPlan.build(heads={0: [0]}, neurons={1: [3]}))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "plan, message",
    [
        (PruningPlan.build(heads={0: [4]}), "removes head 4 of layer 0, but layer 0 has 4 heads"),
        (PruningPlan.build(neurons={2: [37]}), "removes neuron 37 of layer 2"),
        (PruningPlan.build(heads={3: [0]}), "names layer 3, but the model has 3 layers"),
    ],
)
def test_plan_out_of_range_is_rejected_before_any_change(plan, message):
    model = tiny_model("bert")
    with pytest.raises(PlanError, match=message):
        apply_plan(model, plan, inplace=True)
    assert adapter_for(model).layout().heads_per_layer == (4, 4, 4)


def test_plan_json_round_trip(tmp_path):
    plan = PruningPlan.build(heads={0: [3, 1]}, neurons={2: [5]}, source={"recipe": "x"})
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again == plan
    assert again.heads == {0: (1, 3)}


def test_corrupt_layout_is_a_clear_error(tmp_path):
    import json

    from compressor.errors import ModelLoadError

    pruned = apply_plan(MODELS["bert"], PruningPlan.build(heads={0: [0]}))
    save_model(pruned, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["compressor_layout"]["heads_per_layer"] = [4, 4, 4]  # claims head 0 is still there
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="weights do not match the recorded layout"):
        load_model(str(tmp_path / "m"))
    cfg["compressor_layout"]["heads_per_layer"] = [9, 4, 4]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="larger than the architecture in layer 0"):
        load_model(str(tmp_path / "m"))
