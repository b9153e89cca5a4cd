"""End to end on the real all-MiniLM-L6-v2 and the real data in ../shared/data."""

from __future__ import annotations

import json

import numpy as np

import pytest
import torch
from click.testing import CliRunner

from compressor import PruningPlan, apply_plan, load_model, mask_plan
from compressor.arch import adapter_for
from compressor.cli import main
from compressor.data.calibration import calibration_batches
from compressor.models import load_tokenizer
from compressor.recipe import CalibrationConfig

pytestmark = pytest.mark.integration
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def minilm():
    return load_model("default")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("default")


def test_default_model_is_real_minilm(minilm):
    layout = adapter_for(minilm).layout()
    assert layout.heads_per_layer == (12,) * 6 and layout.ffn_per_layer == (1536,) * 6
    assert sum(p.numel() for p in minilm.parameters()) == 22_713_216


def test_pruned_minilm_equals_masked(minilm, tokenizer):
    g = torch.Generator().manual_seed(0)
    plan = PruningPlan.build(
        heads={i: torch.randperm(12, generator=g)[: 2 * i].tolist() for i in range(6)} | {3: list(range(12))},
        neurons={i: torch.randperm(1536, generator=g)[: 250 * i].tolist() for i in range(6)},
    )
    enc = tokenizer(["a gripping , funny film .", "the plot goes nowhere and the actors know it"], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        a = apply_plan(minilm, plan)(**enc).last_hidden_state
        b = mask_plan(minilm, plan)(**enc).last_hidden_state
    assert (a - b).abs().max().item() <= 1e-5


def test_obce50_recipe_end_to_end(tmp_path):
    """The README's main job on the real model: about half of the FFN neurons go,
    the result reloads exactly, heads are untouched."""
    out = tmp_path / "obce"
    res = CliRunner().invoke(
        main, ["--recipe", str(REPO / "recipes" / "obce-50.yaml"), "--output", str(out), "--quiet"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    kept = m["after"]["ffn_per_layer"]
    assert all(760 <= k <= 776 for k in kept), kept  # ~50% of 1536 per layer
    assert m["after"]["heads_per_layer"] == [12] * 6
    assert 0.80 < m["parameters_kept_share"] < 0.87
    # the deployable graph: parity within 1e-4, attention fused in every layer, int8 beside it
    ex = m["export"]
    assert ex["parity"]["model.onnx"] <= 1e-4 and ex["parity"]["model_optimized.onnx"] <= 1e-4
    assert ex["fused_attention"] == [12] * 6
    assert ex["quantized_cosine"] > 0.95  # int8 keeps the output vectors' direction
    assert (out / "onnx" / "model_quantized.onnx").is_file() and (out / "onnx" / "tokenizer.json").is_file()
    assert 'id="export"' in (out / "report.html").read_text()
    model = load_model(str(out / "model"))
    assert list(adapter_for(model).layout().ffn_per_layer) == kept
    plan = PruningPlan.load(out / "plan.json")
    original = load_model("default")
    tok = load_tokenizer(str(out / "model"))
    enc = tok(["persistence keeps what varies ."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).last_hidden_state, apply_plan(original, plan)(**enc).last_hidden_state,
                                   atol=0, rtol=0)


def test_real_text_calibration_sources(tokenizer, minilm, shared_data):
    wiki = shared_data / "wikitext-2" / "valid.txt"
    cfg = CalibrationConfig(source="text_file", path=str(wiki), num_sequences=40, batch_size=16, max_length=64)
    batches = calibration_batches(cfg, tokenizer, minilm.config, 0)
    assert sum(len(b.input_ids) for b in batches) == 40
    cfg = CalibrationConfig(source="glue", task="mrpc", data_dir=str(shared_data / "glue"), split="dev",
                            num_sequences=30, batch_size=16, max_length=128)
    batches = calibration_batches(cfg, tokenizer, minilm.config, 0)
    assert sum(len(b.input_ids) for b in batches) == 30
    # sentence pairs: two [SEP]s in every row
    assert all(((b.input_ids == tokenizer.sep_token_id).sum(1) == 2).all() for b in batches)


def test_head_scorers_on_real_text(minilm, tokenizer, shared_data):
    """The three head scorers on MiniLM over SST-2 sentences, syntactic sieves included."""
    from compressor.capture import run_capture
    from compressor.scorers import SCORERS, ScoringContext

    a = adapter_for(minilm)
    cfg = CalibrationConfig(source="glue", task="sst2", data_dir=str(shared_data / "glue"), split="dev",
                            num_sequences=48, batch_size=16, max_length=64)
    batches = calibration_batches(cfg, tokenizer, minilm.config, 0)
    scorers = [SCORERS.get("redundancy")(metrics=["js", "cosine"], ratio=0.5),
               SCORERS.get("head_types")(stability_splits=3),
               SCORERS.get("sieve_roles")()]
    for s in scorers:
        s.begin(ScoringContext(minilm, a, a.layout(), 0, tokenizer))
    run_capture(minilm, a, batches, scorers, progress=False)
    red, types, roles = (s.finish().heads for s in scorers)
    assert red.extras["clusters"] == 36 and len(red.extras["representatives"]) <= 36
    assert sum(types.extras["type_counts"].values()) == 72 and types.extras["stability"]["mean"] > 0.8
    assert 0.5 < types.extras["stability"]["stable_share"] <= types.extras["stability"]["mean"]
    assert "figures" in types.extras
    ex = roles.extras
    assert ex["notices"] == [] and ex["unaligned_sequences"] <= 5  # spaCy ([syntax] extra) is installed
    assert {"nsubj", "dobj", "amod", "advmod"} <= set(ex["sieves"])
    assert ex["role_counts"]["cls"] > 0 and sum(ex["role_counts"].values()) > 0
    # syntactic sieves saw data: their biases are finite numbers, not all zero
    syn = [ex["sieves"].index(n) for n in ("nsubj", "amod")]
    assert np.abs(np.array(ex["mean_bias"])[:, syn]).sum() > 0


def test_sieve_roles_on_mrpc_pairs(minilm, tokenizer, shared_data):
    """Sentence pairs: the block sieve sees two segments and every sentence of a pair is
    parsed and aligned on its own (before: block bias exactly 1, 32 of 32 pairs unaligned)."""
    from compressor.capture import run_capture
    from compressor.scorers import SCORERS, ScoringContext

    a = adapter_for(minilm)
    cfg = CalibrationConfig(source="glue", task="mrpc", data_dir=str(shared_data / "glue"), split="train",
                            num_sequences=32, batch_size=16, max_length=128)
    batches = calibration_batches(cfg, tokenizer, minilm.config, 0)
    assert all(b.token_type_ids is not None and b.token_type_ids.max() == 1 for b in batches)
    roles = SCORERS.get("sieve_roles")()
    roles.begin(ScoringContext(minilm, a, a.layout(), 0, tokenizer))
    run_capture(minilm, a, batches, [roles], progress=False)
    ex = roles.finish().heads.extras
    assert ex["notices"] == [] and ex["segments"] and ex["test"] == "z"
    assert ex["unaligned_sequences"] <= 3  # a few pairs do not survive decode -> re-encode (e.g. "do n't")
    bias = np.array(ex["mean_bias"])  # [72, sieves]
    block = bias[:, ex["sieves"].index("block")]
    assert block.max() > 1.3 and np.abs(block - 1).max() > 0.2  # no longer exactly 1
    syn = [ex["sieves"].index(n) for n in ("nsubj", "dobj", "amod", "advmod")]
    assert (bias[:, syn] > 0).all()  # every syntactic sieve saw pairs
    assert sum(ex["role_counts"][n] for n in ("nsubj", "dobj", "amod", "advmod")) > 0


def test_sst2_finetune_prune_recover_and_onnx_metric(tmp_path, shared_data):
    """A short real run of the recipe stages on SST-2: fine-tune, prune heads and neurons,
    recover with distillation, export; PyTorch and ONNX must score the same on all of dev."""
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    recipe = parse_recipe({
        "task": {"name": "sst2", "data_dir": str(shared_data / "glue"), "max_length": 48, "train_examples": 1600},
        "finetune": {"base": {"max_steps": 50, "lr": 1e-4}, "recovery": {"max_steps": 10, "lr": 5e-5, "distill": {}}},
        "calibration": {"source": "glue", "num_sequences": 64, "max_length": 48},
        "scorers": ["magnitude", "persistence"],
        "targets": {"heads": {"ratio": 0.25}, "neurons": {"ratio": 0.25, "scorer": "persistence"}},
        "export": {"optimize": True},
        "evaluate": {"latency": False},
    })
    m = run_recipe(recipe, output=tmp_path / "run", progress=False)
    ev = m["evaluation"]
    assert ev["original"]["examples"] == 872
    assert ev["original"]["main"] > 0.70  # 50 steps on 1,600 sentences already learn SST-2
    torch_acc = ev["pruned"]["main"]
    for kind in ("onnx_raw", "onnx_optimized"):
        assert abs(ev[kind]["main"] - torch_acc) <= 1 / 872, kind  # at most one borderline example flips
    assert m["heads_removed"] == 18 and m["finetune"]["recovery"]["distilled"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="evaluation"' in html and "original" in html and "onnx_optimized" in html
