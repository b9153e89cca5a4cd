"""targets.budget: recipe checks, the planner's guarantees (property tests), Kwon's
search against brute force, the Fisher rearrangement, and end-to-end runs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.arch import Layout
from compressor.errors import RecipeError
from compressor.metrics import encoder_flops_per_token
from compressor.planning import budget_shares, check_budget, plan_budget, rearrange_layer, unit_costs
from compressor.recipe import BudgetTarget, parse_recipe
from compressor.types import HeadScores, NeuronScores
from tests.unit.test_cli import run, write_recipe

# ---- recipe ---------------------------------------------------------------------------


def budget_recipe(budget: dict, scorers=("magnitude",), **extra) -> dict:
    return {"scorers": list(scorers), "targets": {"budget": budget}, **extra}


def test_budget_recipe_resolves_scorers_and_split():
    r = parse_recipe(budget_recipe({"flops": 0.6, "scorer": "magnitude", "min_per_layer": 2}))
    b = r.budget
    assert (b.kind, b.share, b.head_scorer, b.neuron_scorer) == ("flops", 0.6, "magnitude", "magnitude")
    assert (b.min_heads_per_layer, b.min_neurons_per_layer, b.split) == (2, 2, "measure")
    r = parse_recipe(budget_recipe({"params": 0.5, "min_neurons_per_layer": 4}, scorers=("fisher",),
                                   calibration={"source": "glue", "task": "sst2"}))
    assert (r.budget.kind, r.budget.split, r.budget.min_heads_per_layer, r.budget.min_neurons_per_layer) == \
        ("params", "importance", 0, 4)
    r = parse_recipe(budget_recipe({"flops": 0.6, "head_scorer": "redundancy", "neuron_scorer": "persistence"},
                                   scorers=("redundancy", "persistence")))
    assert (r.budget.head_scorer, r.budget.neuron_scorer, r.budget.split) == ("redundancy", "persistence", "measure")


@pytest.mark.parametrize("budget,scorers,match", [
    ({"flops": 0}, ("magnitude",), r"targets\.budget\.flops.*0 < flops < 1"),
    ({"flops": 1.0}, ("magnitude",), r"targets\.budget\.flops.*0 < flops < 1"),
    ({"params": -0.2}, ("magnitude",), r"targets\.budget\.params"),
    ({"flops": 0.5, "params": 0.5}, ("magnitude",), "exactly one of flops or params"),
    ({"scorer": "magnitude"}, ("magnitude",), "exactly one of flops or params"),
    ({"flops": 0.5, "scorer": "redundancy"}, ("redundancy",), r"scores neurons.*neuron_scorer"),
    ({"flops": 0.5, "head_scorer": "magnitude", "neuron_scorer": "redundancy"}, ("redundancy", "magnitude"),
     r"targets\.budget\.neuron_scorer' is 'redundancy'"),
    ({"flops": 0.5, "split": "importance"}, ("magnitude",), "share a scale"),
    ({"flops": 0.5, "min_per_layer": -1}, ("magnitude",), "min_per_layer"),
    ({"flops": 0.5, "budget": 3}, ("magnitude",), "unknown recipe field 'targets.budget.budget'"),
])
def test_bad_budgets_are_one_line_errors(budget, scorers, match):
    with pytest.raises(RecipeError, match=match) as e:
        parse_recipe(budget_recipe(budget, scorers))
    assert "\n" not in str(e.value)


def test_budget_with_heads_or_neurons_targets_is_an_error():
    with pytest.raises(RecipeError, match="cannot be combined with targets.heads"):
        parse_recipe({"scorers": ["magnitude"], "targets": {"budget": {"flops": 0.5},
                                                             "heads": {"ratio": 0.5}}})
    with pytest.raises(RecipeError, match="cannot be combined with targets.neurons"):
        parse_recipe({"scorers": ["magnitude"], "targets": {"budget": {"flops": 0.5},
                                                             "neurons": {"ratio": 0.5}}})


MINILM = Layout((12,) * 6, (1536,) * 6, 32, 384)


def test_unit_costs_add_up_to_the_metrics_flops():
    ch, cn = unit_costs(MINILM, "flops")
    assert ch * 72 + cn * 9216 == encoder_flops_per_token(MINILM)
    kept = Layout((3, 12, 0, 5, 12, 1), (100, 1536, 0, 7, 800, 1536), 32, 384)
    assert budget_shares(MINILM, kept)["flops"] == pytest.approx(encoder_flops_per_token(kept) / encoder_flops_per_token(MINILM))
    ph, pn = unit_costs(MINILM, "params")
    assert (ph, pn) == (4 * 384 * 32 + 3 * 32, 2 * 384 + 1)


def test_impossible_budget_names_the_smallest_achievable_share():
    t = BudgetTarget("flops", 0.2, "m", "m", min_heads_per_layer=6, min_neurons_per_layer=768)
    with pytest.raises(RecipeError, match=r"targets\.budget\.flops.*smallest achievable budget is 0\.5000"):
        check_budget(MINILM, t)
    check_budget(MINILM, BudgetTarget("flops", 0.5, "m", "m", min_heads_per_layer=6, min_neurons_per_layer=768))


# ---- planner ----------------------------------------------------------------------------


@st.composite
def cases(draw):
    layers = draw(st.integers(1, 4))
    heads = tuple(draw(st.integers(0, 6)) for _ in range(layers))
    ffn = tuple(draw(st.integers(0, 30)) for _ in range(layers))
    if sum(heads) + sum(ffn) == 0:
        ffn = (5,) + ffn[1:]
    layout = Layout(heads, ffn, draw(st.integers(1, 8)), draw(st.integers(2, 64)))
    seed = draw(st.integers(0, 2**31))
    kind = draw(st.sampled_from(["flops", "params"]))
    share = draw(st.floats(0.01, 0.99))
    fh, fn = draw(st.integers(0, 3)), draw(st.integers(0, 5))
    split = draw(st.sampled_from(["importance", "measure"]))
    scope = draw(st.sampled_from(["search", "global", "per_layer", "allocated"]))
    return layout, seed, kind, share, fh, fn, split, scope


def random_scores(layout: Layout, seed: int, blocks: bool = True):
    rng = np.random.default_rng(seed)
    n = 7
    gh = [rng.normal(size=(n, h)) for h in layout.heads_per_layer]
    gn = [rng.normal(size=(n, f)) * rng.uniform(0.1, 2, f) for f in layout.ffn_per_layer]
    ex = (lambda g: {"_fisher_blocks": [x.T @ x for x in g]}) if blocks else (lambda g: {})
    return (HeadScores("fisher", tuple(tuple((x**2).sum(0)) for x in gh), ex(gh)),
            NeuronScores("fisher", tuple((x**2).sum(0) for x in gn), ex(gn)))


@settings(max_examples=150, deadline=None)
@given(cases())
def test_the_plan_meets_the_budget_within_one_unit_and_keeps_the_floors(case):
    layout, seed, kind, share, fh, fn, split, scope = case
    hs, ns = random_scores(layout, seed)
    t = BudgetTarget(kind, share, "fisher", "fisher", fh, fn, split=split, scope=scope, candidates=3)
    ch, cn = unit_costs(layout, kind)
    full = ch * sum(layout.heads_per_layer) + cn * sum(layout.ffn_per_layer)
    least = ch * sum(min(h, fh) for h in layout.heads_per_layer) + cn * sum(min(f, fn) for f in layout.ffn_per_layer)
    if share * full < least:
        with pytest.raises(RecipeError, match="smallest achievable"):
            plan_budget(layout, hs, ns, t, evaluate=lambda h, n: 0.0)
        return
    calls = []

    def evaluate(h, n):
        calls.append((h, n))
        return float(np.random.default_rng(len(calls)).random())

    plan = plan_budget(layout, hs, ns, t, evaluate=evaluate)
    plan.validate(layout)
    kept = plan.kept_layout(layout)
    cost = ch * sum(kept.heads_per_layer) + cn * sum(kept.ffn_per_layer)
    budget = share * full
    assert cost <= budget + 1e-6
    assert budget - cost < max(ch, cn)
    assert all(k >= min(n, fh) for k, n in zip(kept.heads_per_layer, layout.heads_per_layer))
    assert all(k >= min(n, fn) for k, n in zip(kept.ffn_per_layer, layout.ffn_per_layer))
    info = plan.source["budget"]
    assert info["within_one_unit"] and info["achieved"][kind] == pytest.approx(cost / full)
    assert info["achieved"]["flops"] == pytest.approx(budget_shares(layout, kept)["flops"])
    if split == "measure":
        losses = [c["loss"] for c in info["candidates"]]
        probes = info.get("probes")
        n_probes = 0 if probes is None else 1 + sum(p["removed"] > 0 for k in ("heads", "neurons") for p in probes[k])
        assert (probes is not None) == (scope == "allocated")
        assert len(calls) == len(losses) + n_probes and losses[info["chosen"]] == min(losses)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.05, 0.95), st.sampled_from(["flops", "params"]))
def test_importance_search_keeps_the_most_score_of_any_selection_that_fits(seed, share, kind):
    """Brute force over every subset of a small layout (rearrangement off): no subset of
    units within the budget keeps more total score."""
    layout = Layout((2, 3), (3, 2), 2, 4)
    hs, ns = random_scores(layout, seed, blocks=False)
    plan = plan_budget(layout, hs, ns, BudgetTarget(kind, share, "fisher", "fisher", split="importance"))
    ch, cn = unit_costs(layout, kind)
    budget = share * (5 * ch + 5 * cn)
    units = [(ch, s) for v in hs.values for s in v] + [(cn, s) for v in ns.values for s in v]
    best = max(sum(s for _, s in pick) for r in range(len(units) + 1) for pick in itertools.combinations(units, r)
               if sum(c for c, _ in pick) <= budget + 1e-9)
    kept = sum(s for l, v in enumerate(hs.values) for i, s in enumerate(v) if i not in plan.heads.get(l, ()))
    kept += sum(s for l, v in enumerate(ns.values) for i, s in enumerate(v) if i not in plan.neurons.get(l, ()))
    assert kept == pytest.approx(best, rel=1e-9)


def test_rearrangement_finds_the_cheaper_set_of_correlated_units():
    # units 2 and 3 have the same gradient: removing both costs 1/2 |2u|^2 = 2, though
    # each has the smallest diagonal; swapping one for unit 0 (orthogonal) costs 1.25
    u, w = np.array([1.0, 0, 0]), np.array([0, np.sqrt(1.5), 0])
    g = np.stack([w, 2 * w, u, u])  # [units, examples]
    fisher = g @ g.T
    removed, before, after = rearrange_layer(fisher, np.diag(fisher), 2)
    assert before == pytest.approx(2.0) and after == pytest.approx(1.25)
    assert len(removed) == 2 and 0 in removed and len({2, 3} & set(removed)) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(0, 12))
def test_rearrangement_keeps_the_count_and_never_raises_the_estimate(seed, n, remove):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(5, n))
    fisher = g.T @ g
    removed, before, after = rearrange_layer(fisher, np.diag(fisher), min(remove, n))
    assert len(removed) == min(remove, n) == len(set(removed))
    assert after <= before + 1e-9
    assert after == pytest.approx(0.5 * fisher[np.ix_(removed, removed)].sum())


# ---- end to end --------------------------------------------------------------------------


def tiny_classifier_dir(tmp_path):
    from tests.conftest import tiny_tokenizer
    from tests.unit.test_fisher import classifier

    folder = tmp_path / "tiny-cls"
    folder.mkdir()
    classifier("bert").float().save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


def test_fisher_budget_run_writes_budget_into_plan_and_metrics(tmp_path):
    from tests.unit.test_glue import write_glue

    glue = write_glue(tmp_path / "glue")
    model = tiny_classifier_dir(tmp_path)
    out = tmp_path / "out"
    body = f"""
model: {model}
calibration: {{source: glue, task: sst2, data_dir: {glue}, num_sequences: 48, batch_size: 16, max_length: 16}}
scorers: [fisher]
targets:
  budget: {{flops: 0.6, scorer: fisher}}
"""
    res = run(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    b = plan["source"]["budget"]
    assert m["budget"]["asked"] == {"flops": 0.6} and m["budget"]["within_one_unit"]
    assert m["budget"]["achieved"]["flops"] == pytest.approx(m["flops_kept_share"])
    assert m["flops_kept_share"] <= 0.6
    layout = Layout(tuple(m["before"]["heads_per_layer"]), tuple(m["before"]["ffn_per_layer"]), 8, 32)
    ch, cn = unit_costs(layout, "flops")
    assert (0.6 - m["flops_kept_share"]) * encoder_flops_per_token(layout) < max(ch, cn)
    assert b["split"] == "importance" and "rearrangement" in b and b["search"]["heads_kept"] >= 0
    scores = json.loads((out / "scores" / "fisher.neurons.json").read_text())
    assert "_fisher_blocks" not in scores["extras"] and scores["extras"]["loss"] == "task"
    assert "Budget: keep at most 60.00%" in (out / "report.html").read_text()


def test_measured_split_run_for_a_data_free_scorer(tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    body = f"""
model: {tiny_bert_dir}
calibration: {{num_sequences: 16, batch_size: 8, min_length: 4, max_length: 12}}
scorers: [magnitude]
targets:
  budget: {{params: 0.5, scorer: magnitude, candidates: 3, min_per_layer: 1}}
"""
    res = run(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    b = json.loads((out / "plan.json").read_text())["source"]["budget"]
    # 3 head counts per ranked scope (search: global and per_layer; allocated is asked for)
    assert b["split"] == "measure" and len(b["candidates"]) == 6 and "probes" not in b
    assert {c["scope"] for c in b["candidates"]} == {"global", "per_layer"}
    assert json.loads((out / "plan.json").read_text())["source"]["split_loss"] == "output"
    losses = [c["loss"] for c in b["candidates"]]
    assert b["candidates"][b["chosen"]]["loss"] == min(losses) and max(losses) > 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["budget"]["achieved"]["params"] <= 0.5 and min(m["after"]["heads_per_layer"]) >= 1


@pytest.mark.parametrize("budget,scorers,match", [
    ("{flops: 0.05, scorer: magnitude, min_per_layer: 3}", "[magnitude]", "smallest achievable budget"),
    ("{flops: 0.5, scorer: fisher}", "[{name: fisher, params: {label_free: null}}]", "labelled calibration"),
])
def test_cli_bad_budget_is_one_line_exit_2_nothing_written(tmp_path, tiny_bert_dir, budget, scorers, match):
    out = tmp_path / "out"
    body = f"""
model: {tiny_bert_dir}
calibration: {{num_sequences: 8, batch_size: 8, min_length: 4, max_length: 12}}
scorers: {scorers}
targets:
  budget: {budget}
"""
    res = run(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(out), "--quiet"])
    assert res.exit_code == 2 and res.output.startswith("error:") and match in res.output
    assert res.output.strip().count("\n") == 0 and not out.exists()


def test_cli_fisher_on_a_model_without_head_is_one_line_error(tmp_path, tiny_bert_dir):
    from tests.unit.test_glue import write_glue

    glue = write_glue(tmp_path / "glue")
    out = tmp_path / "out"
    body = f"""
model: {tiny_bert_dir}
calibration: {{source: glue, task: sst2, data_dir: {glue}, num_sequences: 8}}
scorers: [fisher]
targets:
  budget: {{flops: 0.5}}
"""
    res = run(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(out), "--quiet"])
    assert res.exit_code == 2 and "needs a model with a task head" in res.output
    assert "label_free: output" in res.output and res.output.strip().count("\n") == 0 and not out.exists()


def test_budget_60_recipe_runs_shrunk_on_a_tiny_model(tmp_path):
    """The shipped recipe as it is, on a tiny classifier, a tiny GLUE folder and a few
    fine-tuning steps (the real run fine-tunes MiniLM for 250 steps)."""
    from pathlib import Path

    import yaml

    from compressor.pipeline import run_recipe
    from tests.unit.test_glue import write_glue

    path = Path(__file__).resolve().parents[2] / "recipes" / "budget-60.yaml"
    data = yaml.safe_load(path.read_text())
    r = parse_recipe(data, "budget-60")
    assert (r.budget.kind, r.budget.share, r.budget.split) == ("flops", 0.6, "importance")
    assert [s.name for s in r.scorers] == ["fisher"] and r.calibration.source == "glue"
    assert r.calibration.task == "sst2" and r.finetune_base is not None
    glue = write_glue(tmp_path / "glue")
    data["model"] = str(tiny_classifier_dir(tmp_path))
    data["task"].update(data_dir=str(glue), max_length=16, train_examples=32, eval_examples=16)
    data["finetune"]["base"].update(max_steps=2, batch_size=8)
    data["calibration"].update(num_sequences=32, batch_size=16, max_length=16)
    data.pop("export")
    data["evaluate"].update(latency=False)
    m = run_recipe(parse_recipe(data, "budget-60"), output=tmp_path / "out", progress=False)
    assert m["budget"]["within_one_unit"] and m["flops_kept_share"] <= 0.6
    assert {"original", "pruned"} <= set(m["evaluation"])


def test_allocated_scope_takes_cuts_where_the_measured_loss_rises_least():
    """A synthetic calibration loss in which layer 1's FFN is nearly free to cut and
    layer 0's FFN and all heads are costly: the allocated candidate removes layer 1's
    neurons first, in the scorer's order, at a lower loss than any per_layer split."""
    layout = Layout((4, 4), (40, 40), 8, 16)
    rng = np.random.default_rng(0)
    hs = HeadScores("magnitude", tuple(tuple(rng.random(4)) for _ in range(2)))
    ns = NeuronScores("magnitude", tuple(rng.random(40) for _ in range(2)))
    weight = {("h", 0): 5.0, ("h", 1): 5.0, ("n", 0): 1.0, ("n", 1): 0.01}

    def evaluate(heads, neurons):
        loss = sum(weight[("h", l)] * (len(i) / 4) ** 2 for l, i in heads.items())
        return 1.0 + loss + sum(weight[("n", l)] * (len(i) / 40) ** 2 for l, i in neurons.items())

    t = BudgetTarget("params", 0.7, "magnitude", "magnitude", split="measure", scope="allocated", candidates=3)
    plan = plan_budget(layout, hs, ns, t, evaluate=evaluate)
    info = plan.source["budget"]
    assert [c["exponent"] for c in info["candidates"]] == [2.0, 3.0]
    per_layer = plan_budget(layout, hs, ns, BudgetTarget("params", 0.7, "magnitude", "magnitude", split="measure",
                                                        scope="per_layer", candidates=3), evaluate=evaluate)
    # the measured allocation finds a lower loss than any same-share-per-layer split
    assert min(c["loss"] for c in info["candidates"]) < min(c["loss"] for c in per_layer.source["budget"]["candidates"])
    assert [p["removed"] for p in info["probes"]["neurons"]] == [20, 20]
    assert info["probes"]["neurons"][1]["loss_added"] < info["probes"]["neurons"][0]["loss_added"]
    assert len(plan.neurons.get(1, ())) > len(plan.neurons.get(0, ()))
    # within layer 1 the scorer's lowest neurons go
    order = np.argsort(ns.values[1], kind="stable")
    assert sorted(plan.neurons[1]) == sorted(order[:len(plan.neurons[1])].tolist())
    assert info["within_one_unit"]
