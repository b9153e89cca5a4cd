from __future__ import annotations

import pytest

from compressor.errors import RecipeError
from compressor.recipe import load_recipe, parse_recipe

BASE = {"scorers": [{"name": "magnitude"}], "targets": {"heads": {"ratio": 0.5}}}


def test_valid_recipe_fills_defaults():
    r = parse_recipe(BASE)
    assert r.model == "default" and r.heads.scorer == "magnitude" and r.heads.scope == "global"
    assert r.calibration.source == "random_tokens" and r.neurons is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({**BASE, "modle": "x"}, r"unknown recipe field 'modle'; allowed: calibration, description, evaluate, "),
        ({**BASE, "calibration": {"sorce": "glue"}}, r"unknown recipe field 'calibration.sorce'; allowed: batch_size"),
        ({**BASE, "targets": {"heads": {"ratio": 1.5}}}, r"'targets.heads.ratio' must be a number in \[0, 1\]; got 1.5"),
        ({**BASE, "targets": {"heads": {"ratio": "half"}}}, r"'targets.heads.ratio' must be a number"),
        ({**BASE, "targets": {"heads": {"ratio": 0.5, "scope": "layer"}}}, r"must be one of global, per_layer; got 'layer'"),
        ({**BASE, "scorers": [{"name": "magic"}]}, r"unknown scorer 'magic'; available: fisher, head_types, magnitude, persistence, random, redundancy, sieve_roles"),
        ({**BASE, "scorers": [{"name": "persistence", "params": {"statistic": "max"}}]},
         r"'scorers\[0\].params.statistic' must be one of max_death"),
        ({**BASE, "calibration": {"source": "wiki"}}, r"'calibration.source' must be one of random_tokens, text_file, glue"),
        ({**BASE, "calibration": {"batch_size": 0}}, r"'calibration.batch_size' must be an integer in \[1, 65536\]; got 0"),
        ({**BASE, "calibration": {"min_length": 50, "max_length": 20}}, r"min_length' must be <= calibration.max_length"),
        ({**BASE, "calibration": {"source": "text_file"}}, r"'calibration.path' is required"),
        ({"scorers": ["persistence"], "targets": {"neurons": {"ratio": 0.5, "percentile": 50}}}, r"exactly one of ratio"),
        ({"scorers": ["persistence"], "targets": {"heads": {"ratio": 0.5}}}, r"scorers that score heads: none"),
        ({**BASE, "evaluate": {}}, r"recipe field 'evaluate' needs a 'task' mapping"),
        ({**BASE, "task": {"name": "sst3"}}, r"'task.name' must be one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; got 'sst3'"),
        ({**BASE, "task": {"data_dir": "x"}}, r"recipe field 'task.name' is required"),
        ({**BASE, "task": {"name": "sst2"}, "finetune": {"recovery": {"max_steps": 5, "epochs": 1}}},
         r"'finetune.recovery' sets both max_steps and epochs"),
        ({**BASE, "task": {"name": "sst2"}, "finetune": {"base": {"distill": {}}}},
         r"'finetune.base.distill' is only valid in finetune.recovery"),
        ({**BASE, "task": {"name": "sst2"}, "finetune": {"recovery": {"distill": {"alpha": 2}}}},
         r"'finetune.recovery.distill.alpha' must be a number in \[0, 1\]; got 2"),
        ({**BASE, "task": {"name": "sst2"}, "finetune": {"after": {}}}, r"unknown recipe field 'finetune.after'; allowed: base, recovery"),
        ({**BASE, "task": {"name": "sst2"}, "evaluate": {"split": "test"}}, r"'evaluate.split' must be one of dev, train"),
        ({**BASE, "export": {"format": "onnx"}}, r"unknown recipe field 'export.format'; allowed: atol, cache, opset, optimize, quantize"),
        ({**BASE, "export": {"quantize": "int4"}}, r"'export.quantize' must be one of int8; got 'int4'"),
        ({**BASE, "seed": -1}, r"'seed' must be an integer in \[0, 4294967295\]; got -1"),
        ([1, 2], r"recipe must be a mapping"),
    ],
)
def test_bad_recipes_name_the_field(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_task_stages_parse():
    r = parse_recipe({**BASE, "seed": 4, "task": {"name": "SST-2", "data_dir": "d"},
                      "calibration": {"source": "glue"},
                      "finetune": {"base": {"epochs": 1}, "recovery": {"max_steps": 9, "distill": {"temperature": 3}}},
                      "evaluate": {"onnx": False}})
    assert r.task.name == "sst2" and r.calibration.task == "sst2" and r.calibration.data_dir == "d"
    assert r.finetune_base.epochs == 1 and r.finetune_base.distill is None and r.finetune_base.seed == 4
    assert r.finetune_recovery.max_steps == 9 and r.finetune_recovery.distill.temperature == 3.0
    assert r.finetune_recovery.distill.alpha == 0.5 and r.evaluate.split == "dev" and not r.evaluate.onnx


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: default\nscorers:\n  - name: [magnitude\n")
    with pytest.raises(RecipeError, match=r"not valid YAML at line 4"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["obce-30", "obce-50", "obce-70", "magnitude-heads-50", "random-heads-50", "redundancy-zero-shot-50", "head-types", "roles", "sst2-finetune-prune"])
def test_shipped_recipes_are_valid(name):
    from pathlib import Path

    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / f"{name}.yaml")
    assert r.name == name
    if name.startswith("obce"):
        assert r.neurons.percentile == float(name.split("-")[1]) and r.neurons.scorer == "persistence"
    if name == "sst2-finetune-prune":  # YAML 1.1 reads 1e-4 as a string; it must still be a number
        assert r.finetune_base.lr == 1e-4 and r.finetune_recovery.lr == 5e-5
        assert r.calibration.task == "sst2" and r.calibration.data_dir == "../shared/data/glue"


@pytest.mark.parametrize(
    "calibration, source",
    [({}, "random_tokens"), ({"path": "x.txt"}, "text_file"), ({"task": "sst2"}, "glue"),
     ({"source": "random_tokens", "path": "x.txt"}, "random_tokens")],
)
def test_calibration_source_follows_what_is_given(calibration, source):
    assert parse_recipe({**BASE, "calibration": calibration}).calibration.source == source


@pytest.mark.parametrize(
    "data, message",
    [
        ({**BASE, "model": ""}, r"'model' must be a non-empty string; got ''"),
        ({**BASE, "export": {"optimize": "yes"}}, r"'export.optimize' must be true or false; got 'yes'"),
        ({**BASE, "scorers": {"name": "magnitude"}}, r"'scorers' must be a list"),
        ({**BASE, "calibration": [1]}, r"'calibration' must be a mapping"),
    ],
)
def test_type_errors_name_the_field(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)
