"""Extreme pruning results work end to end or fail in one line: every head of one layer
or of all layers removed, every FFN neuron of a layer or of all layers, a model left with
one head: prune, save, load, export with ONNX parity, evaluate, analyze, bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor.arch import adapter_for
from compressor.cli import main
from compressor.models import load_model
from tests.conftest import batch, outputs, tiny_model, tiny_tokenizer

H, F, L = 4, 37, 3  # the tiny models' heads, FFN neurons and layers

PLANS = {
    "heads_one_layer": {"heads": {"1": list(range(H))}},
    "heads_all": {"heads": {str(i): list(range(H)) for i in range(L)}},
    "ffn_one_layer": {"neurons": {"1": list(range(F))}},
    "ffn_all": {"neurons": {str(i): list(range(F)) for i in range(L)}},
    "everything": {"heads": {str(i): list(range(H)) for i in range(L)},
                   "neurons": {str(i): list(range(F)) for i in range(L)}},
    "one_head": {"heads": {"0": list(range(1, H)), **{str(i): list(range(H)) for i in range(1, L)}}},
}


def ok(res) -> None:
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("extreme")
    out = {}
    for kind, cls in (("bert", BertForSequenceClassification), ("gpt2", None)):
        folder = root / kind
        tiny_model(kind, cls=cls).save_pretrained(folder)
        if kind == "bert":
            tiny_tokenizer(folder).save_pretrained(folder)
        out[kind] = folder
    glue = root / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"the film was {'good' if i % 2 else 'bad'}\t{i % 2}\n"
                                                              for i in range(12)))
    out["glue"] = root / "glue"
    return out


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_extreme_plan_end_to_end(tmp_path, models, kind, plan):
    pytest.importorskip("onnxruntime")
    src = models[kind]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"format": "compressor.plan/1", **PLANS[plan]}))
    pruned, onnx = tmp_path / "pruned", tmp_path / "onnx"
    ok(CliRunner().invoke(main, ["prune", "--model", str(src), "--plan", str(plan_file), "--output", str(pruned), "--quiet"]))

    # save -> load: the recorded layout comes back, and the model still computes finite outputs
    model = load_model(str(pruned))
    layout = adapter_for(model).layout()
    removed_heads = {int(k): len(v) for k, v in PLANS[plan].get("heads", {}).items()}
    removed_ffn = {int(k): len(v) for k, v in PLANS[plan].get("neurons", {}).items()}
    assert list(layout.heads_per_layer) == [H - removed_heads.get(i, 0) for i in range(L)]
    assert list(layout.ffn_per_layer) == [F - removed_ffn.get(i, 0) for i in range(L)]
    ids, mask = batch(kind)
    assert torch.isfinite(outputs(model, ids, mask)).all()

    # export: parity within the default atol, for the raw and the optimized graph
    ok(CliRunner().invoke(main, ["export", "--model", str(pruned), "--output", str(onnx), "--quiet"]))
    report = json.loads((onnx / "export.json").read_text())
    assert set(report["parity"]) == {"model.onnx", "model_optimized.onnx"}
    assert all(0 <= d <= 1e-4 for d in report["parity"].values())

    # bench: PyTorch and ONNX Runtime time the model
    res = CliRunner().invoke(main, ["bench", "--model", str(pruned), "--onnx", str(onnx), "--batch-sizes", "2",
                                    "--seq-lens", "8", "--runs", "1", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    ok(res)
    assert {r["backend"] for r in json.loads((tmp_path / "b.json").read_text())} == {"pytorch", "ort-fp32"}

    # analyze: works while a head is left; with none, one line and nothing written
    res = CliRunner().invoke(main, ["analyze", "--model", str(pruned), "--output", str(tmp_path / "an"),
                                    "--num-sequences", "4", "--max-length", "12", "--quiet"])
    if sum(layout.heads_per_layer) == 0:
        want = (f"error: model {pruned} has no attention heads left (every head was removed); "
                "the topology of heads needs at least one")
        assert res.exit_code == 2 and res.stderr.strip().splitlines() == [want]
        assert not (tmp_path / "an").exists()
    else:
        ok(res)
        assert (tmp_path / "an" / "analysis.json").is_file()

    if kind == "bert":  # the classifier: evaluate the pruned model and its graph
        for m in (pruned, onnx):
            res = CliRunner().invoke(main, ["evaluate", "--model", str(m), "--task", "sst2", "--data-dir",
                                            str(models["glue"]), "--quiet"])
            ok(res)
            assert "sst2 dev" in res.output and "12 examples" in res.output


def test_a_recipe_may_remove_every_head_and_neuron(tmp_path, models):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {models['bert']}\ncalibration: {{num_sequences: 8, max_length: 12, min_length: 4}}\n"
                      f"scorers: [magnitude]\ntargets:\n  heads: {{ratio: 1.0}}\n"
                      f"  neurons: {{ratio: 1.0, min_per_layer: 0}}\nexport: {{}}\n")
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "o"), "--quiet"])
    ok(res)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["after"]["heads_per_layer"] == [0] * L and m["after"]["ffn_per_layer"] == [0] * L
    assert m["flops_kept_share"] == 0.0 and all(d <= 1e-4 for d in m["export"]["parity"].values())
    # re-pruning what is left: head scorers and budgets say plainly that nothing is left
    for body, message in (
        ("scorers: [redundancy]\ntargets:\n  heads: {ratio: 0.5}\n",
         "error: recipe field 'scorers[0]' (redundancy) scores attention heads, and the model has none left"),
        ("scorers: [magnitude]\ntargets:\n  budget: {flops: 0.5}\n",
         "error: recipe field 'targets.budget' has nothing to budget"),
    ):
        recipe.write_text(f"model: {tmp_path / 'o' / 'model'}\ncalibration: {{max_length: 12, min_length: 4}}\n{body}")
        res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "again")])
        assert res.exit_code == 2 and res.stderr.strip().splitlines()[0].startswith(message), res.output
        assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "again").exists()


def test_a_model_built_with_one_head(tmp_path):
    """Not pruned to one head: configured with one (hidden 32 = 1 x 32)."""
    pytest.importorskip("onnxruntime")
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path / "one"
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=1,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(folder)
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"format": "compressor.plan/1", "heads": {"0": [0]}, "neurons": {"1": list(range(16))}}))
    ok(CliRunner().invoke(main, ["prune", "--model", str(folder), "--plan", str(plan), "--output", str(tmp_path / "p")]))
    ok(CliRunner().invoke(main, ["export", "--model", str(tmp_path / "p"), "--output", str(tmp_path / "x"), "--quiet"]))
    ok(CliRunner().invoke(main, ["analyze", "--model", str(folder), "--output", str(tmp_path / "a"),
                                 "--num-sequences", "4", "--quiet"]))
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())
