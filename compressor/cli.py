"""Command line: ``compress --recipe FILE`` and subcommands."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .cli_types import BoundedInt, FiniteFloat
from .errors import CompressorError, ModelLoadError
from .schema import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_NEW_TOKENS,
    MAX_RUNS,
    MAX_SEQUENCES,
    MAX_STEPS,
    MAX_TEMPERATURE,
    SEED_MAX,
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _precheck(models: tuple[str, ...] = (), output: Path | None = None, overwrite: bool = False,
              files: tuple[tuple[Path, str], ...] = (), json_out: Path | None = None,
              inputs: tuple[str | Path | None, ...] = ()) -> list[str]:
    """What can be checked before torch and transformers load (seconds on a busy
    machine): model paths and their files, input files, the output folder and any
    output file (--json). Returns the resolved models."""
    from .files import check_model_folder
    from .model_paths import resolve_model
    from .outputs import check_output, check_output_file, clean_stale

    sources = [resolve_model(m) for m in models]
    for s in sources:
        if Path(s).is_dir():
            check_model_folder(s)
    for f, what in files:
        if not Path(f).expanduser().is_file():
            raise CompressorError(f"{what} not found: {Path(f).expanduser()}")
    local = [Path(s) for s in sources if Path(s).exists()]
    given = [Path(f).expanduser() for f, _ in files] + [Path(i).expanduser() for i in inputs
                                                          if i is not None and Path(i).expanduser().exists()]
    if output is not None:
        clean_stale(output)  # temporary siblings left by killed runs (ours, their process gone)
        check_output(output, overwrite, protect=local, inputs=given)
    if json_out is not None:
        check_output_file(json_out, protect=local, inputs=given)
    return sources


def _usage_error(e: click.ClickException) -> None:
    msg = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError):
        msg = f"{msg.rstrip('.')}; see '{ctx.command_path if ctx is not None else 'compress'} --help'"
    _fail(msg)


def _interrupted() -> None:
    click.echo("error: interrupted", err=True)
    sys.exit(130)


class _Group(click.Group):
    """Turns user errors raised anywhere below into one line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressorError as e:
            _fail(str(e))
        except KeyboardInterrupt:  # before click's handler, which prints a blank line and "Aborted!"
            _interrupted()

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Usage errors (unknown option or command, missing option, bad value) are one
        ``error:`` line and exit 2 like every other user error; Ctrl-C (or SIGTERM) is
        ``error: interrupted`` and exit 130, after temporary outputs are removed."""
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            def terminate(signum, frame):
                raise KeyboardInterrupt

            previous = signal.signal(signal.SIGTERM, terminate)
        try:
            rv = super().main(args, prog_name or "compress", complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            _usage_error(e)
        except (click.exceptions.Abort, KeyboardInterrupt, EOFError):
            _interrupted()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), help="Recipe YAML to run.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default runs/<recipe name>/).")
@click.option("--model", "model", default=None, help="Override the recipe's model: 'default', a local folder or a hub id.")
@click.option("--calibration-text", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibrate on this text file (one text per line) instead of the recipe's source.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx, recipe, output, model, calibration_text, overwrite, quiet):
    """Compress a transformer as a recipe says: score, plan, cut, save, report.

    \b
    compress --recipe recipes/obce-50.yaml
    compress prune --model MODEL --plan plan.json --output DIR
    compress export --model DIR --output DIR [--quantize int8]
    compress finetune --model DIR --task sst2 --data-dir GLUE_DIR --output DIR
    compress evaluate --model DIR_OR_ONNX --task sst2 --data-dir GLUE_DIR
    compress analyze --model default [--model OTHER] --output DIR
    compress reconstruct --model PRUNED --reference ORIGINAL --output DIR
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = logging.getLogger("compressor")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    if ctx.invoked_subcommand is not None:
        if recipe is not None or calibration_text is not None:
            raise CompressorError("--recipe and --calibration-text run a recipe; they cannot be combined with a subcommand")
        return
    if recipe is None:
        click.echo(ctx.get_help())
        return
    from .recipe import default_output, load_recipe, with_calibration_text

    # the recipe, paths and output are checked before torch is imported: a typo answers at once
    r = load_recipe(recipe)
    if calibration_text is not None:
        r = with_calibration_text(r, str(calibration_text))
    if r.calibration.source == "text_file" and not Path(r.calibration.path).expanduser().is_file():
        raise CompressorError(f"calibration text file not found: {Path(r.calibration.path).expanduser()}")
    task_dir = r.task.data_dir if r.task is not None else None
    task_file = r.task.data_file if r.task is not None else None  # task wikitext: the text scored
    if task_file is not None and r.evaluate is not None and not Path(task_file).expanduser().is_file():
        raise CompressorError(f"task.data_file not found: {Path(task_file).expanduser()}")
    _precheck((model or r.model,), output if output is not None else default_output(r), overwrite,
              inputs=(recipe, r.calibration.path if r.calibration.source == "text_file" else None, task_dir,
                      task_file))
    from .pipeline import run_recipe
    from .results import RunMetrics

    run = RunMetrics.from_dict(run_recipe(r, output=output, overwrite=overwrite, model=model, progress=not quiet))
    out = output if output is not None else default_output(r)
    b, a = run.before, run.after
    click.echo(
        f"{r.name}: parameters {b.parameters:,} -> {a.parameters:,} "
        f"({run.parameters_kept_share:.1%} kept), encoder FLOPs/token "
        f"{run.flops_kept_share:.1%} kept, heads {sum(b.heads_per_layer)} -> {sum(a.heads_per_layer)}, "
        f"FFN neurons {sum(b.ffn_per_layer)} -> {sum(a.ffn_per_layer)}"
    )
    for kind, res in (run.evaluation or {}).items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in res.metrics.items())
        batch = f", batch {res.batch_size}" if res.batching else ""
        click.echo(f"{res.task} {res.split} ({kind}, {res.examples} examples{batch}): {shown}")
    for kind, p in (run.perplexity or {}).items():
        batch = f", batch {p.batch_size}" if p.batching else ""
        click.echo(f"{p.task} {Path(p.source).name} ({kind}, {p.scored_tokens:,} tokens scored{batch}): "
                   f"perplexity {p.perplexity:.4g}")
    if run.export is not None:
        ex = run.export
        parity = ", ".join(f"{k} {v:.2g}" for k, v in ex.parity.items() if not ex.is_quantized(k))
        if ex.quantized_cosine is not None:
            parity += f"; int8 (not held to atol) cosine vs PyTorch {ex.quantized_cosine:.4f}"
        click.echo(f"ONNX: max |onnx - torch| {parity}; fused attention heads per layer {ex.fused_attention}")
        if ex.cache:
            decode = ", ".join(f"{k} {v:.2g}" for k, v in ex.decode_parity.items() if not ex.is_quantized(k))
            click.echo(f"ONNX key/value cache: key/value heads per layer {ex.cache_heads}; "
                       f"max |onnx - torch| over decoding steps {decode}")
    click.echo(f"wrote {out}/ (model/, plan.json, scores/, metrics.json, report.html"
               f"{', base_model/' if run.finetune and 'base' in run.finetune else ''}"
               f"{', onnx/' if run.export is not None else ''})")


@main.command()
@click.option("--model", "model", required=True, help="Model to prune: 'default', a local folder or a hub id.")
@click.option("--plan", "plan", required=True, type=click.Path(dir_okay=False, path_type=Path), help="plan.json to replay.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the pruned model.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def prune(model, plan, output, overwrite, quiet):
    """Replay a saved pruning plan on a model."""
    from .types import PruningPlan

    _precheck((model,), output, overwrite, ((plan, "plan file"),))
    PruningPlan.load(plan)  # a malformed plan fails before the model loads
    from .pipeline import run_plan

    res = run_plan(model, plan, output, overwrite, progress=not quiet)
    click.echo(f"parameters {res['before']['parameters']:,} -> {res['after']['parameters']:,}; wrote {output}/")


@main.command()
@click.option("--model", "model", required=True, help="Model to export: a folder (pruned or not), 'default' or a hub id.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the ONNX files.")
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="ONNX Runtime transformer fusions.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write a dynamic int8 graph.")
@click.option("--atol", type=FiniteFloat(0), default=1e-4, show_default=True, help="Max |onnx - torch| for fp32 graphs.")
@click.option("--cache/--no-cache", default=None,
              help="Key/value cache inputs and outputs (past_key_values.*, present.*): one graph for the prompt and "
                   "each decoding step. Default: with a cache for a decoder with its LM head (GPT-2, Llama, ...), "
                   "without one otherwise; --cache on any other model is an error.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def export(model, output, optimize, quantize, atol, cache, overwrite, quiet):
    """Export to ONNX, check parity with PyTorch, optimize and quantize for ONNX Runtime."""
    from .recipe import ExportConfig

    _precheck((model,), output, overwrite)
    from .pipeline import run_export
    res = run_export(model, output, ExportConfig(optimize=optimize, quantize=quantize, atol=atol, cache=cache),
                     overwrite, progress=not quiet)
    parity = ", ".join(f"{k} {v:.2g}" for k, v in res.parity.items())
    if res.quantized_cosine is not None:
        parity += f" (int8 is not held to --atol; its mean cosine vs PyTorch: {res.quantized_cosine:.4f})"
    fused = "" if not res.fused_attention else f"; fused attention heads per layer {res.fused_attention}"
    click.echo(f"max |onnx - torch|: {parity}{fused}")
    if res.cache:
        decode = ", ".join(f"{k} {v:.2g}" for k, v in res.decode_parity.items())
        click.echo(f"key/value cache: key/value heads per layer {res.cache_heads}; "
                   f"max |onnx - torch| over decoding steps: {decode}")
    for note in res.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}/")


_MAX_LENGTH_HELP = "Tokens per sequence (default 128, or the model's positions when fewer)."


def _int_list(ctx, param, value: str) -> list[int]:
    hi = MAX_BATCH if param.name == "batch_sizes" else 4096
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1 or max(out) > hi:
        raise CompressorError(f"--{param.name.replace('_', '-')} must be a comma-separated list of positive integers "
                              f"up to {hi}; got {value!r}")
    return out


@main.command()
@click.option("--model", "model", default=None, help="PyTorch model to time: a folder, 'default' or a hub id.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder written by 'compress export' (times ORT fp32 and int8 graphs found there).")
@click.option("--original", "original", default=None,
              help="The unpruned model to compare with, timed interleaved (PyTorch): a folder, 'default' or a hub id.")
@click.option("--original-onnx", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The unpruned model's export folder, timed interleaved.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_int_list,
              help="Batch x --seq-lens grid; for a decoder's generation, its batch sizes (default 1 there).")
@click.option("--seq-lens", default="32,128", show_default=True, callback=_int_list,
              help="Full-sequence forwards (the default for encoders; given for a decoder, this grid is timed "
                   "instead of generation, a cached graph fed an empty past).")
@click.option("--prompt-len", type=BoundedInt(1, 4096), default=None,
              help="Decoders: prompt tokens, timed as one forward that builds the cache (default 32).")
@click.option("--new-tokens", type=BoundedInt(1, MAX_NEW_TOKENS), default=None,
              help="Decoders: tokens generated with the cache after the prompt, timed as tokens/s (default 32).")
@click.option("--runs", default=20, show_default=True, type=BoundedInt(1, MAX_RUNS))
@click.option("--warmup", default=3, show_default=True, type=BoundedInt(0, MAX_RUNS))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ORT intra-op threads (default: ORT's, one per physical core).")
@click.option("--spin/--no-spin", default=None,
              help="Let idle ORT worker threads busy-wait (ORT's default). --no-spin is faster on a CPU shared "
                   "with other busy processes.")
@click.pass_context
def bench(ctx, model, onnx_dir, original, original_onnx, batch_sizes, seq_lens, prompt_len, new_tokens, runs, warmup,
          json_path, threads, spin):
    """Latency: PyTorch vs ONNX Runtime fp32 vs int8, median and p90 per batch x sequence.
    For a decoder with its LM head: generation, i.e. prompt latency and decoding tokens/s
    with the key/value cache (ONNX graphs exported with a cache)."""
    from click.core import ParameterSource

    if model is None and onnx_dir is None:
        raise CompressorError("give --model, --onnx or both")
    for folder, opt in ((onnx_dir, "--onnx"), (original_onnx, "--original-onnx")):
        if folder is not None and not folder.is_dir():
            raise CompressorError(f"ONNX folder not found: {folder} ({opt})")
    explicit = {p: ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE
                for p in ("batch_sizes", "seq_lens", "prompt_len", "new_tokens")}
    given = [f"--{p.replace('_', '-')}" for p in ("prompt_len", "new_tokens") if explicit[p]]
    if explicit["seq_lens"] and given:
        raise CompressorError(f"--seq-lens times full-sequence forwards and {' and '.join(given)} time generation; "
                              "give one or the other")
    pytorch = tuple(m for m in (model, original) if m is not None)
    _precheck(pytorch, json_out=json_path, inputs=(onnx_dir, original_onnx))
    from .files import check_model_folder

    for folder in (onnx_dir, original_onnx):
        if folder is not None:
            check_model_folder(folder)
    from .evaluate.latency import Subject, benchmark
    from .models import load_model
    net = load_model(model, attn_implementation=None) if model is not None else None
    ref = load_model(original, attn_implementation=None) if original is not None else None
    subjects = []
    if ref is not None or original_onnx is not None:
        subjects.append(Subject("original", ref, original_onnx))
    subjects.append(Subject("pruned" if subjects else model or str(onnx_dir), net, onnx_dir))
    # a decoder's generation is timed unless --seq-lens asks for the batch x sequence grid
    decoder = not explicit["seq_lens"] and _generation_subjects(subjects)
    if not decoder and given and not explicit["seq_lens"]:
        raise CompressorError(f"{' and '.join(given)} time generation, which needs a decoder with its LM head "
                              f"(and ONNX graphs exported with a key/value cache); this model has none")
    from .arch.base import check_max_length
    from .evaluate.glue import onnx_config

    prompt_len, new_tokens = prompt_len or 32, new_tokens or 32
    longest = prompt_len + new_tokens if decoder else max(seq_lens)
    what = "--prompt-len + --new-tokens" if decoder else "the longest of --seq-lens"
    for s in subjects:
        graphs = s.onnx_dir is not None and any(s.onnx_dir.glob("*.onnx"))
        for config in (s.model.config if s.model is not None else None, onnx_config(s.onnx_dir) if graphs else None):
            if config is not None:
                try:
                    check_max_length(config, longest, what)
                except ModelLoadError:  # an architecture compressor does not know: the runtime decides
                    pass
    if decoder:
        from .evaluate.generation import time_generation

        rows = []
        for b in batch_sizes if explicit["batch_sizes"] else [1]:
            rows += time_generation(subjects, b, prompt_len, new_tokens, runs, warmup, threads, spin,
                                    progress=click.echo)
    else:
        shapes = [(b, s) for b in batch_sizes for s in seq_lens]
        rows = benchmark(subjects, shapes, runs, warmup, progress=click.echo, threads=threads, spin=spin)
    if json_path is not None:
        from .outputs import write_json_atomic

        write_json_atomic(json_path, [r.to_json() for r in rows])
        click.echo(f"wrote {json_path}")


def _generation_subjects(subjects) -> bool:
    """Whether the subjects are decoders to time generating (a PyTorch decoder with its
    LM head, or a graph with a key/value cache); a mix of decoders and other models, or
    a decoder with a graph exported without a cache, is one error line."""
    from .arch.base import adapter_for
    from .evaluate.latency import onnx_files
    from .export.kv_cache import cache_reason
    from .export.onnx import infer_task

    kinds = {}
    for s in subjects:
        if s.model is not None:
            reason = cache_reason(adapter_for(s.model), infer_task(s.model))
            kinds[f"{s.label} (PyTorch)"] = (reason is None, reason)
        if s.onnx_dir is not None:
            for name, path in onnx_files(s.onnx_dir).items():
                cached = _graph_has_cache(path)
                kinds[f"{s.label} ({path.name})"] = (cached, None if cached else "its graph has no key/value cache "
                                                     "inputs (exported with --no-cache, or not a decoder)")
    if len({k for k, _ in kinds.values()}) > 1:
        yes = [n for n, (k, _) in kinds.items() if k]
        no = [f"{n}: {why}" for n, (k, why) in kinds.items() if not k]
        raise CompressorError(f"cannot time generation of {', '.join(yes)} beside {'; '.join(no)}; "
                              "bench decoders with cached graphs, or encoders, together")
    return next(iter(kinds.values()))[0]


def _graph_has_cache(path: Path) -> bool:
    """Whether an ONNX graph takes past_key_values.* inputs (read without its weights)."""
    import onnx

    from .export.kv_cache import PAST

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # a damaged file: ONNX raises its own types
        raise CompressorError(f"ONNX graph {path} cannot be read: {str(e).splitlines()[0] if str(e) else e}") from None
    return any(i.name == PAST.format(layer=0, kind="key") for i in graph.input)


@main.command()
@click.option("--model", "models", required=True, multiple=True,
              help="Model to analyze; give it twice to compare two models (e.g. BERT and GPT-2).")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the results.")
@click.option("--calibration-text", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file, one text per line (default: random token sequences).")
@click.option("--task", default=None, help="Or a GLUE task's texts (with --data-dir).")
@click.option("--data-dir", default=None, help="Folder in the GLUE TSV layout, for --task.")
@click.option("--num-sequences", default=64, show_default=True, type=BoundedInt(1, MAX_SEQUENCES))
@click.option("--max-length", default=None, type=BoundedInt(2, 4096), help=_MAX_LENGTH_HELP)
@click.option("--batch-size", default=16, show_default=True, type=BoundedInt(1, MAX_BATCH))
@click.option("--max-dimension", default=1, show_default=True, type=BoundedInt(0, 2),
              help="Homology up to this dimension (2 is much slower).")
@click.option("--seed", default=0, show_default=True, type=BoundedInt(0, SEED_MAX))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def analyze(models, output, calibration_text, task, data_dir, num_sequences, max_length, batch_size, max_dimension,
            seed, overwrite, quiet):
    """Topology of attention heads: the sqrt-JS head metric D, persistence barcodes, and
    the bottleneck/Wasserstein distance between two models' diagrams."""
    from .recipe import CalibrationConfig

    if len(models) > 2:
        raise CompressorError(f"give --model once or twice; got {len(models)}")
    if calibration_text is not None and task is not None:
        raise CompressorError("give --calibration-text or --task, not both")
    if task is not None:
        from .data.glue import glue_task

        glue_task(task)
    _precheck(models, output, overwrite, ((calibration_text, "calibration text file"),) if calibration_text else (),
              inputs=(data_dir,))
    from .analyze import analyze as run_analyze
    source = "text_file" if calibration_text else "glue" if task else "random_tokens"
    cfg = CalibrationConfig(source=source, num_sequences=num_sequences, batch_size=batch_size,
                            min_length=min(16, max_length or 16), max_length=max_length,
                            path=str(calibration_text) if calibration_text else None, task=task, data_dir=data_dir)
    res = run_analyze(list(models), output, cfg, seed, max_dimension, overwrite, progress=not quiet)
    for label, m in res["models"].items():
        click.echo(f"{label} {m['model']}: bars {m['bars']} over {m['tokens']:,} tokens "
                   f"(persistence {m['persistence_seconds']:.2f} s)")
    for dim, v in res.get("comparison", {}).items():
        click.echo(f"{dim}: bottleneck {v['bottleneck']:.4f}, Wasserstein-1 {v['wasserstein']:.4f}")
    click.echo(f"wrote {output}/ (report.html, analysis.json, model*/ with distances, diagrams, PNGs)")


@main.command()
@click.option("--model", "model", required=True, help="The pruned model folder (written by compress or compress prune).")
@click.option("--reference", required=True, help="The unpruned model it was pruned from: a folder, 'default' or a hub id.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the reconstructed model.")
@click.option("--calibration-text", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file, one text per line (default: random token sequences).")
@click.option("--task", default=None, help="Or a GLUE task's texts (with --data-dir).")
@click.option("--data-dir", default=None, help="Folder in the GLUE TSV layout, for --task.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "dev", "validation", "test"]),
              help="GLUE split for --task.")
@click.option("--num-sequences", default=256, show_default=True, type=BoundedInt(1, MAX_SEQUENCES))
@click.option("--max-length", default=None, type=BoundedInt(2, 4096), help=_MAX_LENGTH_HELP)
@click.option("--batch-size", default=32, show_default=True, type=BoundedInt(1, MAX_BATCH))
@click.option("--ridge", default=0.1, show_default=True, type=FiniteFloat(0),
              help="Pull toward the pruned weights, relative to the inputs' mean squared norm.")
@click.option("--kinds", default="both", show_default=True, type=click.Choice(["both", "attention", "ffn"]),
              help="Which output projections to re-fit.")
@click.option("--seed", default=0, show_default=True, type=BoundedInt(0, SEED_MAX))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reconstruct(model, reference, output, calibration_text, task, data_dir, split, num_sequences, max_length, batch_size,
                ridge, kinds, seed, overwrite, quiet):
    """Re-fit a pruned model's output projections (attention out, FFN out) by ridge least
    squares so each layer's output matches the unpruned reference's, layer by layer."""
    from .recipe import CalibrationConfig, ReconstructConfig

    if calibration_text is not None and task is not None:
        raise CompressorError("give --calibration-text or --task, not both")
    if task is not None:
        from .data.glue import glue_task

        glue_task(task)
    _precheck((model, reference), output, overwrite,
              ((calibration_text, "calibration text file"),) if calibration_text else (), inputs=(data_dir,))
    from .pipeline import run_reconstruct
    source = "text_file" if calibration_text else "glue" if task else "random_tokens"
    cal = CalibrationConfig(source=source, num_sequences=num_sequences, batch_size=batch_size,
                            min_length=min(16, max_length or 16), max_length=max_length,
                            path=str(calibration_text) if calibration_text else None, task=task, data_dir=data_dir,
                            split=split)
    res = run_reconstruct(model, reference, output, cal, ReconstructConfig(ridge=ridge, kinds=kinds), seed, overwrite,
                          progress=not quiet)
    for lf in res["layers"]:
        fits = ", ".join(f"{f['kind']} {'kept' if f['kept'] else 'undone'}" for f in lf["fits"])
        click.echo(f"layer {lf['layer']}: output error {lf['error_surgery']:.4g} -> {lf['error_reconstructed']:.4g} ({fits})")
    click.echo(f"{res['tokens']:,} calibration tokens, {res['seconds']:.1f} s; wrote {output}/ (the model and reconstruct.json)")


_DATA_DIR_HELP = "Folder in the GLUE TSV layout (<dir>/SST-2/dev.tsv ...); the hub when not given."


@main.command()
@click.option("--model", "model", required=True,
              help="A fine-tuned model folder, or an ONNX graph: a .onnx file or a folder written by 'compress export'.")
@click.option("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; or "
              "wikitext: perplexity of a causal language model on --data-file.")
@click.option("--data-dir", default=None, help=_DATA_DIR_HELP)
@click.option("--data-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="wikitext: the plain-text file scored (e.g. wikitext-2/test.txt), read whole as one token stream.")
@click.option("--split", default="dev", show_default=True,
              type=click.Choice(["dev", "train", "dev_matched", "dev_mismatched"]))
@click.option("--batch-size", default=None, type=BoundedInt(1, MAX_BATCH),
              help="Examples per batch (default 64); wikitext: windows per batch (default 4).")
@click.option("--max-length", default=None, type=BoundedInt(8, 4096),
              help=_MAX_LENGTH_HELP + " wikitext: the window (default the model's positions, at most 1024).")
@click.option("--stride", default=None, type=BoundedInt(1, 4096),
              help="wikitext: tokens between window starts (default max-length / 2; max-length: no overlap).")
@click.option("--limit", default=None, type=BoundedInt(1),
              help="Score a seeded sample of this many examples; wikitext: the first N tokens of the file.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def evaluate(ctx, model, task, data_dir, data_file, split, batch_size, max_length, stride, limit, json_path, quiet):
    """Score a model (PyTorch or ONNX) on a GLUE task with the task's metrics, or a causal
    language model's perplexity on a text file (--task wikitext --data-file F)."""
    from .data.glue import eval_splits, glue_task
    from .recipe import is_perplexity_task

    given = {p for p in ("data_dir", "split", "data_file", "stride")
             if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT}
    if is_perplexity_task(task):
        return _evaluate_perplexity(model, task.lower(), data_file, given, batch_size, max_length, stride, limit,
                                    json_path, quiet)
    wrong = sorted(given & {"data_file", "stride"})
    if wrong:
        raise CompressorError(f"--{wrong[0].replace('_', '-')} applies to --task wikitext (perplexity); "
                              f"{task} is scored as a GLUE task")
    batch_size = 64 if batch_size is None else batch_size
    glue_task(task)  # an unknown task fails before the model loads
    _check_evaluate_paths(model, json_path, [p for p in (data_dir,) if p is not None and Path(p).expanduser().exists()])
    splits = eval_splits(task, data_dir, split, limit)
    from .evaluate.glue import runner_for, runner_max_length, score_splits
    from .progress import StageTimer

    with StageTimer(not quiet)("load model"):
        runner = runner_for(model, attn_implementation=None)
    max_length = runner_max_length(runner, max_length, "--max-length")
    res = score_splits(runner, splits, batch_size, max_length, progress=not quiet)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in res.metrics.items())
    click.echo(f"{res.task} {res.split} ({runner.backend}, {res.examples} examples): {shown}")
    if json_path is not None:
        from .outputs import write_json_atomic

        write_json_atomic(json_path, res.to_json())
        click.echo(f"wrote {json_path}")


def _check_evaluate_paths(model: str, json_path: Path | None, inputs: list) -> None:
    """Before the model loads: the model path exists (a folder passes the model-folder
    checks), and ``--json`` is not the model, an input (``inputs`` + a model file) or the
    embedded default model's folder."""
    from .model_paths import _looks_like_path

    local = Path(model).expanduser()
    if _looks_like_path(model) and not local.exists():
        raise CompressorError(f"model path does not exist: {model}")
    if local.is_dir():
        from .files import check_model_folder

        check_model_folder(local)
    if json_path is not None:
        from .model_paths import DEFAULT_MODEL, default_model_path
        from .outputs import check_output_file

        protect = [local] if local.is_dir() else [default_model_path()] if model == DEFAULT_MODEL else []
        check_output_file(json_path, protect=protect, inputs=list(inputs) + ([local] if local.is_file() else []))


def _evaluate_perplexity(model, task, data_file, given, batch_size, max_length, stride, limit, json_path, quiet):
    """compress evaluate --task wikitext: the file and options are checked before the model loads."""

    wrong = sorted(given & {"data_dir", "split"})
    if wrong:
        raise CompressorError(f"--{wrong[0].replace('_', '-')} applies to GLUE tasks; --task {task} scores --data-file")
    if data_file is None:
        raise CompressorError(f"--task {task} needs --data-file: the plain-text file whose perplexity is measured "
                              f"(e.g. wikitext-2/test.txt)")
    if stride is not None and max_length is not None and stride > max_length:
        raise CompressorError(f"--stride is {stride}, above --max-length ({max_length}); use 1..{max_length}")
    if limit is not None and limit < 2:
        raise CompressorError(f"--limit is {limit}; perplexity needs at least 2 tokens")
    from .files import read_text

    text = read_text(Path(data_file).expanduser(), "text file")  # missing or not UTF-8: one line, before the model
    if not text.strip():
        raise CompressorError(f"text file {Path(data_file).expanduser()} has no text (it is empty or only whitespace)")
    _check_evaluate_paths(model, json_path, [Path(data_file).expanduser()])
    from .evaluate.perplexity import DEFAULT_BATCH, lm_runner_for, perplexity, resolve_lengths, token_stream
    from .progress import StageTimer

    timer = StageTimer(not quiet)
    with timer("load model"):
        runner, tokenizer, config = lm_runner_for(model, attn_implementation=None)
    max_length, stride = resolve_lengths(config, max_length, stride)
    with timer("tokenize"):
        ids, _ = token_stream(text, tokenizer, f"text file {data_file}")
    res = perplexity(runner, ids, max_length, stride, batch_size or DEFAULT_BATCH, limit=limit, source=str(data_file),
                     task=task, progress=not quiet)
    click.echo(f"{task} {Path(data_file).name} ({runner.backend}, {res.scored_tokens:,} of {res.file_tokens:,} tokens "
               f"scored, {res.windows} windows of {res.max_length}, stride {res.stride}): perplexity "
               f"{res.perplexity:.4f} (mean NLL {res.nll:.4f} nats)")
    if json_path is not None:
        from .outputs import write_json_atomic

        write_json_atomic(json_path, res.to_json())
        click.echo(f"wrote {json_path}")


@main.command()
@click.option("--model", "model", required=True, help="Model to fine-tune: a folder (pruned or not), 'default' or a hub id.")
@click.option("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.")
@click.option("--data-dir", default=None, help=_DATA_DIR_HELP)
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the fine-tuned model.")
@click.option("--max-steps", default=None, type=BoundedInt(1, MAX_STEPS), help="Optimizer steps (default: --epochs).")
@click.option("--epochs", default=None, type=FiniteFloat(0, MAX_EPOCHS, min_open=True), help="Passes over the data (default 1).")
@click.option("--lr", default=5e-5, show_default=True, type=FiniteFloat(0, 1))
@click.option("--batch-size", default=32, show_default=True, type=BoundedInt(1, MAX_BATCH))
@click.option("--max-length", default=None, type=BoundedInt(8, 4096), help=_MAX_LENGTH_HELP)
@click.option("--train-examples", default=None, type=BoundedInt(1), help="Train on a seeded subset.")
@click.option("--seed", default=0, show_default=True, type=BoundedInt(0, SEED_MAX))
@click.option("--teacher", default=None, help="Fine-tuned model to distill from (logit KD).")
@click.option("--alpha", default=0.5, show_default=True, type=FiniteFloat(0, 1), help="Weight of the KD loss.")
@click.option("--temperature", default=2.0, show_default=True,
              type=FiniteFloat(1e-3, MAX_TEMPERATURE))
@click.option("--diversity", default=0.0, show_default=True, type=FiniteFloat(0),
              help="Reward heads of one layer for attending differently (weight of the sqrt-JS term).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune(model, task, data_dir, output, max_steps, epochs, lr, batch_size, max_length, train_examples, seed,
             teacher, alpha, temperature, diversity, overwrite, quiet):
    """Fine-tune a (pruned) model on a GLUE task; adds a task head when it has none.

    \b
    Runs on a GPU when one is present; on several with:
    accelerate launch -m compressor.cli finetune ...
    """
    from .data.glue import glue_task
    from .recipe import DistillConfig, FinetuneConfig

    if max_steps is not None and epochs is not None:
        raise CompressorError("give --max-steps or --epochs, not both")
    glue_task(task)
    _precheck((model, *([teacher] if teacher else [])), output, overwrite, inputs=(data_dir,))
    from .pipeline import run_finetune
    cfg = FinetuneConfig(max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         distill=DistillConfig(alpha, temperature) if teacher else None, diversity=diversity)
    res = run_finetune(model, task, data_dir, output, cfg, max_length, train_examples, teacher, overwrite,
                       progress=not quiet)
    if res is not None:
        click.echo(f"{res.steps} steps, {res.examples_seen} examples, final loss {res.final_loss:.4f}, "
                   f"{res.seconds:.0f} s; wrote {output}/")


if __name__ == "__main__":
    main()
