"""CLI: a run end to end on a tiny model, and every bad input = one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor import load_model
from compressor.arch import adapter_for
from compressor.cli import main
from tests.conftest import batch, outputs


def write_recipe(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(body)
    return p


RECIPE = """
model: {model}
calibration: {{num_sequences: 24, batch_size: 8, min_length: 4, max_length: 12}}
scorers: [persistence, magnitude]
targets:
  heads: {{scorer: magnitude, ratio: 0.5, min_per_layer: 1}}
  neurons: {{scorer: persistence, percentile: 50}}
"""


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_compress_recipe_end_to_end(tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    res = run(["--recipe", str(write_recipe(tmp_path, RECIPE.format(model=tiny_bert_dir))), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [".compressor-output", "metrics.json", "model", "plan.json",
                                                     "report.html", "scores"]
    m = json.loads((out / "metrics.json").read_text())
    assert sum(m["after"]["heads_per_layer"]) == 6 and min(m["after"]["heads_per_layer"]) >= 1
    assert m["after"]["ffn_per_layer"] == [19, 19, 19]  # of 37, the 18 strictly below the median go
    assert m["after"]["parameters"] < m["before"]["parameters"]
    assert 0 < m["flops_kept_share"] < 1
    assert (out / "scores" / "persistence.neurons.json").is_file()
    assert "<table>" in (out / "report.html").read_text()
    # the saved model reloads to the recorded shape, with a tokenizer beside it
    model = load_model(str(out / "model"))
    assert list(adapter_for(model).layout().ffn_per_layer) == m["after"]["ffn_per_layer"]
    assert (out / "model" / "tokenizer.json").is_file()  # what both transformers majors save
    # the plan replays to an identical model
    res = run(["prune", "--model", str(tiny_bert_dir), "--plan", str(out / "plan.json"), "--output", str(tmp_path / "replay")])
    assert res.exit_code == 0, res.output
    replay = load_model(str(tmp_path / "replay"))
    ids, mask = batch("bert")
    assert torch.equal(outputs(replay, ids, mask), outputs(model, ids, mask))


def test_input_model_is_never_modified(tmp_path, tiny_bert_dir):
    before = {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()}
    res = run(["--recipe", str(write_recipe(tmp_path, RECIPE.format(model=tiny_bert_dir))), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0
    assert {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()} == before
    res = run(["--recipe", str(tmp_path / "r.yaml"), "--output", str(tiny_bert_dir), "--overwrite", "--quiet"])
    assert res.exit_code == 2 and "overlaps the input model" in res.output
    assert {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()} == before


def bad_cases(tmp_path: Path, model: Path):
    good = write_recipe(tmp_path, RECIPE.format(model=model))
    (tmp_path / "syntax.yaml").write_text("scorers: [magnitude\n")
    (tmp_path / "scorer.yaml").write_text(RECIPE.format(model=model).replace("magnitude]", "magic]"))
    (tmp_path / "ratio.yaml").write_text(RECIPE.format(model=model).replace("ratio: 0.5", "ratio: 2"))
    (tmp_path / "nomodel.yaml").write_text(RECIPE.format(model=tmp_path / "missing-model"))
    (tmp_path / "hub.yaml").write_text(RECIPE.format(model="someone/no-such-model"))
    (tmp_path / "plan.json").write_text(json.dumps({"format": "compressor.plan/1", "heads": {"0": [9]}}))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    return [
        (["--recipe", str(tmp_path / "nope.yaml")], "recipe file not found"),
        (["--recipe", str(tmp_path / "syntax.yaml")], "not valid YAML at line 2"),
        (["--recipe", str(tmp_path / "scorer.yaml")], "unknown scorer 'magic'; available: fisher, head_types, magnitude, persistence, random, redundancy, sieve_roles"),
        (["--recipe", str(tmp_path / "ratio.yaml")], "'targets.heads.ratio' must be a number in [0, 1]; got 2"),
        (["--recipe", str(tmp_path / "nomodel.yaml")], "model path does not exist"),
        (["--recipe", str(tmp_path / "hub.yaml")], "could not load model 'someone/no-such-model': not a local folder and HF_HUB_OFFLINE is set"),
        (["--recipe", str(good), "--output", str(full)], "is not empty; pass --overwrite"),
        (["prune", "--model", str(model), "--plan", str(tmp_path / "plan.json")], "removes head 9 of layer 0, but layer 0 has 4 heads"),
    ]


@pytest.mark.smoke
def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, tiny_bert_dir):
    work = tmp_path / "w"
    work.mkdir()
    for args, message in bad_cases(work, tiny_bert_dir):
        before = sorted(p.name for p in work.rglob("*"))
        out_args = [] if "--output" in args else ["--output", str(work / "out")]
        res = CliRunner().invoke(main, args + out_args + (["--quiet"] if args[0] == "--recipe" else []))
        assert res.exit_code == 2, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, res.output)
        assert sorted(p.name for p in work.rglob("*")) == before, args
    assert (work / "full" / "keep.txt").read_text() == "precious"


def test_unsupported_architecture(tmp_path):
    from transformers import AlbertConfig, AlbertModel

    folder = tmp_path / "albert"
    AlbertModel(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=37)).save_pretrained(folder)
    res = CliRunner().invoke(main, ["prune", "--model", str(folder), "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    (tmp_path / "p.json").write_text(json.dumps({"format": "compressor.plan/1"}))
    res = CliRunner().invoke(main, ["prune", "--model", str(folder), "--plan", str(tmp_path / "p.json"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and ("unsupported architecture 'albert'; supported: bert, distilbert, electra, gpt2, llama, mistral, "
                                   "modernbert, phi3, qwen2, qwen3, roberta") in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.smoke
def test_gpt2_recipe(tmp_path, tiny_gpt2_dir):
    body = RECIPE.format(model=tiny_gpt2_dir)
    res = run(["--recipe", str(write_recipe(tmp_path, body)), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["before"]["architecture"] == "gpt2" and sum(m["after"]["heads_per_layer"]) == 6


def test_help_everywhere():
    for args in (["--help"], ["prune", "--help"]):
        res = run(args)
        assert res.exit_code == 0 and "Usage:" in res.output


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "compress"
    proc = subprocess.run([str(exe), "--recipe", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: recipe file not found")


def test_calibration_text_option(tmp_path, tiny_bert_dir):
    text = tmp_path / "t.txt"
    text.write_text("the movie was good .\na bad plot\n" * 10)
    recipe = write_recipe(tmp_path, RECIPE.format(model=tiny_bert_dir))
    res = run(["--recipe", str(recipe), "--calibration-text", str(text), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["source"]["calibration"]["source"] == "text_file" and plan["source"]["calibration"]["path"] == str(text)
    res = run(["--recipe", str(recipe), "--calibration-text", str(tmp_path / "none.txt"), "--output", str(tmp_path / "p")])
    assert res.exit_code == 2 and "calibration text file not found" in res.output and not (tmp_path / "p").exists()
