"""Runs a recipe's stages in order: load -> capture -> score -> plan -> surgery -> save."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .arch.base import adapter_for
from .capture import run_capture
from .data.calibration import calibration_batches
from .metrics import FLOPS_SEQ_LEN, encoder_flops_per_token
from .models import load_model, load_tokenizer, model_summary, resolve_model, save_model
from .outputs import atomic_output, check_output
from .planning import make_plan
from .recipe import ExportConfig, Recipe
from .report.html import render_report
from .scorers import SCORERS, ScoringContext
from .surgery.prune import apply_plan
from .types import PruningPlan


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def default_output(recipe: Recipe) -> Path:
    return Path(recipe.output) if recipe.output else Path("runs") / recipe.name


def _local_inputs(*names: str) -> list[Path]:
    return [Path(n).expanduser() for n in names if Path(n).expanduser().exists()]


def _size_summary(model) -> dict:
    s = model_summary(model)
    layout = adapter_for(model).layout()
    s["encoder_flops_per_token"] = encoder_flops_per_token(layout, FLOPS_SEQ_LEN)
    return s


def run_recipe(
    recipe: Recipe,
    output: Path | None = None,
    overwrite: bool = False,
    model: str | None = None,
    progress: bool = True,
) -> dict:
    """Run a recipe end to end; returns metrics.json's content."""
    model_name = model or recipe.model
    output = Path(output) if output is not None else default_output(recipe)
    source = resolve_model(model_name)  # a missing path fails before anything else
    check_output(output, overwrite, protect=_local_inputs(source))
    torch.manual_seed(recipe.seed)
    timer = StageTimer()

    with timer("load"):
        net = load_model(model_name, attn_implementation="eager")
        tokenizer = load_tokenizer(model_name)
        adapter = adapter_for(net)
        layout = adapter.layout()
        before = _size_summary(net)

    scorers = [SCORERS.get(s.name)(**s.params) for s in recipe.scorers]
    ctx = ScoringContext(net, adapter, layout, recipe.seed, tokenizer)
    for s in scorers:
        s.begin(ctx)
    if any(s.needs for s in scorers):
        with timer("calibration"):
            batches = calibration_batches(recipe.calibration, tokenizer, net.config, recipe.seed)
        with timer("capture"):
            run_capture(net, adapter, batches, scorers, progress=progress)
    results = {}
    with timer("score"):
        for s in scorers:
            results[s.name] = s.finish()

    with timer("plan"):
        heads = results[recipe.heads.scorer].heads if recipe.heads else None
        neurons = results[recipe.neurons.scorer].neurons if recipe.neurons else None
        plan = make_plan(
            layout, heads, neurons, recipe.heads, recipe.neurons,
            source={"recipe": recipe.name, "model": model_name, "seed": recipe.seed,
                    "calibration": recipe.calibration.__dict__},
        )

    with timer("surgery"):
        apply_plan(net, plan, inplace=True)
        after = _size_summary(net)

    metrics = {
        "recipe": recipe.name,
        "model": model_name,
        "flops_seq_len": FLOPS_SEQ_LEN,
        "before": before,
        "after": after,
        "parameters_kept_share": after["parameters"] / before["parameters"],
        "flops_kept_share": after["encoder_flops_per_token"] / before["encoder_flops_per_token"],
        "heads_removed": sum(len(v) for v in plan.heads.values()),
        "neurons_removed": sum(len(v) for v in plan.neurons.values()),
    }
    with atomic_output(output, overwrite) as tmp:
        with timer("save"):
            save_model(net, tmp / "model", tokenizer)
            plan.save(tmp / "plan.json")
            (tmp / "scores").mkdir()
            for name, res in results.items():
                for part in (res.heads, res.neurons):
                    if part is not None:
                        extras = dict(part.extras)
                        for fig, png in extras.pop("figures", {}).items():
                            (tmp / "scores" / f"{fig}.png").write_bytes(png)
                        data = {**part.to_json(), "extras": extras}
                        (tmp / "scores" / f"{name}.{data['kind']}.json").write_text(json.dumps(data))
        if recipe.export is not None:
            with timer("export"):
                metrics["export"] = _export(net, tokenizer, tmp / "onnx", recipe.export).to_json()
        metrics["stage_seconds"] = timer.seconds
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "report.html").write_text(render_report(metrics, plan.to_json()))
    return metrics


def _export(net, tokenizer, folder: Path, cfg: ExportConfig):
    from .export import export_model

    folder.mkdir(exist_ok=True)
    return export_model(net, tokenizer, folder, optimize_graph=cfg.optimize, quantize=cfg.quantize,
                        atol=cfg.atol, opset=cfg.opset)


def run_export(model_name: str, output: Path, cfg: ExportConfig, overwrite: bool = False):
    """Export a model folder to ONNX; the output folder holds the graphs, config and tokenizer."""
    source = resolve_model(model_name)
    check_output(output, overwrite, protect=_local_inputs(source))
    net = load_model(model_name, attn_implementation="eager")
    tokenizer = load_tokenizer(model_name)
    with atomic_output(output, overwrite) as tmp:
        result = _export(net, tokenizer, tmp, cfg)
    return result


def run_plan(model_name: str, plan_path: Path, output: Path, overwrite: bool = False) -> dict:
    """Replay a saved plan on a model; the output folder is the pruned model."""
    source = resolve_model(model_name)
    plan = PruningPlan.load(plan_path)
    check_output(output, overwrite, protect=_local_inputs(source))
    net = load_model(model_name, attn_implementation=None)
    plan.validate(adapter_for(net).layout())
    tokenizer = load_tokenizer(model_name)
    before = _size_summary(net)
    apply_plan(net, plan, inplace=True)
    after = _size_summary(net)
    with atomic_output(output, overwrite) as tmp:
        save_model(net, tmp, tokenizer)
        plan.save(tmp / "plan.json")
    return {"before": before, "after": after}
