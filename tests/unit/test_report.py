"""report.html and metrics.json say only what is true (issue 17): int8 parity names its
measure, representatives listed as kept are kept, int8 is evaluated at a stated batching,
fine-tuning details and the unpruned fine-tuned model are recorded (base_model/), labels
have names, score figures show where the plan cut, and the report reads a typed
RunMetrics (an older run's metrics.json too)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compressor.arch import Layout
from compressor.planning import plan_heads, removal_count
from compressor.recipe import HeadTarget
from compressor.report.html import plan_cuts, render_report
from compressor.results import INT8_BATCHING, MetricsError, RunMetrics
from compressor.types import HeadScores, Scores
from tests.conftest import tiny_model, tiny_tokenizer
from tests.unit.test_glue import write_glue

OLD_RUN = Path(__file__).parent / "data" / "old_run"  # written by compressor before issue 17
RATIO = 0.3  # 12 heads: round(3.6) = 4 removed, where ceil(12 * 0.7) = 9 clusters left a representative to cut


def _row(html: str, first_cell: str) -> str:
    """The <tr> of a report table whose first cell is ``first_cell``."""
    m = re.search(r"<tr><td[^>]*>" + re.escape(first_cell) + r"</td>.*?</tr>", html)
    assert m, f"no table row for {first_cell}"
    return m.group(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One recipe run: fine-tune a base, prune by redundancy + persistence, recover with
    distillation, export with int8, evaluate at batch 5."""
    pytest.importorskip("onnxruntime")
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    root = tmp_path_factory.mktemp("report")
    folder = root / "tiny-bert"
    folder.mkdir()
    tiny_model("bert").save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    glue = write_glue(root / "glue")
    recipe = parse_recipe({
        "model": str(folder),
        "task": {"name": "sst2", "data_dir": str(glue), "max_length": 16},
        "calibration": {"source": "glue", "num_sequences": 32, "max_length": 16},
        "scorers": ["redundancy", "persistence"],
        "targets": {"heads": {"ratio": RATIO, "scorer": "redundancy"},
                    "neurons": {"ratio": 0.3, "scorer": "persistence"}},
        "finetune": {"base": {"max_steps": 40, "lr": 3e-3, "batch_size": 16},
                     "recovery": {"max_steps": 10, "lr": 1e-3, "batch_size": 16, "distill": {"alpha": 0.5}}},
        "evaluate": {"batch_size": 5, "latency": False},
        "export": {"optimize": True, "quantize": "int8"},
    }, "truthful")
    out = root / "run"
    metrics = run_recipe(recipe, output=out, progress=False)
    return {"out": out, "glue": glue, "metrics": metrics, "html": (out / "report.html").read_text(),
            "saved": json.loads((out / "metrics.json").read_text())}


def test_metrics_json_is_the_typed_result(run):
    assert run["saved"] == run["metrics"]
    typed = RunMetrics.from_dict(run["saved"])
    assert typed.to_dict() == run["saved"]  # round trip: nothing dropped or renamed
    assert typed.export is not None and typed.evaluation["pruned"].batch_size == 5


def test_int8_parity_cell_names_its_measure(run):
    ex = run["saved"]["export"]
    html = run["html"]
    int8 = _row(html, "model_quantized.onnx")
    assert "not held to atol" in int8 and "cosine of logits" in int8
    assert f"{ex['quantized_cosine']:.4f}" in int8 and "yes" not in int8
    assert "within atol 0.0001: yes" in _row(html, "model.onnx")


def test_every_representative_called_kept_is_in_the_pruned_model(run):
    out = run["out"]
    extras = json.loads((out / "scores" / "redundancy.heads.json").read_text())["extras"]
    plan = json.loads((out / "plan.json").read_text())
    removed = {f"{layer}.{h}" for layer, hs in plan["heads"].items() for h in hs}
    m = re.search(r'<p id="representatives">Representatives kept \((\d+) of (\d+), one per cluster\): ([^<]*)</p>', run["html"])
    assert m
    called_kept = m.group(3).split(", ")
    assert called_kept and not set(called_kept) & removed
    # one rounding rule: the clusters are exactly the heads the plan keeps
    assert extras["clusters"] == 12 - removal_count(12, RATIO) == len(called_kept) == int(m.group(2))
    after = run["saved"]["after"]["heads_per_layer"]
    assert sum(after) == len(called_kept)
    for name in called_kept:
        layer, head = map(int, name.split("."))
        assert head not in plan["heads"].get(str(layer), [])
    assert "Representatives the plan removed" not in run["html"]


def test_int8_is_evaluated_at_a_fixed_stated_batching(run):
    from compressor.data.glue import eval_splits
    from compressor.evaluate.glue import OnnxClassifier, score_splits
    from compressor.models import load_tokenizer

    ev = run["saved"]["evaluation"]
    assert ev["onnx_quantized"]["batch_size"] == 1 and ev["onnx_quantized"]["batching"] == INT8_BATCHING
    assert ev["onnx_raw"]["batch_size"] == ev["pruned"]["batch_size"] == 5 and ev["onnx_raw"]["batching"] is None
    assert re.search(r"onnx_quantized: one example per batch", run["html"])
    assert "1" in _row(run["html"], "onnx_quantized")
    # the recorded figure is what one-example batches give, whatever evaluate.batch_size was
    out = run["out"]
    runner = OnnxClassifier(out / "onnx" / "model_quantized.onnx", load_tokenizer(str(out / "model")))
    again = score_splits(runner, eval_splits("sst2", str(run["glue"]), "dev", None, 0), 1, 16)
    assert again.metrics == pytest.approx(ev["onnx_quantized"]["metrics"], abs=1e-9)


def test_finetuning_details_and_the_unpruned_base_are_kept(run):
    from compressor.evaluate.glue import evaluate_glue, runner_for

    ft = run["saved"]["finetune"]
    base, rec = ft["base"], ft["recovery"]
    assert base["config"]["lr"] == pytest.approx(3e-3) and base["config"]["batch_size"] == 16
    assert base["config"]["seed"] == 0 and base["train_examples"] == 256 and base["task"] == "sst2"
    assert base["saved_as"] == "base_model" and base["teacher"] is None
    assert rec["distilled"] and "base_model/" in rec["teacher"] and rec["config"]["distill"]["alpha"] == 0.5
    html = run["html"]
    assert 'id="finetune"' in html and "0.003" in _row(html, "base") and "base_model/" in _row(html, "recovery")
    orig = run["saved"]["evaluation"]["original"]
    assert f"accuracy {100 * orig['metrics']['accuracy']:.2f}" in html
    # the comparison can be redone from the output folder alone
    res = evaluate_glue(runner_for(str(run["out"] / "base_model")), "sst2", str(run["glue"]), max_length=16)
    assert res.metrics == pytest.approx(orig["metrics"], abs=1e-9)


def test_saved_classifiers_name_their_labels(run):
    for folder in ("model", "base_model", "onnx"):
        cfg = json.loads((run["out"] / folder / "config.json").read_text())
        assert cfg["id2label"] == {"0": "negative", "1": "positive"}, folder
        assert cfg["label2id"] == {"negative": 0, "positive": 1}, folder


def test_score_figure_shows_where_the_plan_cut(run):
    out = run["out"]
    values = json.loads((out / "scores" / "persistence.neurons.json").read_text())["values"]
    plan = json.loads((out / "plan.json").read_text())
    cuts = plan_cuts(values, plan["neurons"])
    assert sum(n for n, _, _ in cuts) == run["saved"]["neurons_removed"] > 0
    for n, hi, lo in cuts:
        if n:  # a global ratio cut: nothing kept scores below what was removed
            assert hi <= lo
    html = run["html"]
    assert "where the plan cut each layer's persistence scores" in html
    table = html[html.index("where the plan cut each layer's persistence scores"):]
    n, hi, lo = cuts[0]
    assert f"<td>{hi:.4g}</td><td>{lo:.4g}</td>" in table.split("</table>")[0]
    # the figure of a scorer that did not drive the plan has no cut table
    assert "where the plan cut each layer's magnitude" not in html


def test_cut_lines_change_the_picture():
    from compressor.report.figures import score_distributions

    values = [[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]]
    assert score_distributions(values, "t", "score", cuts=[0.5, None]) != score_distributions(values, "t", "score")


def test_plan_cuts_per_layer():
    cuts = plan_cuts([[3.0, 1.0, 2.0], [5.0, 4.0]], {"0": [1, 2]})
    assert cuts == [(2, 2.0, 3.0), (0, None, 4.0)]


# ---- an older run's metrics.json ------------------------------------------------------


def _old():
    return json.loads((OLD_RUN / "metrics.json").read_text()), json.loads((OLD_RUN / "plan.json").read_text())


def test_an_older_runs_metrics_render_and_say_what_was_not_recorded():
    metrics, plan = _old()
    assert "batch_size" not in metrics["evaluation"]["pruned"]  # the fixture is of the old format
    old = json.loads((OLD_RUN / "redundancy.heads.json").read_text())
    results = {"redundancy": Scores(heads=HeadScores("redundancy", tuple(map(tuple, old["values"])), old["extras"]))}
    html = render_report(metrics, plan, results)
    assert "not held to atol" in _row(html, "model_quantized.onnx") and "yes" not in _row(html, "model_quantized.onnx")
    assert "?" in _row(html, "onnx_quantized") and "not recorded by this (older) run" in html
    assert 'id="finetune"' in html and "?" in _row(html, "base")
    # the old scorer rounded the cluster count up: its representative 0.3 was removed by the
    # plan, and the report no longer calls it kept
    assert "0.3" in old["extras"]["representatives"] and 3 in plan["heads"]["0"]
    kept = re.search(r'<p id="representatives">[^<]*: ([^<]*)</p>', html).group(1).split(", ")
    assert "0.3" not in kept and "Representatives the plan removed: 0.3" in html


@pytest.mark.parametrize("path", [("before",), ("before", "parameters"), ("evaluation", "pruned", "metrics")])
def test_metrics_missing_a_needed_field_fail_with_one_line(path):
    metrics, plan = _old()
    d = metrics
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]
    with pytest.raises(MetricsError) as e:
        render_report(metrics, plan)
    msg = str(e.value)
    assert "\n" not in msg and f"'metrics.{'.'.join(path)}'" in msg and "older" in msg


def test_metrics_load_errors(tmp_path):
    with pytest.raises(MetricsError, match="not found"):
        RunMetrics.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MetricsError, match="not valid JSON"):
        RunMetrics.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(MetricsError, match="must be a JSON object"):
        RunMetrics.load(tmp_path / "list.json")
    assert RunMetrics.load(OLD_RUN / "metrics.json").finetune["base"].config is None


# ---- one rounding rule ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 16), min_size=1, max_size=6), st.floats(0.0, 0.95), st.integers(0, 2**16))
def test_a_clustering_scorer_and_the_planner_round_alike(sizes, ratio, seed):
    """Scores as redundancy gives them (n - removal_count clusters, representatives above 2,
    the rest in [-1, 1]): a global ratio target removes no representative."""
    n = sum(sizes)
    assume(removal_count(n, ratio) < n)  # removing every head leaves no cluster to keep
    k = min(n, max(1, n - removal_count(n, ratio)))
    rng = np.random.default_rng(seed)
    flat = rng.uniform(-1, 1, n)
    reps = rng.choice(n, k, replace=False)
    flat[reps] += 3.0
    starts = np.cumsum([0, *sizes])
    values = tuple(tuple(flat[a:b]) for a, b in itertools.pairwise(starts))

    layout = Layout(tuple(sizes), tuple(4 for _ in sizes), 8, 32)
    removed = plan_heads(HeadScores("redundancy", values), layout, HeadTarget(ratio=ratio))
    gone = {int(starts[layer] + h) for layer, hs in removed.items() for h in hs}
    assert not gone & set(reps.tolist())
    assert len(gone) == removal_count(n, ratio)


def test_label_names_for_every_classification_task():
    from compressor.data.glue import GLUE_TASKS, label_names
    from compressor.task_head import with_task_head

    assert label_names(GLUE_TASKS["mrpc"]) == ("not_equivalent", "equivalent")
    assert label_names(GLUE_TASKS["stsb"]) is None
    for t in GLUE_TASKS.values():
        names = label_names(t)
        assert names is None or len(names) == t.num_labels
    m = with_task_head(tiny_model("bert"), GLUE_TASKS["mnli"])
    assert m.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert m.config.label2id["contradiction"] == 2


def test_export_cli_says_int8_is_not_held_to_atol(tmp_path, tiny_bert_dir):
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from compressor.cli import main

    res = CliRunner().invoke(main, ["export", "--model", str(tiny_bert_dir), "--output", str(tmp_path / "o"),
                                    "--quantize", "int8", "--quiet"])
    assert res.exit_code == 0, res.output
    cos = json.loads((tmp_path / "o" / "export.json").read_text())["quantized_cosine"]
    assert f"int8 is not held to --atol; its mean cosine vs PyTorch: {cos:.4f}" in res.output


def test_latency_and_budget_round_trip_in_the_old_flat_layout():
    metrics, _ = _old()
    metrics["budget"] = {"asked": {"flops": 0.6}, "achieved": {"flops": 0.59, "params": 0.61},
                         "within_one_unit": True, "split": "importance"}
    typed = RunMetrics.from_dict(metrics)
    assert typed.latency.models["pruned"]["median_ms"] == metrics["latency"]["pruned"]["median_ms"]
    assert typed.budget.asked == {"flops": 0.6}
    assert typed.to_dict()["latency"] == metrics["latency"] and typed.to_dict()["budget"] == metrics["budget"]
