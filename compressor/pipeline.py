"""Runs a recipe's stages in order:

load -> [fine-tune base, kept as base_model/] -> [evaluate original] -> capture -> score -> plan -> surgery
-> [reconstruct] -> [recovery fine-tune, optionally distilled from the unpruned model] -> save -> [export]
-> [evaluate the pruned model, and its ONNX graphs] -> report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from .arch.base import adapter_for, check_max_length
from .capture import run_capture
from .data.calibration import calibration_batches, fit_length
from .data.glue import glue_task, load_glue
from .evaluate.glue import OnnxClassifier, TorchClassifier, eval_splits, score_splits
from .errors import CompressorError
from .evaluate.perplexity import OnnxLM, TorchLM
from .finetune import finetune
from .finite import check_finite
from .metrics import FLOPS_SEQ_LEN, encoder_flops_per_token
from .models import load_model, load_tokenizer, model_summary, resolve_model, save_model
from .outputs import atomic_output, check_output
from .planning import check_budget, check_floors, make_plan, plan_budget
from .progress import StageTimer
from .recipe import ExportConfig, Recipe, ReconstructConfig, default_output
from .report.html import render_report
from .results import (
    INT8_BATCHING,
    INT8_WINDOW_BATCHING,
    BudgetSummary,
    EvalSummary,
    ExportSummary,
    FinetuneSummary,
    LatencySummary,
    PerplexitySummary,
    ReconstructSummary,
    RunMetrics,
    SizeSummary,
)
from .scorers import SCORERS, ScoringContext
from .surgery.prune import apply_plan
from .task_head import check_head
from .types import PruningPlan


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
    """Run a recipe end to end; returns metrics.json's content (``RunMetrics.to_dict()``;
    ``RunMetrics.from_dict`` reads it typed)."""
    model_name = model or recipe.model
    output = Path(output) if output is not None else default_output(recipe)
    source = resolve_model(model_name)  # a missing path fails before anything else
    text = recipe.calibration.path if recipe.calibration.source == "text_file" and recipe.calibration.path else None
    scored = recipe.task.data_file if recipe.task is not None and recipe.task.data_file else None  # wikitext
    check_output(output, overwrite, protect=_local_inputs(source),
                 inputs=_local_inputs(*[f for f in (text, scored) if f]))
    torch.manual_seed(recipe.seed)
    timer = StageTimer(progress)

    with timer("load"):
        net = load_model(model_name, attn_implementation="eager")
        tokenizer = load_tokenizer(model_name)
        before = _size_summary(net)
    recipe = _check_lengths(recipe, net)  # lengths beyond the model's positions fail before any work
    if recipe.export is not None:  # export.cache: true on a model without a cache fails before any work
        _check_cache(net, recipe)
    check_floors(adapter_for(net).layout(), recipe.heads, recipe.neurons, recipe.budget)
    _check_units_left(adapter_for(net).layout(), recipe)
    task_data = _task_data(recipe, net, tokenizer)  # bad task input fails here, before hours of work
    if recipe.budget is not None:  # an impossible budget fails before any work too
        check_budget(adapter_for(net).layout(), recipe.budget, _has_bias(net), _ffn_bias(net))
    evaluations: dict[str, EvalSummary] = {}
    perplexities: dict[str, PerplexitySummary] = {}  # task wikitext
    lm_task = recipe.task is not None and recipe.task.perplexity
    finetuning: dict[str, FinetuneSummary] = {}
    base_dir = None  # the fine-tuned, unpruned base, kept as base_model/ so the comparison can be redone

    if recipe.finetune_base is not None:
        with timer("finetune_base"):
            net, res = finetune(net, tokenizer, task_data["train"], recipe.finetune_base, recipe.task.max_length,
                                progress=progress)
            finetuning["base"] = _finetune_summary(res, recipe, recipe.finetune_base, task_data, None, "base_model")
            base_dir = tempfile.TemporaryDirectory(prefix="compressor-base-")
            save_model(net, Path(base_dir.name) / "base_model", tokenizer)
    teacher = None
    if recipe.finetune_recovery is not None and recipe.finetune_recovery.distill is not None:
        teacher = copy.deepcopy(net).eval()
    # a fine-tuned base is always scored: its metric is what the pruned model is compared with
    if recipe.evaluate is not None and (recipe.evaluate.original or recipe.finetune_base is not None):
        with timer("evaluate"):
            if lm_task:
                perplexities["original"] = _perplexity(TorchLM(net, "original"), recipe, task_data, progress)
            else:
                evaluations["original"] = _evaluate(TorchClassifier(net, tokenizer, "original"), recipe, task_data,
                                                    progress)
    original = None
    if recipe.evaluate is not None and recipe.evaluate.latency:
        # the teacher is only run forward, so it doubles as the unpruned latency reference
        original = teacher if teacher is not None else copy.deepcopy(net)
    reference = None
    if recipe.reconstruct is not None:
        # reconstruct fits the pruned layers to the unpruned model, which is only run
        # forward: share the teacher / latency copy when there is one
        reference = teacher if teacher is not None else original if original is not None else copy.deepcopy(net).eval()
    adapter = adapter_for(net)
    layout = adapter.layout()

    scorers = [SCORERS.get(s.name)(**s.params) for s in recipe.scorers]
    ctx = ScoringContext(net, adapter, layout, recipe.seed, tokenizer)
    for s in scorers:
        s.begin(ctx)
    # a budget split by measurement reads the calibration data even for data-free scorers
    measure = recipe.budget is not None and recipe.budget.split == "measure"
    batches = None
    if any(s.needs for s in scorers) or measure:
        with timer("calibration"):
            batches = calibration_batches(recipe.calibration, tokenizer, net.config, recipe.seed)
        if any(s.needs for s in scorers):
            with timer("capture"):
                run_capture(net, adapter, batches, scorers, progress=progress)
    results = {}
    with timer("score"):
        for s in scorers:
            results[s.name] = s.finish()

    with timer("plan"):
        plan_source = {"recipe": recipe.name, "model": model_name, "seed": recipe.seed,
                       "calibration": recipe.calibration.__dict__}
        if recipe.budget is not None:
            plan = _budget_plan(net, adapter, layout, recipe, results, batches, plan_source, progress)
        else:
            heads = results[recipe.heads.scorer].heads if recipe.heads else None
            neurons = results[recipe.neurons.scorer].neurons if recipe.neurons else None
            plan = make_plan(layout, heads, neurons, recipe.heads, recipe.neurons, source=plan_source)

    recon_batches = None
    if recipe.reconstruct is not None:
        from .reconstruct import check_tokens

        with timer("calibration"):
            recon_batches = _reconstruct_batches(recipe, tokenizer, net, batches)
        # too few tokens for the least squares fails here, before surgery and before anything is written
        check_tokens(plan.kept_layout(layout), recipe.reconstruct.sublayers, recon_batches)

    with timer("surgery"):
        apply_plan(net, plan, inplace=True)
        after = _size_summary(net)
    reconstruction = None
    if recipe.reconstruct is not None:
        from .reconstruct import reconstruct

        with timer("reconstruct"):
            reconstruction = reconstruct(net, reference, adapter_for(net), adapter_for(reference), recon_batches,
                                         recipe.reconstruct, progress=progress)
        del reference, recon_batches
    if recipe.finetune_recovery is not None:
        with timer("finetune_recovery"):
            net, res = finetune(net, tokenizer, task_data["train"], recipe.finetune_recovery, recipe.task.max_length,
                                teacher=teacher, progress=progress)
            who = None
            if teacher is not None:
                who = ("the unpruned fine-tuned base (base_model/)" if recipe.finetune_base is not None
                       else f"the unpruned model ({model_name})")
            finetuning["recovery"] = _finetune_summary(res, recipe, recipe.finetune_recovery, task_data, who, None)
        del teacher

    run = RunMetrics(
        recipe=recipe.name,
        model=model_name,
        flops_seq_len=FLOPS_SEQ_LEN,
        before=SizeSummary.from_dict(before, "before"),
        after=SizeSummary.from_dict(after, "after"),
        parameters_kept_share=after["parameters"] / before["parameters"],
        # a model with every head and neuron already removed has no encoder FLOPs to share
        flops_kept_share=(after["encoder_flops_per_token"] / before["encoder_flops_per_token"]
                          if before["encoder_flops_per_token"] else 1.0),
        heads_removed=sum(len(v) for v in plan.heads.values()),
        neurons_removed=sum(len(v) for v in plan.neurons.values()),
    )
    if recipe.budget is not None:
        b = plan.source["budget"]
        run.budget = BudgetSummary(b["asked"], {k: b["achieved"][k] for k in ("flops", "params")},
                                   b["within_one_unit"], b["split"])
    if reconstruction is not None:
        run.reconstruct = ReconstructSummary.from_dict(reconstruction.to_json())
    check_finite(net, "the compressed model")
    with atomic_output(output, overwrite) as tmp:
        with timer("save"):
            save_model(net, tmp / "model", tokenizer)
            if base_dir is not None:
                shutil.copytree(Path(base_dir.name) / "base_model", tmp / "base_model")
                base_dir.cleanup()
            plan.save(tmp / "plan.json")
            (tmp / "scores").mkdir()
            for name, res in results.items():
                for part in (res.heads, res.neurons):
                    if part is not None:
                        # keys starting with "_" are in-memory only (fisher's per-layer matrices)
                        extras = {k: v for k, v in part.extras.items() if not k.startswith("_")}
                        for fig, png in extras.pop("figures", {}).items():
                            (tmp / "scores" / f"{fig}.png").write_bytes(png)
                        data = {**part.to_json(), "extras": extras}
                        (tmp / "scores" / f"{name}.{data['kind']}.json").write_text(json.dumps(data))
        run.finetune = finetuning or None
        if recipe.export is not None:
            with timer("export"):
                run.export = ExportSummary.from_dict(_export(net, tokenizer, tmp / "onnx", recipe.export).to_json())
        if recipe.evaluate is not None:
            with timer("evaluate"):
                if lm_task:
                    perplexities["pruned"] = _perplexity(TorchLM(net, "pruned"), recipe, task_data, progress)
                else:
                    evaluations["pruned"] = _evaluate(TorchClassifier(net, tokenizer, "pruned"), recipe, task_data,
                                                      progress)
                if lm_task and recipe.evaluate.onnx and run.export is not None:
                    for kind, name in run.export.files.items():
                        # dynamic int8 scales each batch: one window per batch, as for GLUE examples
                        perplexities[f"onnx_{kind}"] = _perplexity(OnnxLM(tmp / "onnx" / name, f"onnx {kind}"), recipe,
                                                                   task_data, progress,
                                                                   batch_size=1 if kind == "quantized" else None)
                if not lm_task and recipe.evaluate.onnx and run.export is not None:
                    for kind, name in run.export.files.items():
                        runner = OnnxClassifier(tmp / "onnx" / name, tokenizer)
                        runner.name = f"onnx {kind}"
                        # dynamic int8 scales each batch: a fixed batching (one example) makes its figure
                        # independent of evaluate.batch_size
                        batch = 1 if kind == "quantized" else None
                        evaluations[f"onnx_{kind}"] = _evaluate(runner, recipe, task_data, progress, batch_size=batch)
            run.evaluation = None if lm_task else evaluations
            run.perplexity = perplexities if lm_task else None
            if original is not None:
                with timer("latency"):
                    run.latency = LatencySummary.from_dict(_latency(original, net))
                del original
        run.stage_seconds = timer.seconds
        metrics = run.to_dict()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "report.html").write_text(render_report(run, plan.to_json(), results))
    return metrics


def _check_lengths(recipe: Recipe, net) -> Recipe:
    """calibration.max_length (when calibration is read) and task.max_length against the
    model's positions; returns the recipe with both resolved (unset: 128, or the model's
    positions when fewer)."""
    from .scorers.specs import scorer_spec

    uses_calibration = (any(scorer_spec(s.name) is not None and scorer_spec(s.name).needs for s in recipe.scorers)
                        or (recipe.budget is not None and recipe.budget.split == "measure")
                        or recipe.reconstruct is not None)
    if uses_calibration:
        cal = fit_length(recipe.calibration, net.config, "recipe field 'calibration.max_length'")
        recipe = dataclasses.replace(recipe, calibration=cal)
    if recipe.task is None:
        return recipe
    if recipe.task.perplexity:  # the window: unset, the model's positions (at most 1024); stride unset: half of it
        from .evaluate.perplexity import resolve_lengths

        n, stride = resolve_lengths(net.config, recipe.task.max_length, recipe.task.stride,
                                    "recipe field 'task.max_length'", "recipe field 'task.stride'")
        return dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, max_length=n, stride=stride))
    n = check_max_length(net.config, recipe.task.max_length, "recipe field 'task.max_length'")
    return dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, max_length=n))


def _check_units_left(layout, recipe: Recipe) -> None:
    """A model whose heads (or neurons) were all removed earlier cannot be scored or
    budgeted on them: one line, before any work."""
    from .errors import RecipeError
    from .scorers.specs import scorer_spec

    heads, neurons = sum(layout.heads_per_layer), sum(layout.ffn_per_layer)
    if recipe.budget is not None and heads + neurons == 0:
        raise RecipeError("recipe field 'targets.budget' has nothing to budget: the model has no attention heads "
                          "and no FFN neurons left")
    if heads == 0:
        for i, s in enumerate(recipe.scorers):
            spec = scorer_spec(s.name)
            if spec is not None and spec.produces == frozenset({"heads"}):
                raise RecipeError(f"recipe field 'scorers[{i}]' ({s.name}) scores attention heads, and the model "
                                  f"has none left (every head was removed)")


def _finetune_summary(res, recipe: Recipe, cfg, task_data: dict, teacher: str | None,
                      saved_as: str | None) -> FinetuneSummary:
    """What a fine-tuning stage did and with what: its config, data size and teacher."""
    return FinetuneSummary(**res.to_json(), task=recipe.task.name, train_examples=len(task_data["train"]),
                           config=dataclasses.asdict(cfg), teacher=teacher, saved_as=saved_as)


def _has_bias(net) -> bool:
    """Whether the q/k/v (or qkv) projections carry biases, for the parameter costs."""
    a = adapter_for(net)
    return a.module(0, "qkv" if a.spec.qkv is not None else "query").bias is not None


def _ffn_bias(net) -> bool:
    """Whether the FFN input projections carry biases (BERT's do, a gated Llama FFN's not;
    Qwen2 has q/k/v biases but none in its FFN), for the parameter costs."""
    return adapter_for(net).has_bias("ffn_in")


def _budget_plan(net, adapter, layout, recipe: Recipe, results, batches, source: dict, progress: bool) -> PruningPlan:
    """targets.budget: the planner decides; a measured split gets a calibration-loss callback."""
    from .masking import CalibrationLoss

    b = recipe.budget
    evaluate = None
    if b.split == "measure":
        evaluate = CalibrationLoss(net, adapter, batches, progress=progress)
        source = {**source, "split_loss": evaluate.mode}
    return plan_budget(layout, results[b.head_scorer].heads, results[b.neuron_scorer].neurons, b,
                       evaluate=evaluate, bias=_has_bias(net), source=source, ffn_bias=_ffn_bias(net))


def _reconstruct_batches(recipe: Recipe, tokenizer, net, batches):
    """The capture's calibration batches, or the recipe's calibration built now (when no
    scorer needed it, or reconstruct asks for a different number of sequences)."""
    n = recipe.reconstruct.num_sequences
    if batches is not None and (n is None or n == recipe.calibration.num_sequences):
        return batches
    cal = recipe.calibration if n is None else dataclasses.replace(recipe.calibration, num_sequences=n)
    return calibration_batches(cal, tokenizer, net.config, recipe.seed)


def _task_data(recipe: Recipe, net, tokenizer=None) -> dict:
    """The recipe's GLUE splits (or, for task wikitext, the text file's token stream),
    loaded (and checked) up front."""
    out: dict = {}
    if recipe.task is None:
        return out
    t = recipe.task
    if t.perplexity:
        if recipe.evaluate is not None:
            from .evaluate.perplexity import read_text_file, token_stream
            from .task_head import check_causal_lm

            check_causal_lm(net, f"recipe field 'task.name' is {t.name}, scored by perplexity, which needs a causal "
                                 f"language model")
            text = read_text_file(t.data_file, "task.data_file")
            out["stream"], _ = token_stream(text, tokenizer, f"task.data_file {t.data_file}")
        return out
    task = glue_task(t.name)
    tuned = recipe.finetune_base is not None or recipe.finetune_recovery is not None
    if tuned:
        out["train"] = load_glue(t.name, t.data_dir, "train").subset(t.train_examples, recipe.seed)
    ev = recipe.evaluate
    if ev is not None:
        out["eval"] = eval_splits(t.name, t.data_dir, ev.split, t.eval_examples, recipe.seed)
        if ev.original and recipe.finetune_base is None:
            check_head(net, task, "the original model (evaluate.original)")
        if not tuned:
            check_head(net, task)
    rec = recipe.finetune_recovery
    if rec is not None and rec.distill is not None and recipe.finetune_base is None:
        check_head(net, task, "the distillation teacher (the unpruned model; add finetune.base?)")
    return out


def _evaluate(runner, recipe: Recipe, data: dict, progress: bool, batch_size: int | None = None) -> EvalSummary:
    """Score a runner; ``batch_size`` overrides evaluate.batch_size (int8: one example per batch)."""
    n = batch_size or recipe.evaluate.batch_size
    res = score_splits(runner, data["eval"], n, recipe.task.max_length, progress)
    return EvalSummary.from_dict({**res.to_json(), "main": res.main, "batch_size": n,
                                  "batching": INT8_BATCHING if batch_size == 1 else None})


def _perplexity(runner, recipe: Recipe, data: dict, progress: bool, batch_size: int | None = None) -> PerplexitySummary:
    """Perplexity of a runner (TorchLM / OnnxLM) on task.data_file; ``batch_size``
    overrides evaluate.batch_size (int8: one window per batch)."""
    from .evaluate.perplexity import perplexity

    t = recipe.task
    n = batch_size or recipe.evaluate.batch_size
    res = perplexity(runner, data["stream"], t.max_length, t.stride, n, limit=t.eval_tokens, source=t.data_file,
                     task=t.name, progress=progress)
    return PerplexitySummary.from_dict({**res.to_json(), "batching": INT8_WINDOW_BATCHING if batch_size == 1 else None})


def _latency(original, pruned, batch: int = 8, seq: int = 128, runs: int = 10) -> dict:
    """PyTorch latency of the original and the pruned model, timed interleaved."""
    from .evaluate.latency import measure, random_batch, torch_runner

    feeds = random_batch(original.config.vocab_size, batch, min(seq, original.config.max_position_embeddings))
    timed = measure({"original": torch_runner(original, feeds), "pruned": torch_runner(pruned, feeds)},
                    warmup=2, runs=runs)
    out: dict = {"batch": batch, "seq": feeds["input_ids"].shape[1], "runs": runs}
    out.update({k: {"median_ms": m, "p90_ms": p} for k, (m, p) in timed.items()})
    return out


def _check_cache(net, recipe: Recipe) -> None:
    """export.cache: true where the exported model will have no cache: one line. Fine-tuning
    gives the model a classification head, so what is exported is then a classifier."""
    from .errors import RecipeError
    from .export.kv_cache import cache_reason
    from .export.onnx import infer_task

    if not recipe.export.cache:
        return
    tuned = recipe.finetune_base is not None or recipe.finetune_recovery is not None
    task = "text-classification" if tuned else infer_task(net)
    reason = cache_reason(adapter_for(net), task)
    if reason is not None:
        raise RecipeError(f"export.cache is true, but {reason}; set export.cache to false or leave it unset")


def _export(net, tokenizer, folder: Path, cfg: ExportConfig):
    from .export import export_model

    folder.mkdir(exist_ok=True)
    return export_model(net, tokenizer, folder, optimize_graph=cfg.optimize, quantize=cfg.quantize,
                        atol=cfg.atol, opset=cfg.opset, cache=cfg.cache)


def run_export(model_name: str, output: Path, cfg: ExportConfig, overwrite: bool = False, progress: bool = False):
    """Export a model folder to ONNX; the output folder holds the graphs, config and tokenizer."""
    source = resolve_model(model_name)
    check_output(output, overwrite, protect=_local_inputs(source))
    timer = StageTimer(progress)
    with timer("load model"):
        net = load_model(model_name, attn_implementation="eager")
        tokenizer = load_tokenizer(model_name)
    if cfg.cache:  # before the output folder exists: nothing is written
        from .export.kv_cache import cache_reason
        from .export.onnx import infer_task

        reason = cache_reason(adapter_for(net), infer_task(net))
        if reason is not None:
            raise CompressorError(f"--cache: {reason}; drop --cache (or pass --no-cache)")
    with atomic_output(output, overwrite) as tmp, timer("export, optimize and check parity"):
        result = _export(net, tokenizer, tmp, cfg)
    return result


def run_plan(model_name: str, plan_path: Path, output: Path, overwrite: bool = False, progress: bool = False) -> dict:
    """Replay a saved plan on a model; the output folder is the pruned model."""
    source = resolve_model(model_name)
    plan = PruningPlan.load(plan_path)
    check_output(output, overwrite, protect=_local_inputs(source), inputs=_local_inputs(str(plan_path)))
    with StageTimer(progress)("load model"):
        net = load_model(model_name, attn_implementation=None)
    plan.validate(adapter_for(net).layout())
    tokenizer = load_tokenizer(model_name)
    before = _size_summary(net)
    apply_plan(net, plan, inplace=True)
    after = _size_summary(net)
    check_finite(net, "the pruned model")
    with atomic_output(output, overwrite) as tmp:
        save_model(net, tmp, tokenizer)
        plan.save(tmp / "plan.json")
    return {"before": before, "after": after}


def run_finetune(model_name: str, task: str, data_dir: str | None, output: Path, cfg, max_length: int | None = None,
                 train_examples: int | None = None, teacher: str | None = None, overwrite: bool = False,
                 progress: bool = True):
    """Fine-tune a model folder on a GLUE task and save it (with its head) to ``output``.

    Under ``accelerate launch`` every process trains its shard; only the main one writes.
    Returns None on the other processes.
    """
    source = resolve_model(model_name)
    protect = _local_inputs(source, *([resolve_model(teacher)] if teacher else []))
    check_output(output, overwrite, protect=protect)
    train = load_glue(task, data_dir, "train").subset(train_examples, cfg.seed)
    with StageTimer(progress)("load model"):
        # the diversity term reads attention maps, which only the eager implementation returns
        net = load_model(model_name, attn_implementation="eager" if cfg.diversity > 0 else None)
        tokenizer = load_tokenizer(model_name)
        teacher_net = load_model(teacher, attn_implementation=None) if teacher else None
    # an unset length is 128, or the model's positions when fewer; one above them fails here
    max_length = check_max_length(net.config, max_length, "--max-length")
    net, res = finetune(net, tokenizer, train, cfg, max_length, teacher=teacher_net, progress=progress)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return None
    check_finite(net, "the fine-tuned model")
    with atomic_output(output, overwrite) as tmp:
        save_model(net, tmp, tokenizer)
        (tmp / "finetune.json").write_text(json.dumps({"task": glue_task(task).name, "config": dataclasses.asdict(cfg),
                                                       "teacher": teacher, **res.to_json()}, indent=2) + "\n")
    return res



def run_reconstruct(model_name: str, reference_name: str, output: Path, calibration, cfg: ReconstructConfig,
                    seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Re-fit a pruned model's output projections to its unpruned reference (see
    compressor/reconstruct.py); the output folder is the reconstructed model plus reconstruct.json."""
    from .reconstruct import check_derived, reconstruct

    source, ref_source = resolve_model(model_name), resolve_model(reference_name)
    check_output(output, overwrite, protect=_local_inputs(source, ref_source))
    net = load_model(model_name, attn_implementation=None)
    ref = load_model(reference_name, attn_implementation=None)
    adapter, ref_adapter = adapter_for(net), adapter_for(ref)
    check_derived(adapter.layout(), ref_adapter.layout())
    tokenizer = load_tokenizer(model_name)
    calibration = fit_length(calibration, net.config, "calibration max_length (--max-length)")
    batches = calibration_batches(calibration, tokenizer, net.config, seed)
    # reconstruct checks the token count first, before any work
    result = reconstruct(net, ref, adapter, ref_adapter, batches, cfg, progress=progress)
    out = {"model": model_name, "reference": reference_name, "calibration": calibration.__dict__, **result.to_json()}
    check_finite(net, "the reconstructed model")
    with atomic_output(output, overwrite) as tmp:
        save_model(net, tmp, tokenizer)
        (tmp / "reconstruct.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
