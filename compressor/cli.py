"""Command line: ``compress --recipe FILE`` and subcommands."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .errors import CompressorError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns user errors raised anywhere below into one line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressorError as e:
            _fail(str(e))


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
    from .pipeline import default_output, run_recipe
    from .recipe import load_recipe, with_calibration_text

    r = load_recipe(recipe)
    if calibration_text is not None:
        r = with_calibration_text(r, str(calibration_text))
    metrics = run_recipe(r, output=output, overwrite=overwrite, model=model, progress=not quiet)
    out = output if output is not None else default_output(r)
    b, a = metrics["before"], metrics["after"]
    click.echo(
        f"{r.name}: parameters {b['parameters']:,} -> {a['parameters']:,} "
        f"({metrics['parameters_kept_share']:.1%} kept), encoder FLOPs/token "
        f"{metrics['flops_kept_share']:.1%} kept, heads {sum(b['heads_per_layer'])} -> {sum(a['heads_per_layer'])}, "
        f"FFN neurons {sum(b['ffn_per_layer'])} -> {sum(a['ffn_per_layer'])}"
    )
    if "export" in metrics:
        ex = metrics["export"]
        parity = ", ".join(f"{k} {v:.2g}" for k, v in ex["parity"].items())
        click.echo(f"ONNX: max |onnx - torch| {parity}; fused attention heads per layer {ex['fused_attention']}")
    click.echo(f"wrote {out}/ (model/, plan.json, scores/, metrics.json, report.html"
               f"{', onnx/' if 'export' in metrics else ''})")


@main.command()
@click.option("--model", "model", required=True, help="Model to prune: 'default', a local folder or a hub id.")
@click.option("--plan", "plan", required=True, type=click.Path(dir_okay=False, path_type=Path), help="plan.json to replay.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the pruned model.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
def prune(model, plan, output, overwrite):
    """Replay a saved pruning plan on a model."""
    from .pipeline import run_plan

    res = run_plan(model, plan, output, overwrite)
    click.echo(f"parameters {res['before']['parameters']:,} -> {res['after']['parameters']:,}; wrote {output}/")


@main.command()
@click.option("--model", "model", required=True, help="Model to export: a folder (pruned or not), 'default' or a hub id.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the ONNX files.")
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="ONNX Runtime transformer fusions.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write a dynamic int8 graph.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Max |onnx - torch| for fp32 graphs.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
def export(model, output, optimize, quantize, atol, overwrite):
    """Export to ONNX, check parity with PyTorch, optimize and quantize for ONNX Runtime."""
    from .pipeline import run_export
    from .recipe import ExportConfig

    if atol < 0:
        raise CompressorError(f"--atol must be >= 0; got {atol}")
    res = run_export(model, output, ExportConfig(optimize=optimize, quantize=quantize, atol=atol), overwrite)
    parity = ", ".join(f"{k} {v:.2g}" for k, v in res.parity.items())
    fused = "" if not res.fused_attention else f"; fused attention heads per layer {res.fused_attention}"
    click.echo(f"max |onnx - torch|: {parity}{fused}")
    for note in res.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}/")


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise click.BadParameter(f"must be a comma-separated list of positive integers; got {value!r}")
    return out


@main.command()
@click.option("--model", "model", default=None, help="PyTorch model to time: a folder, 'default' or a hub id.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder written by 'compress export' (times ORT fp32 and int8 graphs found there).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_int_list)
@click.option("--seq-lens", default="32,128", show_default=True, callback=_int_list)
@click.option("--runs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
def bench(model, onnx_dir, batch_sizes, seq_lens, runs, warmup, json_path):
    """Latency: PyTorch vs ONNX Runtime fp32 vs int8, median and p90 per batch x sequence."""
    import json

    from .evaluate.latency import Subject, benchmark
    from .models import load_model

    if model is None and onnx_dir is None:
        raise CompressorError("give --model, --onnx or both")
    if onnx_dir is not None and not onnx_dir.is_dir():
        raise CompressorError(f"ONNX folder not found: {onnx_dir}")
    net = load_model(model, attn_implementation=None) if model is not None else None
    shapes = [(b, s) for b in batch_sizes for s in seq_lens]
    subject = Subject(model or str(onnx_dir), net, onnx_dir)
    rows = benchmark([subject], shapes, runs, warmup, progress=click.echo)
    if json_path is not None:
        json_path.write_text(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
