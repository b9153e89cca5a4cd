"""ONNX export: parity with PyTorch, per-layer attention fusion, int8, loading, errors."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from compressor import PruningPlan, apply_plan, save_model
from compressor.cli import main
from compressor.export import export_model
from compressor.export.onnx import ParityError, validation_inputs
from tests.conftest import tiny_model, tiny_tokenizer

# uneven heads: 1 head, 0 heads (no attention at all) and 3 heads; FFN sizes differ too
UNEVEN = PruningPlan.build(heads={0: [0, 1, 2], 1: [0, 1, 2, 3], 2: [1]}, neurons={0: range(10), 2: [1, 2]})


def run_onnx(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_pruned_encoder_exports_with_attention_fused_per_layer(kind, tmp_path):
    model = apply_plan(tiny_model(kind), UNEVEN)
    res = export_model(model, None, tmp_path, quantize="int8")
    assert res.task == "feature-extraction"
    assert res.heads_per_layer == [1, 0, 3]
    assert res.fused_attention == [1, None, 3]  # each layer at its own head count
    assert res.parity["model.onnx"] <= 1e-4 and res.parity["model_optimized.onnx"] <= 1e-4
    assert (tmp_path / "model_quantized.onnx").is_file() and "model_quantized.onnx" in res.parity
    assert -1.0 <= res.quantized_cosine <= 1.0  # int8 quality: see test_int8_keeps_output_direction
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["fused_attention"] == [1, None, 3]
    # optimized outputs match the unoptimized graph on a fresh batch
    feeds = validation_inputs(model, None, [i.name for i in ort.InferenceSession(str(tmp_path / "model.onnx")).get_inputs()])
    np.testing.assert_allclose(run_onnx(tmp_path / "model_optimized.onnx", feeds), run_onnx(tmp_path / "model.onnx", feeds),
                               atol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_int8_keeps_output_direction(kind, tmp_path):
    # The tiny fixtures (hidden 32, every weight perturbed) are too degenerate for 8-bit
    # activations; a standard random init at hidden 128 is not. RoBERTa also exercises
    # quantization without quant_pre_process, which fails on its position ids.
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cls, cfg = {"bert": (BertModel, BertConfig), "roberta": (RobertaModel, RobertaConfig)}[kind]
    model = cls(cfg(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, attn_implementation="eager")).eval()
    model = apply_plan(model, PruningPlan.build(heads={0: [0, 1, 2]}, neurons={1: range(100)}))
    res = export_model(model, None, tmp_path, quantize="int8")
    assert res.quantized_cosine > 0.99
    assert res.parity["model_quantized.onnx"] > res.parity["model_optimized.onnx"]  # int8 is not exact


def test_sequence_classifier_and_gpt2_export(tmp_path):
    from transformers import BertForSequenceClassification

    clf = apply_plan(tiny_model("bert", cls=BertForSequenceClassification), UNEVEN)
    res = export_model(clf, None, tmp_path / "clf")
    assert res.task == "text-classification" and res.parity["model_optimized.onnx"] <= 1e-4
    gpt = apply_plan(tiny_model("gpt2"), UNEVEN)
    res = export_model(gpt, None, tmp_path / "gpt")
    assert res.task == "text-generation" and max(res.parity.values()) <= 1e-4


def test_parity_beyond_atol_is_an_error(tmp_path):
    model = tiny_model("bert")  # float32 graphs never match PyTorch to 1e-12
    with pytest.raises(ParityError, match=r"max \|onnx - torch\| = .* > atol 1e-12"):
        export_model(model, None, tmp_path, atol=1e-12)


def test_cli_export_loads_with_ort_and_optimum(tmp_path):
    model = apply_plan(tiny_model("bert"), UNEVEN)
    folder = tmp_path / "pruned"
    save_model(model, folder, tiny_tokenizer(tmp_path))
    out = tmp_path / "onnx"
    res = CliRunner().invoke(main, ["export", "--model", str(folder), "--output", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "fused attention heads per layer [1, None, 3]" in res.output
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["the movie was good"], return_tensors="pt")
    ort_model = ORTModelForFeatureExtraction.from_pretrained(out, file_name="model_optimized.onnx")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state
    torch.testing.assert_close(ort_model(**enc).last_hidden_state, ref, atol=1e-4, rtol=0)
    # errors: one line, exit 2, nothing written
    for args, msg in (
        (["export", "--model", str(folder), "--output", str(out)], "is not empty; pass --overwrite"),
        (["export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o2")], "model path does not exist"),
        (["export", "--model", str(folder), "--output", str(tmp_path / "o3"), "--atol", "1e-12"], "ONNX parity failed"),
    ):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_bench_cli_times_every_backend(tmp_path):
    model = apply_plan(tiny_model("bert"), UNEVEN)
    folder = tmp_path / "m"
    save_model(model, folder)
    export_model(model, None, tmp_path / "onnx", quantize="int8")
    out = tmp_path / "lat.json"
    res = CliRunner().invoke(main, ["bench", "--model", str(folder), "--onnx", str(tmp_path / "onnx"), "--batch-sizes", "1,2",
                                    "--seq-lens", "8", "--runs", "3", "--warmup", "1", "--json", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("pytorch", "ort-fp32", "ort-int8") for n in (1, 2)}
    assert all(0 < r["median_ms"] <= r["p90_ms"] and r["runs"] == 3 for r in rows)
    for args, msg in ((["bench"], "give --model, --onnx or both"),
                      (["bench", "--onnx", str(tmp_path / "none")], "ONNX folder not found"),
                      (["bench", "--onnx", str(folder)], "no ONNX model in")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and msg in r.output, r.output
    r = CliRunner().invoke(main, ["bench", "--model", str(folder), "--batch-sizes", "0"])
    assert r.exit_code == 2 and "positive integers" in r.output
