"""targets.budget and reconstruction on LLaMA-style decoders (grouped-query attention,
gated FFN, pre-norm RMSNorm layers), on tiny random Llama / Qwen2 / Qwen3 configs.

The budget's attention unit is a key/value group (G query heads with their key and value
head) and its FFN unit a gated channel (gate, up and down); both are priced by
``Layout.unit_costs``, which must agree with ``metrics.encoder_flops_per_token`` and with
the parameters surgery really removes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import PruningPlan, apply_plan, load_model, save_model
from compressor.arch import Layout, adapter_for
from compressor.cli import main
from compressor.errors import RecipeError
from compressor.metrics import encoder_flops_per_token
from compressor.models import count_parameters
from compressor.planning import budget_shares, check_budget, check_floors, plan_budget, unit_costs
from compressor.recipe import BudgetTarget, ReconstructConfig
from compressor.reconstruct import reconstruct
from tests.conftest import tiny_model, tiny_tokenizer
from tests.unit.test_arch_llama import FFN, GROUP, HEADS, KV_HEADS, LAYERS, group_heads, llama_model
from tests.unit.test_budget import random_scores
from tests.unit.test_cli import run as run_cli
from tests.unit.test_cli import write_recipe
from tests.unit.test_reconstruct import calibration, forward_all, measured_errors

DECODERS = {k: llama_model(k) for k in ("llama", "qwen2", "qwen3")}


# ---- what a unit costs -------------------------------------------------------------------


@st.composite
def removals(draw):
    """A layout with head groups and/or a gated FFN, and some whole groups and channels removed."""
    g = draw(st.sampled_from([1, 2, 3, 4]))
    layers = draw(st.integers(1, 3))
    groups = [draw(st.integers(0, 4)) for _ in range(layers)]
    ffn = [draw(st.integers(0, 20)) for _ in range(layers)]
    layout = Layout(tuple(n * g for n in groups), tuple(ffn), draw(st.integers(1, 16)), draw(st.integers(1, 64)),
                    group_size=g, ffn_inputs=draw(st.sampled_from([1, 2])))
    gone_g = [draw(st.integers(0, n)) for n in groups]
    gone_n = [draw(st.integers(0, f)) for f in ffn]
    kept = Layout(tuple((n - r) * g for n, r in zip(groups, gone_g)), tuple(f - r for f, r in zip(ffn, gone_n)),
                  layout.head_dim, layout.hidden_size, g, layout.ffn_inputs)
    return layout, kept, sum(gone_g), sum(gone_n), draw(st.sampled_from([8, 128]))


@settings(max_examples=200, deadline=None)
@given(removals())
def test_removing_priced_units_changes_the_measured_flops_by_the_price(case):
    layout, kept, groups, neurons, seq = case
    ch, cn = unit_costs(layout, "flops", seq_len=seq)
    assert encoder_flops_per_token(layout, seq) - encoder_flops_per_token(kept, seq) == ch * groups + cn * neurons
    assert encoder_flops_per_token(layout, seq) == ch * sum(layout.groups_per_layer) + cn * sum(layout.ffn_per_layer)


def test_llama_group_and_gated_channel_prices():
    layout = adapter_for(DECODERS["llama"]).layout()  # G = 2, gate + up
    d, dh, seq = 64, 16, 128
    ch, cn = unit_costs(layout, "flops")
    # q 2*d*G*dh, k and v 2*d*2*dh, out 2*G*dh*d, scores and context 4*seq*G*dh; gate, up, down 3 * 2*d
    assert (ch, cn) == (2 * d * GROUP * dh + 2 * d * 2 * dh + 2 * GROUP * dh * d + 4 * seq * GROUP * dh, 6 * d)
    full = encoder_flops_per_token(layout)
    # one group of layer 0 and 5 channels of layer 1, removed by surgery, measured on the pruned model
    pruned = apply_plan(DECODERS["llama"], PruningPlan.build(heads={0: group_heads([1])}, neurons={1: range(5)}))
    assert full - encoder_flops_per_token(adapter_for(pruned).layout()) == ch + 5 * cn
    # BERT's prices are unchanged: a head 8*d*dh + 4*seq*dh, a neuron 4*d
    bert = Layout((12,) * 6, (1536,) * 6, 32, 384)
    assert unit_costs(bert, "flops") == (8 * 384 * 32 + 4 * 128 * 32, 4 * 384)
    kept = Layout((11,) + (12,) * 5, (1530,) + (1536,) * 5, 32, 384)
    assert encoder_flops_per_token(bert) - encoder_flops_per_token(kept) == sum(np.multiply(unit_costs(bert, "flops"),
                                                                                            (1, 6)))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "bert", "gpt2"])
def test_parameter_price_is_what_surgery_removes(kind):
    """Parameters counted on the real modules: Qwen2 has q/k/v biases and no FFN bias,
    Llama none, BERT and GPT-2 (fused qkv) all; out-projection biases are shared."""
    model = DECODERS[kind] if kind in DECODERS else tiny_model(kind)
    a = adapter_for(model)
    layout = a.layout()
    g = layout.group_size
    plan = PruningPlan.build(heads={0: list(range(g)), 1: list(range(2 * g))}, neurons={0: [1, 4, 9], 1: range(20)})
    pruned = apply_plan(model, plan)
    ch, cn = unit_costs(layout, "params", bias=a.has_bias("qkv" if a.spec.qkv else "query"),
                        ffn_bias=a.has_bias("ffn_in"))
    assert count_parameters(model) - count_parameters(pruned) == 3 * ch + 23 * cn
    kept = adapter_for(pruned).layout()
    share = budget_shares(layout, kept, a.has_bias("qkv" if a.spec.qkv else "query"), a.has_bias("ffn_in"))
    assert share["flops"] == pytest.approx(encoder_flops_per_token(kept) / encoder_flops_per_token(layout))
    assert a.has_bias("ffn_in") == (kind in ("bert", "gpt2"))


# ---- the planner on grouped / gated layouts -------------------------------------------


@st.composite
def grouped_cases(draw):
    g = draw(st.sampled_from([2, 3, 4]))
    layers = draw(st.integers(1, 3))
    heads = tuple(g * draw(st.integers(0, 4)) for _ in range(layers))
    ffn = tuple(draw(st.integers(0, 30)) for _ in range(layers))
    if sum(heads) + sum(ffn) == 0:
        ffn = (5,) + ffn[1:]
    layout = Layout(heads, ffn, draw(st.integers(1, 8)), draw(st.integers(2, 64)), group_size=g,
                    ffn_inputs=draw(st.sampled_from([1, 2])))
    return (layout, draw(st.integers(0, 2**31)), draw(st.sampled_from(["flops", "params"])),
            draw(st.floats(0.01, 0.99)), draw(st.integers(0, 3)), draw(st.integers(0, 5)),
            draw(st.sampled_from(["importance", "measure"])),
            draw(st.sampled_from(["search", "global", "per_layer", "allocated"])), draw(st.booleans()))


def whole_groups(heads: dict, g: int) -> bool:
    return all(sorted(v) == [h for grp in sorted({h // g for h in v}) for h in range(grp * g, (grp + 1) * g)]
               for v in heads.values())


@settings(max_examples=150, deadline=None)
@given(grouped_cases())
def test_grouped_plan_meets_the_budget_within_one_unit_and_never_splits_a_group(case):
    layout, seed, kind, share, fh, fn, split, scope, bias = case
    g = layout.group_size
    hs, ns = random_scores(layout, seed)  # per query head; Fisher blocks [heads, heads]
    t = BudgetTarget(kind, share, "fisher", "fisher", fh, fn, split=split, scope=scope, candidates=3)
    ch, cn = unit_costs(layout, kind, bias=bias, ffn_bias=False)
    full = ch * sum(layout.groups_per_layer) + cn * sum(layout.ffn_per_layer)
    least = ch * sum(min(n, fh) for n in layout.groups_per_layer) + cn * sum(min(f, fn) for f in layout.ffn_per_layer)
    if share * full < least:
        with pytest.raises(RecipeError, match="head group.*smallest achievable"):
            plan_budget(layout, hs, ns, t, evaluate=lambda h, n: 0.0, bias=bias, ffn_bias=False)
        return
    seen = []

    def evaluate(heads, neurons):
        seen.append(heads)
        return float(np.random.default_rng(len(seen)).random())

    plan = plan_budget(layout, hs, ns, t, evaluate=evaluate, bias=bias, ffn_bias=False)
    plan.validate(layout)  # refuses a plan that splits a key/value group
    assert whole_groups(plan.heads, g) and all(whole_groups(h, g) for h in seen)  # the loss only sees whole groups
    kept = plan.kept_layout(layout)
    cost = ch * sum(kept.groups_per_layer) + cn * sum(kept.ffn_per_layer)
    budget = share * full
    assert cost <= budget + 1e-6 and budget - cost < max(ch, cn)
    assert all(k >= min(n, fh) for k, n in zip(kept.groups_per_layer, layout.groups_per_layer))  # floors count groups
    assert all(k >= min(n, fn) for k, n in zip(kept.ffn_per_layer, layout.ffn_per_layer))
    info = plan.source["budget"]
    assert info["within_one_unit"] and info["unit_cost"]["query_heads_per_unit"] == g
    assert info["achieved"][kind] == pytest.approx(cost / full)
    assert info["achieved"]["flops"] == pytest.approx(encoder_flops_per_token(kept) / encoder_flops_per_token(layout))
    assert info["achieved"]["heads_kept"] == sum(kept.heads_per_layer)
    if split == "measure":
        assert all(c["heads_kept"] == g * c["head_groups_kept"] for c in info["candidates"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.05, 0.95), st.sampled_from(["flops", "params"]))
def test_grouped_importance_search_keeps_the_most_score_of_any_selection_that_fits(seed, share, kind):
    """Brute force over every subset of whole groups and channels (rearrangement off): no
    selection within the budget keeps more total score (a group scores its heads' sum)."""
    layout = Layout((4, 2), (3, 2), 2, 4, group_size=2, ffn_inputs=2)
    hs, ns = random_scores(layout, seed, blocks=False)
    plan = plan_budget(layout, hs, ns, BudgetTarget(kind, share, "fisher", "fisher", split="importance"))
    ch, cn = unit_costs(layout, kind)
    budget = share * (3 * ch + 5 * cn)
    groups = [(ch, v[2 * i] + v[2 * i + 1]) for v in hs.values for i in range(len(v) // 2)]
    units = groups + [(cn, s) for v in ns.values for s in v]
    best = max(sum(s for _, s in pick) for r in range(len(units) + 1) for pick in itertools.combinations(units, r)
               if sum(c for c, _ in pick) <= budget + 1e-9)
    kept = sum(s for l, v in enumerate(hs.values) for i, s in enumerate(v) if i not in plan.heads.get(l, ()))
    kept += sum(s for l, v in enumerate(ns.values) for i, s in enumerate(v) if i not in plan.neurons.get(l, ()))
    assert kept == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_group_rearrangement_estimates_the_removed_heads(seed):
    """The group Fisher matrix sums the heads' G x G blocks, so the rearrangement's
    estimate is 1/2 1^T F 1 over the removed query heads, in head space."""
    layout = Layout((8, 6, 4), (10, 12, 9), 4, 16, group_size=2, ffn_inputs=2)
    hs, ns = random_scores(layout, seed)
    plan = plan_budget(layout, hs, ns, BudgetTarget("flops", 0.5, "fisher", "fisher", split="importance"))
    info = plan.source["budget"]["rearrangement"]["heads"]
    blocks = hs.extras["_fisher_blocks"]
    est = sum(0.5 * blocks[l][np.ix_(h, h)].sum() for l, h in plan.heads.items())
    assert info["estimate_after"] == pytest.approx(est) and info["estimate_after"] <= info["estimate_before"] + 1e-9
    assert whole_groups(plan.heads, 2)


def test_budget_floors_count_head_groups():
    layout = adapter_for(DECODERS["llama"]).layout()  # 2 groups per layer
    with pytest.raises(RecipeError, match=r"min_heads_per_layer.*above layer 0's 2 head groups"):
        check_floors(layout, budget=BudgetTarget("flops", 0.5, "m", "m", min_heads_per_layer=3))
    check_floors(layout, budget=BudgetTarget("flops", 0.5, "m", "m", min_heads_per_layer=2))
    t = BudgetTarget("flops", 0.3, "m", "m", min_heads_per_layer=2, min_neurons_per_layer=10)
    with pytest.raises(RecipeError, match=r"keeping 2 head group\(s\) and 10 neuron\(s\) per layer") as e:
        check_budget(layout, t)
    assert "\n" not in str(e.value)


# ---- reconstruction of pre-norm decoder layers --------------------------------------------


@st.composite
def decoder_plans(draw):
    heads, neurons = {}, {}
    for layer in range(LAYERS):
        heads[layer] = group_heads(draw(st.sets(st.integers(0, KV_HEADS - 1), max_size=KV_HEADS)))
        neurons[layer] = draw(st.permutations(range(FFN)))[: draw(st.integers(0, FFN))]
    return PruningPlan.build(heads, neurons)


def decoder_calibration(seed: int):
    # [8, 12] x 4 batches of ids below the tiny vocabulary, one row half padding: ~360 tokens
    return calibration(seed, n_batches=4, rows=8, seq=12)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=decoder_plans(), seed=st.integers(0, 3), kinds=st.sampled_from(["both", "attention", "ffn"]),
       ridge=st.sampled_from([0.0, 1e-3, 0.1]))
def test_decoder_reconstruction_never_increases_layer_error(kind, plan, seed, kinds, ridge):
    original = DECODERS[kind]
    batches = decoder_calibration(seed)
    pruned = apply_plan(original, plan)
    surgery = measured_errors(pruned, original, batches)
    res = reconstruct(pruned, original, adapter_for(pruned), adapter_for(original), batches,
                      ReconstructConfig(ridge=ridge, kinds=kinds), progress=False)
    after = measured_errors(pruned, original, batches)
    layout = adapter_for(pruned).layout()
    for lf, before_i, after_i in zip(res.layers, surgery, after, strict=True):
        assert lf.error_surgery == pytest.approx(before_i, rel=1e-4, abs=1e-9)
        assert lf.error_reconstructed == pytest.approx(after_i, rel=1e-4, abs=1e-9)
        assert after_i <= before_i * (1 + 1e-5) + 1e-9, (lf, before_i, after_i)
        assert all(f.error_after <= f.error_before and f.kind in ReconstructConfig(kinds=kinds).sublayers
                   for f in lf.fits)
        # bias-free projections: the fit's inputs are exactly the kept units' features; an emptied one is not fit
        widths = {"attention": layout.heads_per_layer[lf.layer] * layout.head_dim, "ffn": layout.ffn_per_layer[lf.layer]}
        assert all(f.inputs == widths[f.kind] > 0 for f in lf.fits)
    assert adapter_for(pruned).layout() == plan.kept_layout(adapter_for(original).layout())


def test_decoder_ridge_zero_is_least_squares_without_a_bias_column():
    """Each kept refit of a bias-free projection (o_proj, down_proj) is the least-squares
    fit of x -> r_u - h_p, with x, h and y captured by hooks written here (pre-norm: the
    attention's residual input h is the layer's input, the FFN's is post_attention_layernorm's
    input; r = h + y)."""
    original = DECODERS["llama"]
    plan = PruningPlan.build(heads={0: group_heads([0]), 1: group_heads([1])},
                             neurons={0: range(0, FFN, 2), 1: range(30)})
    pruned = apply_plan(original, plan)
    batches = decoder_calibration(1)
    res = reconstruct(pruned, original, adapter_for(pruned), adapter_for(original), batches,
                      ReconstructConfig(ridge=0.0), progress=False)
    kept = {(lf.layer, f.kind) for lf in res.layers for f in lf.fits if f.kept}
    assert len(kept) >= 3

    def grab(model):
        got, handles, state = {}, [], {}

        def put(key, value):
            got.setdefault(key, []).append(value[state["mask"]])

        for i, layer in enumerate(model.model.layers):
            for kind_, proj in (("attention", layer.self_attn.o_proj), ("ffn", layer.mlp.down_proj)):
                handles.append(proj.register_forward_pre_hook(lambda m, a, k=(i, kind_): put(k + ("x",), a[0])))
                handles.append(proj.register_forward_hook(lambda m, a, o, k=(i, kind_): put(k + ("y",), o)))
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, kw, k=(i, "attention"): put(k + ("h",), kw.get("hidden_states", a[0] if a else None)),
                with_kwargs=True))
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a, k=(i, "ffn"): put(k + ("h",), a[0])))
        forward_all(model, batches, state, handles)
        return {k: torch.cat(v).double() for k, v in got.items()}

    p, u = grab(pruned), grab(original)
    for layer, kind_ in sorted(kept):
        x = p[(layer, kind_, "x")]  # [tokens, in]
        target = u[(layer, kind_, "y")] + u[(layer, kind_, "h")] - p[(layer, kind_, "h")]  # r_u - h_p
        direct = torch.linalg.lstsq(x, target, driver="gelsd").solution  # [in, out], no ones column
        mod = pruned.model.layers[layer]
        proj = mod.self_attn.o_proj if kind_ == "attention" else mod.mlp.down_proj
        assert proj.bias is None
        fitted = proj.weight.detach().double().t()
        rel = (fitted - direct).norm() / direct.norm()
        assert rel < 1e-4, (layer, kind_, float(rel))


def test_decoder_emptied_sublayers_are_left_alone():
    """A layer with no heads (or no channels) has a bias-free projection with no inputs:
    nothing to fit, no entry, and the other sublayer is still re-fit."""
    original = DECODERS["llama"]
    plan = PruningPlan.build(heads={0: range(HEADS)}, neurons={0: range(10), 1: range(FFN)})
    pruned = apply_plan(original, plan)
    batches = decoder_calibration(2)
    before = measured_errors(pruned, original, batches)
    res = reconstruct(pruned, original, adapter_for(pruned), adapter_for(original), batches,
                      ReconstructConfig(ridge=1e-3), progress=False)
    assert [[f.kind for f in lf.fits] for lf in res.layers] == [["ffn"], ["attention"]]
    after = measured_errors(pruned, original, batches)
    assert all(a <= b * (1 + 1e-5) for a, b in zip(after, before, strict=True)) and after[0] < 0.9 * before[0]


# ---- end to end on a tiny Llama folder ---------------------------------------------------------


def decoder_dir(tmp_path, kind: str = "llama"):
    folder = tmp_path / f"tiny-{kind}"
    folder.mkdir()
    DECODERS[kind].save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,budget,scorers,split", [
    ("llama", "{flops: 0.6, scorer: magnitude, candidates: 2}", "[magnitude]", "measure"),
    ("qwen2", "{params: 0.6, scorer: magnitude, scope: allocated, min_per_layer: 1}", "[magnitude]", "measure"),
    ("llama", "{flops: 0.5, scorer: fisher}", "[{name: fisher, params: {label_free: output}}]", "importance"),
])
def test_budget_and_reconstruct_recipe_on_a_tiny_decoder(tmp_path, kind, budget, scorers, split):
    model = decoder_dir(tmp_path, kind)
    out = tmp_path / "out"
    body = f"""
model: {model}
calibration: {{num_sequences: 32, batch_size: 16, min_length: 8, max_length: 16}}
scorers: {scorers}
targets:
  budget: {budget}
reconstruct: {{ridge: 0.01}}
"""
    res = run_cli(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    plan = PruningPlan.load(out / "plan.json")
    b = plan.source["budget"]
    asked_kind, asked = next(iter(m["budget"]["asked"].items()))
    assert m["budget"]["split"] == split and m["budget"]["within_one_unit"]
    assert m["budget"]["achieved"][asked_kind] <= asked
    assert m["budget"]["achieved"]["flops"] == pytest.approx(m["flops_kept_share"])  # the planner's prices = metrics'
    assert whole_groups(plan.heads, GROUP)
    if "allocated" in budget:
        assert {c["scope"] for c in b["candidates"]} == {"allocated"} and min(m["after"]["heads_per_layer"]) >= GROUP
        assert len(b["probes"]["heads"]) == LAYERS
    else:
        assert plan.heads  # some whole groups went
    rec = m["reconstruct"]["layers"]
    assert len(rec) == LAYERS and all(lf["error_reconstructed"] <= lf["error_surgery"] for lf in rec)
    assert sum(lf["error_reconstructed"] for lf in rec) < sum(lf["error_surgery"] for lf in rec)
    saved = load_model(str(out / "model"))
    assert adapter_for(saved).layout() == plan.kept_layout(adapter_for(DECODERS[kind]).layout())


def test_cli_reconstruct_takes_a_llama_folder(tmp_path):
    from compressor.models import load_tokenizer

    reference = decoder_dir(tmp_path)
    pruned_dir = tmp_path / "pruned"
    plan = PruningPlan.build(heads={1: group_heads([0])}, neurons={0: range(40), 1: range(0, FFN, 3)})
    save_model(apply_plan(load_model(str(reference)), plan), pruned_dir, load_tokenizer(str(reference)))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["reconstruct", "--model", str(pruned_dir), "--reference", str(reference),
                                    "--output", str(out), "--num-sequences", "48", "--max-length", "16", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "layer 1: output error" in res.output and "kept" in res.output
    cal = decoder_calibration(7)  # held out
    original = load_model(str(reference))
    assert measured_errors(load_model(str(out)), original, cal)[-1] < measured_errors(
        load_model(str(pruned_dir)), original, cal)[-1]
