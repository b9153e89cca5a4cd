"""Recipes: YAML files that say what to compress and how. Strictly validated.

Example (recipes/obce-50.yaml):

    model: default
    seed: 0
    calibration: {source: random_tokens, num_sequences: 256}
    scorers:
      - name: persistence
    targets:
      neurons: {scorer: persistence, percentile: 50}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .schema import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_SEQUENCES,
    MAX_STEPS,
    MAX_TEMPERATURE,
    SEED_MAX,
    Field,
    check_mapping,
)

CALIBRATION_SOURCES = ("random_tokens", "text_file", "glue")
# Tasks scored by perplexity on a plain-text file, for causal language models
# (compressor/evaluate/perplexity.py); every other task name is a GLUE task.
PERPLEXITY_TASKS = ("wikitext",)


def is_perplexity_task(name: str | None) -> bool:
    return name is not None and name.lower() in PERPLEXITY_TASKS


TOP = {
    "model": Field("str", "default", help="'default' (embedded MiniLM), a local folder or a hub id"),
    "seed": Field("int", 0, lo=0, hi=SEED_MAX),
    "calibration": Field("mapping", None, nullable=True),
    "scorers": Field("list", None, nullable=True),
    "targets": Field("mapping", None, nullable=True),
    "output": Field("str", None, nullable=True),
    "export": Field("mapping", None, nullable=True),
    "task": Field("mapping", None, nullable=True, help="GLUE task for finetune/evaluate (and glue calibration)"),
    "finetune": Field("mapping", None, nullable=True),
    "evaluate": Field("mapping", None, nullable=True),
    "description": Field("str", None, nullable=True),
    "reconstruct": Field("mapping", None, nullable=True, help="after surgery, re-fit the output projections"),
}

CALIBRATION = {
    # unset: text_file when a path is given, glue when a task is, random_tokens otherwise
    "source": Field("choice", None, choices=CALIBRATION_SOURCES, nullable=True),
    "num_sequences": Field("int", 256, lo=1, hi=MAX_SEQUENCES),
    "batch_size": Field("int", 32, lo=1, hi=MAX_BATCH),
    "min_length": Field("int", 16, lo=2, hi=4096),
    "max_length": Field("int", None, lo=2, hi=4096, nullable=True,
                        help="default 128, or the model's positions when fewer"),
    "path": Field("str", None, nullable=True, help="text_file: one text per line"),
    "task": Field("str", None, nullable=True, help="glue: task name"),
    "data_dir": Field("str", None, nullable=True, help="glue: folder in the GLUE TSV layout"),
    "split": Field("choice", "train", choices=("train", "dev", "validation", "test")),
    "skip_headings": Field("bool", False, help="text_file: leave out WikiText section headings (' = Title = ' lines)"),
}

HEAD_TARGET = {
    "scorer": Field("str", None, nullable=True),
    "ratio": Field("float", lo=0.0, hi=1.0, help="share of heads removed"),
    "scope": Field("choice", "global", choices=("global", "per_layer")),
    "min_per_layer": Field("int", 0, lo=0),
}

NEURON_TARGET = {
    "scorer": Field("str", None, nullable=True),
    "ratio": Field("float", None, lo=0.0, hi=1.0, nullable=True, help="share of neurons removed"),
    "percentile": Field("float", None, lo=0.0, hi=100.0, nullable=True, help="remove scores below it"),
    "scope": Field("choice", "per_layer", choices=("per_layer", "global")),
    "min_per_layer": Field("int", 1, lo=0),
}

BUDGET_TARGET = {
    "flops": Field("float", None, lo=0.0, hi=1.0, nullable=True, help="share of encoder FLOPs per token kept, 0 < flops < 1"),
    "params": Field("float", None, lo=0.0, hi=1.0, nullable=True, help="share of head/neuron parameters kept, 0 < params < 1"),
    "scorer": Field("str", None, nullable=True, help="scores both kinds (unless head_scorer/neuron_scorer say otherwise)"),
    "head_scorer": Field("str", None, nullable=True),
    "neuron_scorer": Field("str", None, nullable=True),
    "min_per_layer": Field("int", 0, lo=0, help="heads and neurons kept in every layer (0: whole blocks may go)"),
    "min_heads_per_layer": Field("int", None, lo=0, nullable=True, help="overrides min_per_layer for heads"),
    "min_neurons_per_layer": Field("int", None, lo=0, nullable=True, help="overrides min_per_layer for neurons"),
    "split": Field("choice", "auto", choices=("auto", "importance", "measure"),
                   help="auto: importance for one-scale scorers (fisher), else measure on calibration data"),
    "scope": Field("choice", "search", choices=("search", "global", "per_layer", "allocated"),
                   help="measure: rank a kind's units model-wide or by share of each layer, or try both "
                        "(search); allocated: split per layer from measured layer sensitivities"),
    "candidates": Field("int", 5, lo=1, hi=50, help="measure: head/neuron splits tried per scope"),
    "rearrange": Field("bool", True, help="fisher: re-choose units within each layer with the layer's Fisher matrix"),
}

EXPORT = {
    "optimize": Field("bool", True, help="ONNX Runtime transformer fusions"),
    "quantize": Field("choice", None, choices=("int8",), nullable=True),
    "atol": Field("float", 1e-4, lo=0.0, help="max |onnx - torch| allowed for fp32 graphs"),
    "opset": Field("int", None, lo=14, hi=23, nullable=True),
    "cache": Field("bool", None, nullable=True,
                   help="key/value cache inputs and outputs; unset: with one for a decoder with its LM head"),
}

TASK = {
    "name": Field("str", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"),
    "data_dir": Field("str", None, nullable=True, help="folder in the GLUE TSV layout; the hub when unset"),
    "max_length": Field("int", None, lo=8, hi=4096, nullable=True,
                        help="tokens per example; default 128, or the model's positions when fewer"),
    "train_examples": Field("int", None, lo=1, nullable=True, help="fine-tune on a seeded subset of train"),
    "eval_examples": Field("int", None, lo=1, nullable=True, help="evaluate on the first N of a seeded shuffle"),
    # task wikitext (perplexity of a causal LM); max_length is then the window length
    # (unset: the model's positions, at most 1024)
    "data_file": Field("str", None, nullable=True, help="wikitext: the plain-text file scored (wikitext-2/test.txt)"),
    "stride": Field("int", None, lo=1, hi=4096, nullable=True,
                    help="wikitext: tokens between window starts (default max_length // 2)"),
    "eval_tokens": Field("int", None, lo=2, nullable=True, help="wikitext: score only the first N tokens of the file"),
}
# TASK fields that belong to one kind of task only
GLUE_ONLY = ("data_dir", "train_examples", "eval_examples")
PERPLEXITY_ONLY = ("data_file", "stride", "eval_tokens")

FINETUNE_RUN = {
    "max_steps": Field("int", None, lo=1, hi=MAX_STEPS, nullable=True),
    "epochs": Field("float", None, lo=0.0, hi=MAX_EPOCHS, nullable=True, help="used when max_steps is unset (default 1)"),
    "lr": Field("float", 5e-5, lo=0.0, hi=1.0),
    "batch_size": Field("int", 32, lo=1, hi=MAX_BATCH),
    "weight_decay": Field("float", 0.01, lo=0.0),
    "warmup_ratio": Field("float", 0.06, lo=0.0, hi=1.0),
    "seed": Field("int", None, lo=0, hi=SEED_MAX, nullable=True, help="default: the recipe's seed"),
    "distill": Field("mapping", None, nullable=True, help="recovery only: logit distillation from the unpruned model"),
    "diversity": Field("float", 0.0, lo=0.0, help="weight of the within-layer head-diversity reward (sqrt-JS metric)"),
}

DISTILL = {
    "alpha": Field("float", 0.5, lo=0.0, hi=1.0, help="weight of the distillation loss; 1 - alpha for the labels"),
    "temperature": Field("float", 2.0, lo=1e-3, hi=MAX_TEMPERATURE),
}

FINETUNE = {
    "base": Field("mapping", None, nullable=True, help="fine-tune the unpruned model before scoring"),
    "recovery": Field("mapping", None, nullable=True, help="fine-tune the pruned model"),
}

EVALUATE = {
    "split": Field("choice", "dev", choices=("dev", "train", "dev_matched", "dev_mismatched")),
    "batch_size": Field("int", None, lo=1, hi=MAX_BATCH, nullable=True,
                        help="default 64 examples (GLUE) or 4 windows (wikitext)"),
    "original": Field("bool", True, help="also score the unpruned model, for the comparison"),
    "onnx": Field("bool", True, help="also score the exported ONNX graphs (needs export)"),
    "latency": Field("bool", True, help="time the pruned model against the original (PyTorch, batch 8 x 128)"),
}

RECONSTRUCT_KINDS = ("both", "attention", "ffn")

RECONSTRUCT = {
    "ridge": Field("float", 0.1, lo=0.0,
                   help="pull toward the pruned weights, relative to the mean diagonal of the inputs' Gram matrix"),
    "num_sequences": Field("int", None, lo=1, hi=MAX_SEQUENCES, nullable=True,
                           help="fit on this many calibration sequences (default: all of calibration)"),
    "kinds": Field("choice", "both", choices=RECONSTRUCT_KINDS, help="which output projections are re-fit"),
}

SCORER_ENTRY = {"name": Field("str"), "params": Field("mapping", None, nullable=True)}


@dataclass(frozen=True)
class CalibrationConfig:
    source: str = "random_tokens"
    num_sequences: int = 256
    batch_size: int = 32
    min_length: int = 16
    max_length: int | None = 128  # None: 128, or the model's positions when fewer (resolved on load)
    path: str | None = None
    task: str | None = None
    data_dir: str | None = None
    split: str = "train"
    skip_headings: bool = False  # text_file: leave out WikiText's " = Heading = " lines


@dataclass(frozen=True)
class ScorerConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()  # params the recipe set explicitly


@dataclass(frozen=True)
class HeadTarget:
    ratio: float
    scorer: str | None = None
    scope: str = "global"
    min_per_layer: int = 0


@dataclass(frozen=True)
class NeuronTarget:
    scorer: str | None = None
    ratio: float | None = None
    percentile: float | None = None
    scope: str = "per_layer"
    min_per_layer: int = 1


@dataclass(frozen=True)
class BudgetTarget:
    """Keep at most ``share`` of encoder FLOPs per token (kind flops) or of the parameters
    heads and neurons own (kind params), deciding across both kinds and all layers."""

    kind: str  # "flops" | "params"
    share: float
    head_scorer: str
    neuron_scorer: str
    min_heads_per_layer: int = 0
    min_neurons_per_layer: int = 0
    split: str = "measure"  # resolved: "importance" | "measure"
    scope: str = "search"
    candidates: int = 5
    rearrange: bool = True


@dataclass(frozen=True)
class ExportConfig:
    optimize: bool = True
    quantize: str | None = None
    atol: float = 1e-4
    opset: int | None = None
    cache: bool | None = None  # None: a key/value cache for a decoder with its LM head; True elsewhere is an error


@dataclass(frozen=True)
class TaskConfig:
    name: str
    data_dir: str | None = None
    max_length: int | None = None  # None: 128, or the model's positions when fewer (resolved on load)
    train_examples: int | None = None
    eval_examples: int | None = None
    data_file: str | None = None  # wikitext: the text file scored
    stride: int | None = None  # wikitext: None: max_length // 2
    eval_tokens: int | None = None  # wikitext: the first N tokens only

    @property
    def perplexity(self) -> bool:
        """Scored by perplexity on a text file (a causal LM), not by a GLUE metric."""
        return is_perplexity_task(self.name)


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    distill: DistillConfig | None = None
    # loss -= diversity * mean sqrt-JS distance between heads of the same layer
    diversity: float = 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "dev"
    batch_size: int = 64
    original: bool = True
    onnx: bool = True
    latency: bool = True


@dataclass(frozen=True)
class ReconstructConfig:
    ridge: float = 0.1
    num_sequences: int | None = None
    kinds: str = "both"

    @property
    def sublayers(self) -> tuple[str, ...]:
        return ("attention", "ffn") if self.kinds == "both" else (self.kinds,)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str = "default"
    seed: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    scorers: tuple[ScorerConfig, ...] = ()
    heads: HeadTarget | None = None
    neurons: NeuronTarget | None = None
    budget: BudgetTarget | None = None
    output: str | None = None
    description: str | None = None
    export: ExportConfig | None = None
    task: TaskConfig | None = None
    finetune_base: FinetuneConfig | None = None
    finetune_recovery: FinetuneConfig | None = None
    evaluate: EvaluateConfig | None = None
    reconstruct: ReconstructConfig | None = None


def _check_task(data: Any) -> TaskConfig:
    from .data.glue import GLUE_TASKS

    d = check_mapping(data, TASK, "task")
    key = d["name"].lower().replace("-", "")
    if is_perplexity_task(key):
        return _check_perplexity_task(d, key)
    if key not in GLUE_TASKS:
        raise RecipeError(f"recipe field 'task.name' must be one of {', '.join(GLUE_TASKS)}; got {d['name']!r} "
                          f"(or {', '.join(PERPLEXITY_TASKS)}: perplexity of a causal LM on a text file)")
    given = [f for f in PERPLEXITY_ONLY if d[f] is not None]
    if given:
        raise RecipeError(f"recipe field 'task.{given[0]}' applies to task {PERPLEXITY_TASKS[0]} (perplexity); "
                          f"task {key} is a GLUE task")
    return TaskConfig(**{**d, "name": key})


def _check_perplexity_task(d: dict, key: str) -> TaskConfig:
    given = [f for f in GLUE_ONLY if d[f] is not None]
    if given:
        raise RecipeError(f"recipe field 'task.{given[0]}' applies to GLUE tasks; task {key} reads one text "
                          f"file (task.data_file)")
    if d["data_file"] is None:
        raise RecipeError(f"recipe field 'task.data_file' is required for task {key}: the plain-text file whose "
                          f"perplexity is measured (e.g. wikitext-2/test.txt)")
    if d["stride"] is not None and d["max_length"] is not None and d["stride"] > d["max_length"]:
        raise RecipeError(f"recipe field 'task.stride' is {d['stride']}, above task.max_length ({d['max_length']}); "
                          f"use 1..{d['max_length']}")
    return TaskConfig(**{**d, "name": key})


def _check_finetune_run(data: Any, path: str, seed: int, distill_ok: bool) -> FinetuneConfig:
    d = check_mapping(data, FINETUNE_RUN, path)
    if d["max_steps"] is not None and d["epochs"] is not None:
        raise RecipeError(f"recipe field '{path}' sets both max_steps and epochs; set one")
    if d["epochs"] is not None and d["epochs"] <= 0:
        raise RecipeError(f"recipe field '{path}.epochs' must be > 0; got {d['epochs']}")
    if d["distill"] is not None:
        if not distill_ok:
            raise RecipeError(f"recipe field '{path}.distill' is only valid in finetune.recovery: "
                              f"the teacher is the unpruned model")
        d["distill"] = DistillConfig(**check_mapping(d["distill"], DISTILL, f"{path}.distill"))
    if d["seed"] is None:
        d["seed"] = seed
    return FinetuneConfig(**d)


def _check_calibration(data: Any) -> CalibrationConfig:
    d = check_mapping(data, CALIBRATION, "calibration")
    if d["source"] is None:
        d["source"] = "text_file" if d["path"] else "glue" if d["task"] else "random_tokens"
    c = CalibrationConfig(**d)
    if c.max_length is not None and c.min_length > c.max_length:
        raise RecipeError(
            f"recipe field 'calibration.min_length' must be <= calibration.max_length ({c.max_length}); got {c.min_length}"
        )
    if c.source == "text_file" and not c.path:
        raise RecipeError("recipe field 'calibration.path' is required when calibration.source is text_file")
    if c.skip_headings and c.source != "text_file":
        raise RecipeError(f"recipe field 'calibration.skip_headings' applies to calibration.source text_file; "
                          f"the source is {c.source}")
    if c.source == "glue" and not c.task:
        raise RecipeError("recipe field 'calibration.task' is required when calibration.source is glue")
    return c


def _check_evaluate(data: Any, task: TaskConfig | None) -> EvaluateConfig:
    d = check_mapping(data, EVALUATE, "evaluate")
    if task is not None and task.perplexity and "split" in data:
        raise RecipeError(f"recipe field 'evaluate.split' applies to GLUE tasks; task {task.name} scores "
                          f"task.data_file")
    if d["batch_size"] is None:  # windows of up to 1024 tokens x the vocabulary's logits: fewer per batch
        d["batch_size"] = 4 if task is not None and task.perplexity else 64
    return EvaluateConfig(**d)


def _check_scorers(data: list | None) -> tuple[ScorerConfig, ...]:
    from .scorers.specs import scorer_names, scorer_spec

    out = []
    for i, entry in enumerate(data or []):
        if isinstance(entry, str):
            entry = {"name": entry}
        d = check_mapping(entry, SCORER_ENTRY, f"scorers[{i}]")
        spec = scorer_spec(d["name"])
        if spec is None:
            raise RecipeError(
                f"recipe field 'scorers[{i}].name' names unknown scorer '{d['name']}'; "
                f"available: {', '.join(scorer_names())}"
            )
        params = spec.check_params(d["params"] or {}, f"scorers[{i}].params")
        out.append(ScorerConfig(d["name"], params, frozenset(d["params"] or {})))
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RecipeError(f"recipe field 'scorers' lists scorer '{sorted(dup)[0]}' twice")
    return tuple(out)


def _pick_scorer(target_field: str, wanted: str | None, kind: str, scorers: tuple[ScorerConfig, ...]) -> str:
    from .scorers.specs import scorer_spec

    able = [s.name for s in scorers if kind in scorer_spec(s.name).produces]
    if wanted is not None:
        if wanted not in able:
            raise RecipeError(
                f"recipe field '{target_field}.scorer' is '{wanted}', which is not a listed scorer "
                f"that scores {kind}; listed ones that do: {', '.join(able) or 'none'}"
            )
        return wanted
    if len(able) != 1:
        raise RecipeError(
            f"recipe field '{target_field}.scorer' must name one of the scorers that score {kind}: "
            f"{', '.join(able) or 'none is listed in scorers'}"
        )
    return able[0]


def _budget_scorer(field_name: str, wanted: str | None, kind: str, scorers: tuple[ScorerConfig, ...]) -> str:
    """The scorer for one kind: ``wanted`` (set in targets.budget.<field_name>), or the one
    listed scorer that scores this kind."""
    from .scorers.specs import scorer_spec

    able = [s.name for s in scorers if kind in scorer_spec(s.name).produces]
    if wanted is None:
        if len(able) != 1:
            raise RecipeError(f"recipe field 'targets.budget.scorer' must name a listed scorer that scores {kind} "
                              f"(or set targets.budget.{'head' if kind == 'heads' else 'neuron'}_scorer): "
                              f"{', '.join(able) or 'none is listed in scorers'}")
        return able[0]
    if wanted not in able:
        other = f"targets.budget.{'head' if kind == 'heads' else 'neuron'}_scorer"
        hint = f"; set {other} to a scorer that does" if field_name == "scorer" else ""
        raise RecipeError(f"recipe field 'targets.budget.{field_name}' is '{wanted}', which is not a listed scorer "
                          f"that scores {kind}; listed ones that do: {', '.join(able) or 'none'}{hint}")
    return wanted


def _check_budget(data: Any, scorers: tuple[ScorerConfig, ...]) -> BudgetTarget:
    from .scorers.specs import scorer_spec

    d = check_mapping(data, BUDGET_TARGET, "targets.budget")
    if (d["flops"] is None) == (d["params"] is None):
        raise RecipeError("recipe field 'targets.budget' must set exactly one of flops or params (the share kept, 0..1)")
    kind = "flops" if d["flops"] is not None else "params"
    share = d[kind]
    if not 0 < share < 1:
        raise RecipeError(f"recipe field 'targets.budget.{kind}' must be a number with 0 < {kind} < 1 "
                          f"(the share kept); got {share!r}")
    heads = _budget_scorer("head_scorer" if d["head_scorer"] else "scorer", d["head_scorer"] or d["scorer"],
                           "heads", scorers)
    neurons = _budget_scorer("neuron_scorer" if d["neuron_scorer"] else "scorer", d["neuron_scorer"] or d["scorer"],
                             "neurons", scorers)
    one_scale = heads == neurons and scorer_spec(heads).shared_scale
    split = d["split"]
    if split == "auto":
        split = "importance" if one_scale else "measure"
    elif split == "importance" and not one_scale:
        raise RecipeError(f"recipe field 'targets.budget.split' is importance, which needs one scorer whose head and "
                          f"neuron scores share a scale (fisher); {heads}/{neurons} do not: use measure or auto")
    floor = d["min_per_layer"]
    return BudgetTarget(
        kind=kind, share=float(share), head_scorer=heads, neuron_scorer=neurons,
        min_heads_per_layer=floor if d["min_heads_per_layer"] is None else d["min_heads_per_layer"],
        min_neurons_per_layer=floor if d["min_neurons_per_layer"] is None else d["min_neurons_per_layer"],
        split=split, scope=d["scope"], candidates=d["candidates"], rearrange=d["rearrange"],
    )


def _check_labels(scorers: tuple[ScorerConfig, ...], calibration: CalibrationConfig) -> None:
    """Scorers that need the task loss need labelled calibration: glue, not its test split."""
    from .scorers.specs import scorer_spec

    for i, s in enumerate(scorers):
        if scorer_spec(s.name).needs_labels(s.params) and (calibration.source != "glue" or calibration.split == "test"):
            where = f"calibration.source is {calibration.source}" if calibration.source != "glue" else "the test split has no labels"
            raise RecipeError(
                f"recipe field 'scorers[{i}]' ({s.name}) needs labelled calibration data, and {where}: set "
                f"calibration: {{source: glue, split: train}} with a task, or scorers[{i}].params.label_free: output "
                f"(or lm, the next-token loss of a causal LM)"
            )


def _follow_head_ratio(s: ScorerConfig, heads: HeadTarget) -> ScorerConfig:
    """Scorers that prune by clustering need the head ratio; unless the recipe set their
    own, they take targets.heads.ratio, so one number drives both."""
    from .scorers.specs import scorer_spec

    if s.name != heads.scorer or "ratio" in s.given or not scorer_spec(s.name).follows_head_ratio:
        return s
    return dataclasses.replace(s, params={**s.params, "ratio": heads.ratio})


def parse_recipe(data: Any, name: str = "recipe") -> Recipe:
    top = check_mapping(data, TOP)
    task = _check_task(top["task"]) if top["task"] is not None else None
    for stage in ("finetune", "evaluate"):
        if top[stage] is not None and task is None:
            raise RecipeError(f"recipe field '{stage}' needs a 'task' mapping (task: {{name: sst2, data_dir: ...}})")
    ft = check_mapping(top["finetune"], FINETUNE, "finetune") if top["finetune"] is not None else {}
    base = ft.get("base")
    recovery = ft.get("recovery")
    if base is not None:
        base = _check_finetune_run(base, "finetune.base", top["seed"], distill_ok=False)
    if recovery is not None:
        recovery = _check_finetune_run(recovery, "finetune.recovery", top["seed"], distill_ok=True)
    evaluate = _check_evaluate(top["evaluate"], task) if top["evaluate"] is not None else None
    if task is not None and task.perplexity and top["finetune"] is not None:
        raise RecipeError(f"recipe field 'finetune' fine-tunes on a GLUE task; task {task.name} is only scored "
                          f"(perplexity), not trained on")
    cal_data = top["calibration"]
    if task is not None and not task.perplexity and isinstance(cal_data, dict) and cal_data.get("source") == "glue":
        # glue calibration defaults to the recipe's task and data
        cal_data = {"task": task.name, "data_dir": task.data_dir, **cal_data}
    calibration = _check_calibration(cal_data)
    scorers = _check_scorers(top["scorers"])
    _check_labels(scorers, calibration)
    targets = check_mapping(
        top["targets"],
        {"heads": Field("mapping", None, nullable=True), "neurons": Field("mapping", None, nullable=True),
         "budget": Field("mapping", None, nullable=True, help="one FLOPs/params budget for heads and neurons")},
        "targets",
    )
    budget = None
    if targets["budget"] is not None:
        given = [k for k in ("heads", "neurons") if targets[k] is not None]
        if given:
            raise RecipeError(f"recipe field 'targets.budget' cannot be combined with targets.{given[0]}: the budget "
                              f"decides heads and neurons together; keep one")
        budget = _check_budget(targets["budget"], scorers)
    heads = neurons = None
    if targets["heads"] is not None:
        heads = HeadTarget(**check_mapping(targets["heads"], HEAD_TARGET, "targets.heads"))
        heads = HeadTarget(**{**heads.__dict__, "scorer": _pick_scorer("targets.heads", heads.scorer, "heads", scorers)})
        scorers = tuple(_follow_head_ratio(s, heads) for s in scorers)
    if targets["neurons"] is not None:
        neurons = NeuronTarget(**check_mapping(targets["neurons"], NEURON_TARGET, "targets.neurons"))
        if (neurons.ratio is None) == (neurons.percentile is None):
            raise RecipeError("recipe field 'targets.neurons' must set exactly one of ratio (0..1) or percentile (0..100)")
        neurons = NeuronTarget(
            **{**neurons.__dict__, "scorer": _pick_scorer("targets.neurons", neurons.scorer, "neurons", scorers)}
        )
    return Recipe(
        name=name,
        model=top["model"],
        seed=top["seed"],
        calibration=calibration,
        scorers=scorers,
        heads=heads,
        neurons=neurons,
        budget=budget,
        output=top["output"],
        description=top["description"],
        export=ExportConfig(**check_mapping(top["export"], EXPORT, "export")) if top["export"] is not None else None,
        task=task,
        finetune_base=base,
        finetune_recovery=recovery,
        evaluate=evaluate,
        reconstruct=(ReconstructConfig(**check_mapping(top["reconstruct"], RECONSTRUCT, "reconstruct"))
                     if top["reconstruct"] is not None else None),
    )


def default_output(recipe: Recipe) -> Path:
    return Path(recipe.output) if recipe.output else Path("runs") / recipe.name


def with_calibration_text(recipe: Recipe, path: str) -> Recipe:
    """The recipe calibrated on a text file (one text per line) instead."""
    cal = dataclasses.replace(recipe.calibration, source="text_file", path=path)
    return dataclasses.replace(recipe, calibration=cal)


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    from .files import load_yaml

    # UTF-8 only; no duplicate keys, anchors/aliases, absurd nesting or size (compressor/files.py)
    data = load_yaml(p, "recipe", RecipeError)
    if data is None:
        data = {}
    return parse_recipe(data, name=p.stem)


__all__ = ["PERPLEXITY_TASKS", "is_perplexity_task", "Recipe", "ExportConfig", "TaskConfig", "FinetuneConfig", "DistillConfig", "EvaluateConfig", "CalibrationConfig", "ReconstructConfig", "ScorerConfig", "HeadTarget", "NeuronTarget", "BudgetTarget", "load_recipe", "parse_recipe", "with_calibration_text"]
