"""Property tests of the CLI's promise, on tiny models, in-process (click's CliRunner):

    either exit 0 with complete outputs, or exit 2 with exactly one stderr line that
    starts with "error:", nothing written at the output path (nor beside it), and every
    input file byte-identical.

Hypothesis generates recipe documents (valid ones, and ones with one mutation: a wrong
type, NaN or an infinity, an out-of-range number, an unknown key, a missing key) and
argument vectors for the subcommands' numeric options (valid and invalid values).
Kept small (few examples, no deadline) so the file runs in well under a minute.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.cli import main
from tests.conftest import tiny_model, tiny_tokenizer

SETTINGS = {"deadline": None, "derandomize": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
_counter = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by every example: a tiny BERT with a classification head and a
    tokenizer, a plan, an SST-2 folder; and a scratch folder for outputs."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("invariants")
    model = root / "inputs" / "model"
    tiny_model("bert", cls=BertForSequenceClassification).save_pretrained(model)
    tiny_tokenizer(model).save_pretrained(model)
    sst = root / "inputs" / "glue" / "SST-2"
    sst.mkdir(parents=True)
    rows = "".join(f"the movie was {'good' if i % 2 else 'bad'} .\t{i % 2}\n" for i in range(16))
    for split in ("train", "dev"):
        (sst / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    (root / "inputs" / "plan.json").write_text('{"format": "compressor.plan/1", "heads": {"0": [1, 2]}, '
                                               '"neurons": {"2": [0, 5, 7]}}')
    (root / "out").mkdir()
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_invariant(res, world: Path, out: Path, inputs_before: dict, complete: list[str]) -> None:
    """The promise, for one invocation that wrote (or would have written) ``out``."""
    assert snapshot(world / "inputs") == inputs_before, "an input file changed"
    beside = sorted(p.name for p in out.parent.iterdir() if p != out)
    assert beside == [], f"files beside the output: {beside}"
    if res.exit_code == 0:
        missing = [c for c in complete if not (out / c).exists()] if out.suffix != ".json" else (
            [] if out.is_file() else [str(out)])
        assert not missing, (missing, res.output)
        return
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not out.exists(), "an error wrote the output"


def fresh_out(world: Path, name: str = "run") -> Path:
    """An empty parent per example, so 'nothing beside the output' is checkable."""
    parent = world / "out" / f"{next(_counter)}"
    parent.mkdir()
    return parent / name


# ---- recipes ----------------------------------------------------------------------------

BAD_VALUES = [float("nan"), float("inf"), float("-inf"), -1, 10**30, 1e300, "x", "", [], {}, True, None, [1, "a"],
              {"a": 1}, 0, 0.0, 1.5, 101]


def valid_recipe(model: Path) -> st.SearchStrategy[dict]:
    cal = st.fixed_dictionaries({
        "num_sequences": st.integers(4, 12), "batch_size": st.integers(1, 8),
        "min_length": st.integers(2, 6), "max_length": st.integers(6, 16),
    })
    heads = st.fixed_dictionaries({"ratio": st.floats(0, 1), "min_per_layer": st.integers(0, 4),
                                   "scope": st.sampled_from(["global", "per_layer"])})
    neurons = st.one_of(
        st.fixed_dictionaries({"percentile": st.floats(0, 100), "min_per_layer": st.integers(0, 37)}),
        st.fixed_dictionaries({"ratio": st.floats(0, 1), "scope": st.sampled_from(["global", "per_layer"])}),
    )
    budget = st.fixed_dictionaries({"flops": st.floats(0.05, 0.95), "candidates": st.just(1),
                                    "scope": st.sampled_from(["global", "per_layer"])})
    targets = st.one_of(
        st.fixed_dictionaries({"heads": heads.map(lambda h: {**h, "scorer": "magnitude"})}),
        st.fixed_dictionaries({"neurons": neurons.map(lambda n: {**n, "scorer": "persistence"})}),
        st.fixed_dictionaries({"budget": budget.map(lambda b: {**b, "scorer": "magnitude"})}),
    )
    return st.fixed_dictionaries({
        "model": st.just(str(model)), "seed": st.integers(0, 3), "calibration": cal,
        "scorers": st.just(["magnitude", "persistence"]), "targets": targets,
    })


def paths(doc, prefix=()):
    """Every (path, value) in a nested recipe document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,), v
            yield from paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,), v
            yield from paths(v, prefix + (i,))


def mutate(doc: dict, data) -> dict:
    doc = copy.deepcopy(doc)
    spots = [p for p, _ in paths(doc) if p != ("model",)]
    path = data.draw(st.sampled_from(spots), label="path")
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    how = data.draw(st.sampled_from(["value", "value", "delete", "unknown"]), label="how")
    if how == "value":
        parent[key] = data.draw(st.sampled_from(BAD_VALUES), label="value")
    elif how == "delete" and isinstance(parent, dict):
        del parent[key]
    elif isinstance(parent, dict):
        parent["no_such_" + str(key)] = 1
    return doc


def test_recipe_documents_keep_the_promise(world):
    model = world / "inputs" / "model"

    @settings(max_examples=14, **SETTINGS)
    @given(doc=valid_recipe(model), kind=st.integers(0, 3), data=st.data())
    def prop(doc, kind, data):
        mutated = kind > 0  # three in four documents carry one mutation
        if mutated:
            doc = mutate(doc, data)
        recipe = world / "inputs" / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(doc))
        before = snapshot(world / "inputs")
        out = fresh_out(world)
        res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(out), "--quiet"])
        check_invariant(res, world, out, before, ["model/config.json", "model/model.safetensors", "plan.json",
                                                  "metrics.json", "report.html", "scores"])
        if not mutated:  # a valid document must run
            assert res.exit_code == 0 or "budget" in doc["targets"], res.output

    prop()


# ---- argument vectors -------------------------------------------------------------------

VALUES = ["nan", "-nan", "inf", "-inf", "1e400", "-1", "0", "1", "2", "0.5", "3", "12", "1e-3", "abc", "",
          "99999999999999999999", "0x10"]

# the numeric options of each subcommand, and the outputs a success must leave
COMMANDS = {
    "prune": ([], ["config.json", "model.safetensors", "plan.json"]),
    "export": (["--atol"], ["model.onnx", "export.json"]),
    "finetune": (["--max-steps", "--lr", "--batch-size", "--max-length", "--train-examples", "--seed", "--alpha",
                  "--temperature", "--diversity"], ["model.safetensors", "finetune.json"]),
    "reconstruct": (["--num-sequences", "--max-length", "--batch-size", "--ridge", "--seed"],
                    ["model.safetensors", "reconstruct.json"]),
    "analyze": (["--num-sequences", "--max-length", "--batch-size", "--max-dimension", "--seed"],
                ["analysis.json", "report.html"]),
    "evaluate": (["--batch-size", "--max-length", "--limit"], []),
    "bench": (["--runs", "--warmup", "--batch-sizes", "--seq-lens", "--prompt-len", "--new-tokens"], []),
}


def base_args(cmd: str, world: Path, out: Path) -> list[str]:
    model = str(world / "inputs" / "model")
    glue = ["--task", "sst2", "--data-dir", str(world / "inputs" / "glue")]
    return {
        "prune": ["--model", model, "--plan", str(world / "inputs" / "plan.json"), "--output", str(out)],
        "export": ["--model", model, "--output", str(out), "--no-optimize"],
        "finetune": ["--model", model, *glue, "--output", str(out), "--teacher", model],
        "reconstruct": ["--model", model, "--reference", model, "--output", str(out)],
        "analyze": ["--model", model, "--output", str(out)],
        "evaluate": ["--model", model, *glue, "--json", str(out)],
        "bench": ["--model", model, "--json", str(out)],
    }[cmd]


# options whose valid values are kept small, so a success stays fast
CHEAP = {"--max-steps": "3", "--runs": "2", "--warmup": "1", "--num-sequences": "6", "--batch-sizes": "2",
         "--seq-lens": "8", "--max-length": "12"}


def test_argument_vectors_keep_the_promise(world):
    @settings(max_examples=30, **SETTINGS)
    @given(cmd=st.sampled_from(sorted(COMMANDS)), data=st.data())
    def prop(cmd, data):
        options, complete = COMMANDS[cmd]
        out = fresh_out(world, "out.json" if cmd in ("evaluate", "bench") else "run")
        args = [cmd, *base_args(cmd, world, out), "--quiet"] if cmd != "bench" else [cmd, *base_args(cmd, world, out)]
        # the cheap defaults first, then a few options with generated values (the last one given wins)
        args += [a for opt, v in CHEAP.items() if opt in options for a in (opt, v)]
        chosen = data.draw(st.lists(st.sampled_from(options), max_size=3, unique=True), label="options") if options else []
        for opt in chosen:
            args += [opt, data.draw(st.sampled_from(VALUES), label=opt)]
        before = snapshot(world / "inputs")
        res = CliRunner().invoke(main, args)
        check_invariant(res, world, out, before, complete)

    prop()


def test_generated_values_include_what_must_fail():
    # the pools hold NaN, both infinities, negatives, overflow, text and an empty string
    assert {"nan", "inf", "-inf", "1e400", "-1", "abc", ""} <= set(VALUES)
    assert any(isinstance(v, float) and math.isnan(v) for v in BAD_VALUES)
    assert {float("inf"), float("-inf"), 10**30, "x", None} <= {v for v in BAD_VALUES if not isinstance(v, (list, dict))}
