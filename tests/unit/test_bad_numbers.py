"""Numbers, labels and limits (issue 15, part B): NaN, infinities and out-of-range values
fail with one line naming the option or field and its range; bad labels name file and
line; a non-finite loss or weight never reaches a saved model; lengths beyond the model's
positions and floors above a layer's size are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.data.glue import DataError, load_glue
from compressor.errors import CompressorError, RecipeError
from compressor.recipe import parse_recipe
from tests.conftest import tiny_model, tiny_tokenizer


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots, with its bytes: what 'nothing written, inputs
    byte-identical' is checked against."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = p.read_bytes()
    return out


def one_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def cls_dir(tmp_path) -> Path:
    from transformers import BertForSequenceClassification

    folder = tmp_path / "tiny-cls"
    tiny_model("bert", cls=BertForSequenceClassification).save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.fixture
def sst2(tmp_path) -> Path:
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    rows = "".join(f"the movie was {'good' if i % 2 else 'bad'} .\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return root


# ---- command-line numbers -----------------------------------------------------------

@pytest.mark.parametrize("option, value, allowed", [
    ("--temperature", "inf", "0.001<=x<=100"),
    ("--temperature", "0", "0.001<=x<=100"),
    ("--alpha", "nan", "0<=x<=1"),
    ("--alpha", "1.5", "0<=x<=1"),
    ("--diversity", "inf", "x>=0"),
    ("--diversity", "-nan", "x>=0"),
    ("--lr", "nan", "0<=x<=1"),
    ("--epochs", "inf", "0<x<=1000"),
    ("--batch-size", "0", "1<=x<=65536"),
    ("--seed", "-1", "0<=x<=4294967295"),
    ("--max-steps", "1e3", "1<=x<=10000000"),
])
def test_finetune_numbers_are_one_line(tmp_path, cls_dir, sst2, option, value, allowed):
    before = snapshot(cls_dir, sst2)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["finetune", "--model", str(cls_dir), "--task", "sst2", "--data-dir", str(sst2),
                                    "--output", str(out), "--teacher", str(cls_dir), option, value])
    one_error(res, option, allowed, repr(value))
    assert not out.exists() and snapshot(cls_dir, sst2) == before


@pytest.mark.parametrize("args, needles", [
    (["export", "--atol", "nan"], ["--atol", "x>=0", "'nan'"]),
    (["export", "--atol", "-1"], ["--atol"]),
    (["reconstruct", "--reference", "default", "--ridge", "inf"], ["--ridge", "x>=0"]),
    (["analyze", "--num-sequences", "0"], ["--num-sequences", "1<=x<=1000000"]),
    (["analyze", "--max-dimension", "3"], ["--max-dimension", "0<=x<=2"]),
    (["bench", "--runs", "x"], ["--runs"]),
    (["bench", "--batch-sizes", "1,0"], ["--batch-sizes", "positive integers"]),
    (["evaluate", "--task", "sst2", "--max-length", "5000"], ["--max-length", "8<=x<=4096"]),
])
def test_other_numeric_options(tmp_path, tiny_bert_dir, args, needles):
    out = ["--output", str(tmp_path / "o")] if args[0] in ("export", "reconstruct", "analyze") else []
    res = CliRunner().invoke(main, [args[0], "--model", str(tiny_bert_dir), *out, *args[1:]])
    one_error(res, *needles)
    assert not (tmp_path / "o").exists()


# ---- recipe numbers -------------------------------------------------------------------

BASE = {"scorers": ["magnitude"], "targets": {"heads": {"ratio": 0.5}}}


@pytest.mark.parametrize("patch, message", [
    ({"targets": {"heads": {"ratio": float("nan")}}}, r"'targets.heads.ratio' must be a number in \[0, 1\]; got nan"),
    ({"targets": {"heads": {"ratio": ".inf"}}}, r"'targets.heads.ratio' must be a number in \[0, 1\]"),
    ({"seed": 10**400}, r"'seed' must be an integer in \[0, 4294967295\]; got 1000000000"),
    ({"seed": float("inf")}, r"'seed' must be an integer"),
    ({"calibration": {"num_sequences": 1e300}}, r"'calibration.num_sequences' must be an integer in \[1, 1000000\]"),
    ({"export": {"atol": float("nan")}}, r"'export.atol' must be a number >= 0; got nan"),
    ({"export": {"atol": "inf"}}, r"'export.atol' must be a number >= 0"),
    ({"reconstruct": {"ridge": float("-inf")}}, r"'reconstruct.ridge' must be a number >= 0; got -inf"),
    ({"task": {"name": "sst2"}, "finetune": {"recovery": {"distill": {"temperature": float("inf")}}}},
     r"'finetune.recovery.distill.temperature' must be a number in \[0.001, 100\]"),
    ({"task": {"name": "sst2"}, "finetune": {"recovery": {"diversity": float("nan")}}},
     r"'finetune.recovery.diversity' must be a number >= 0; got nan"),
    ({"task": {"name": "sst2"}, "finetune": {"base": {"epochs": 1e9}}}, r"'finetune.base.epochs' must be a number in \[0, 1000\]"),
    ({"scorers": ["magnitude"], "targets": {"budget": {"flops": float("nan")}}}, r"'targets.budget.flops' must be a number in \[0, 1\]"),
    ({"scorers": [{"name": "persistence", "params": {"radius": float("inf")}}], "targets": {"neurons": {"ratio": 0.5}}},
     r"'scorers\[0\].params.radius' must be a number >= 0; got inf"),
    ({"scorers": [{"name": "head_types", "params": {"prune_order": [1, "a"]}}]}, r"'scorers\[0\].params.prune_order' must order"),
])
def test_recipe_numbers_name_field_and_range(patch, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({**BASE, **patch})


def test_yaml_nan_and_inf_in_a_recipe_file(tmp_path, tiny_bert_dir):
    for text in (".nan", ".inf", "-.Inf", "nan", "1e999"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"model: {tiny_bert_dir}\nscorers: [magnitude]\ntargets:\n  heads: {{ratio: {text}}}\n")
        res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "o")])
        one_error(res, "'targets.heads.ratio' must be a number in [0, 1]")
        assert not (tmp_path / "o").exists()


# ---- labels ---------------------------------------------------------------------------

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def _stsb_row(i: int, score: str) -> str:
    return f"{i}\tmain\tf\t2012\t{i}\ts\ts\ta cat sits\ta cat sat\t{score}\n"


@pytest.mark.parametrize("label", ["nan", "inf", "-0.5", "5.01", "1e9", "high"])
def test_stsb_labels_finite_within_0_5(tmp_path, label):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    (folder / "dev.tsv").write_text(STSB_HEADER + _stsb_row(0, "3.2") + "\n" + _stsb_row(1, label))
    with pytest.raises(DataError, match=rf"dev.tsv line 4: label '{label}' in column 'score' is not a number in \[0, 5\]"):
        load_glue("stsb", str(tmp_path), "dev")
    (folder / "dev.tsv").write_text(STSB_HEADER + _stsb_row(0, "0") + _stsb_row(1, "5.0"))
    assert load_glue("stsb", str(tmp_path), "dev").labels.tolist() == [0.0, 5.0]


def test_blank_lines_count_as_an_editor_counts_them(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    # line 1 header, 2 ok, 3 blank, 4 blank, 5 bad
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n\n\nbad\t7\n")
    with pytest.raises(DataError, match=r"dev.tsv line 5: label '7'"):
        load_glue("sst2", str(tmp_path), "dev")
    # CoLA has no header: line 1 is data
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "dev.tsv").write_text("\ngj\t1\t\tfine .\n\ngj\t2\t\tbad .\n")
    with pytest.raises(DataError, match=r"dev.tsv line 4: label '2' in column 'label' is not one of task cola's labels"):
        load_glue("cola", str(tmp_path), "dev")


def test_finetune_on_a_nan_label_writes_nothing(tmp_path, cls_dir):
    root = tmp_path / "glue"
    (root / "STS-B").mkdir(parents=True)
    (root / "STS-B" / "train.tsv").write_text(STSB_HEADER + "".join(_stsb_row(i, "nan" if i == 3 else "2.5")
                                                                      for i in range(8)))
    res = CliRunner().invoke(main, ["finetune", "--model", str(cls_dir), "--task", "stsb", "--data-dir", str(root),
                                    "--output", str(tmp_path / "o"), "--max-steps", "1"])
    one_error(res, "train.tsv line 5: label 'nan'", "[0, 5]")
    assert not (tmp_path / "o").exists()


# ---- non-finite losses and weights ------------------------------------------------------

def _poisoned(folder: Path, cls_dir: Path) -> Path:
    """A copy of the classifier with one NaN weight."""
    from compressor.models import load_model

    model = load_model(str(cls_dir))
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(folder)  # transformers' own save: compressor's refuses NaN weights
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


def test_non_finite_loss_stops_finetuning_and_saves_nothing(tmp_path, cls_dir, sst2):
    bad = _poisoned(tmp_path / "nan-model", cls_dir)
    before = snapshot(bad, sst2)
    res = CliRunner().invoke(main, ["finetune", "--model", str(bad), "--task", "sst2", "--data-dir", str(sst2),
                                    "--output", str(tmp_path / "o"), "--max-steps", "3", "--batch-size", "4", "--quiet"])
    one_error(res, "fine-tuning stopped at step 1 of 3: the loss is nan (not finite); nothing was saved")
    assert not (tmp_path / "o").exists() and snapshot(bad, sst2) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_every_save_site_refuses_non_finite_weights(tmp_path, cls_dir):
    from compressor.finite import check_finite, check_loss
    from compressor.models import load_model, save_model

    bad = _poisoned(tmp_path / "nan-model", cls_dir)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "compressor.plan/1", "heads": {"0": [1]}}))
    res = CliRunner().invoke(main, ["prune", "--model", str(bad), "--plan", str(plan), "--output", str(tmp_path / "p")])
    one_error(res, "the pruned model has NaN or infinite weights in 1 tensor(s) (first: bert.encoder.layer.1.output.dense.weight)")
    assert not (tmp_path / "p").exists()
    res = CliRunner().invoke(main, ["export", "--model", str(bad), "--output", str(tmp_path / "x")])
    one_error(res, "the model to export has NaN or infinite weights")
    assert not (tmp_path / "x").exists()
    with pytest.raises(CompressorError, match="the model to save has NaN"):
        save_model(load_model(str(bad)), tmp_path / "api")
    assert not (tmp_path / "api").exists()
    check_finite(load_model(str(cls_dir)))  # a finite model passes
    check_loss(0.5, 1, 1)
    with pytest.raises(CompressorError, match="the loss is inf"):
        check_loss(float("inf"), 2, 5)


# ---- limits -----------------------------------------------------------------------------

def test_max_length_beyond_the_positions(tmp_path, cls_dir, sst2, tiny_bert_dir):
    # the tiny models have 64 positions
    res = CliRunner().invoke(main, ["evaluate", "--model", str(cls_dir), "--task", "sst2", "--data-dir", str(sst2),
                                    "--max-length", "100"])
    one_error(res, "--max-length is 100", "at most 64 tokens", "max_position_embeddings 64")
    res = CliRunner().invoke(main, ["evaluate", "--model", str(cls_dir), "--task", "sst2", "--data-dir", str(sst2),
                                    "--quiet"])  # unset: 128 would not fit, so 64
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["analyze", "--model", str(tiny_bert_dir), "--output", str(tmp_path / "a"),
                                    "--max-length", "65"])
    one_error(res, "max_length (--max-length) is 65", "at most 64")
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(main, ["bench", "--model", str(tiny_bert_dir), "--seq-lens", "8,128"])
    one_error(res, "the longest of --seq-lens is 128", "at most 64")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_bert_dir}\ncalibration: {{max_length: 100}}\nscorers: [persistence]\n"
                      f"targets:\n  neurons: {{ratio: 0.5}}\n")
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "o")])
    one_error(res, "recipe field 'calibration.max_length' is 100", "at most 64", "max_position_embeddings 64")
    assert not (tmp_path / "o").exists()


def test_roberta_positions_start_after_padding():
    from compressor.arch.base import check_max_length, max_positions
    from tests.conftest import tiny_config

    cfg = tiny_config("roberta")  # 70 rows, padding_idx 1: 68 usable
    assert max_positions(cfg) == 68 and check_max_length(cfg, None, "x") == 68 and check_max_length(cfg, 68, "x") == 68
    with pytest.raises(CompressorError, match="x is 69, but the model takes at most 68 tokens"):
        check_max_length(cfg, 69, "x")
    assert max_positions(tiny_config("gpt2")) == 64


@pytest.mark.parametrize("targets, message", [
    ({"heads": {"ratio": 0.5, "min_per_layer": 5}}, "'targets.heads.min_per_layer' is 5, above layer 0's 4 heads; this model allows at most 4"),
    ({"neurons": {"ratio": 0.5, "min_per_layer": 38}}, "'targets.neurons.min_per_layer' is 38, above layer 0's 37 neurons"),
    ({"budget": {"flops": 0.5, "min_per_layer": 5}}, "targets.budget.min_heads_per_layer (or min_per_layer)' is 5"),
])
def test_min_per_layer_above_a_layer(tmp_path, tiny_bert_dir, targets, message):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_bert_dir), "scorers": ["magnitude"], "targets": targets,
                                      "calibration": {"max_length": 12, "min_length": 4}}))
    before = snapshot(tiny_bert_dir)
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "o")])
    one_error(res, message)
    assert not (tmp_path / "o").exists() and snapshot(tiny_bert_dir) == before
