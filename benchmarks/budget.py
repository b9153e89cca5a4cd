"""Accuracy at a compute budget, without retraining: one shared FLOPs budget vs today's
per-kind ratios, each scorer pair, with and without the reconstruct stage.

Bases: all-MiniLM-L6-v2 fine-tuned on SST-2 and on MRPC exactly as benchmarks/sweep.py
does (its cache, ~/.cache/compressor/sweep; a missing base is fine-tuned once).
Calibration: the first 1,024 labelled train sentences of the task (``--calibration N``) (``calibration: {source:
glue, split: train}``, max_length of the sweep's setup), seed 0, as the pipeline reads it.
Evaluation: the full dev split (SST-2 accuracy, MRPC F1), no fine-tuning anywhere.

Scoring, once per task: one capture pass for the seed scorers (redundancy with
js_query_sample 32, head_types without t-SNE and stability splits, sieve_roles,
persistence, topology, magnitude, random) and one gradient pass for fisher; each timed.

Rows, per (head scorer, neuron scorer) pair and FLOPs kept F:
- budget:   ``targets.budget: {flops: F}`` (split auto: importance for fisher/fisher,
            else measured on the calibration loss), without and with ``reconstruct: {}``
- per-kind: today's targets, r = 1 - F of the heads (global) and of each layer's FFN
            neurons (per_layer), which keeps F of the FLOPs; without reconstruct
redundancy clusters for the share of heads it is asked to remove: 1 - F in both modes.

Rows run in priority order, as far as ``--minutes`` allows (each written to the JSON as
it finishes): (1) fisher/fisher, every budget, SST-2; then the timed end-to-end compress
run (fisher, budget 0.6, reconstruct; no fine-tuning or evaluation); (2) the same on
MRPC; (3) every other pair at 0.6 on SST-2 (budget with/without reconstruct, per-kind);
(4) the rest. Budget + reconstruct rows of fisher/fisher on SST-2 are also exported to
ONNX (optimized graph) and timed with ONNX Runtime against the unpruned graph,
interleaved, at batch 8 x 128.

Writes benchmarks/results/budget.json (incrementally) and docs/figures/budget.png.
Run: python benchmarks/budget.py [--quick] [--tasks sst2,mrpc] [--budgets 0.7,0.6,0.5,0.4]
     [--pairs fisher/fisher,random/random] [--no-reconstruct] [--minutes 60] [--replot]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep
from _common import RESULTS, machine

from compressor import apply_plan
from compressor.arch import adapter_for
from compressor.capture import run_capture
from compressor.data.calibration import calibration_batches
from compressor.data.glue import eval_splits, glue_task
from compressor.evaluate.glue import TorchClassifier, score_splits
from compressor.export import export_model
from compressor.masking import CalibrationLoss
from compressor.metrics import FLOPS_SEQ_LEN, encoder_flops_per_token
from compressor.models import load_tokenizer
from compressor.planning import make_plan, plan_budget
from compressor.recipe import (
    BudgetTarget,
    CalibrationConfig,
    HeadTarget,
    NeuronTarget,
    ReconstructConfig,
)
from compressor.reconstruct import reconstruct
from compressor.scorers import SCORERS, ScoringContext

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "budget.png"
PAIRS = ("fisher/fisher", "random/random", "magnitude/magnitude", "redundancy/persistence",
         "head_types/persistence", "sieve_roles/persistence", "topology/persistence")
BUDGETS = (0.7, 0.6, 0.5, 0.4)
SEED_PARAMS = {
    "random": {"seed": 0},
    "magnitude": {},
    "redundancy": {"js_query_sample": 32},
    "head_types": {"tsne": False, "stability_splits": 0},
    "sieve_roles": {},
    "persistence": {},
    "topology": {},
}
CAL_SEQUENCES = 1024  # as recipes/budget-60.yaml; the README's first table used 256


def base_folder(setup) -> Path:
    """Where sweep.base_model caches the fine-tuned base of a setup (its key, spelt alike)."""
    key = hashlib.sha1(json.dumps([setup.task, setup.train_examples, setup.base_steps, setup.max_length,
                                   sweep.LR_BASE, sweep.BATCH]).encode()).hexdigest()[:10]
    return sweep.CACHE / f"{setup.task}-{key}"


class Task:
    """One task's base, data and scores, each built the first time a row needs it."""

    def __init__(self, name: str, tok, eval_limit: int | None, split_sequences: int | None,
                 train_base: bool = False, calibration: int = CAL_SEQUENCES) -> None:
        self.name, self.tok = name, tok
        self.setup = sweep.FULL[name]
        self.glue = glue_task(name)
        folder = base_folder(self.setup)
        if not (folder / "model.safetensors").is_file() and not train_base:
            raise SystemExit(f"{name}: no fine-tuned base in {folder}; run benchmarks/sweep.py first or pass --train-base")
        self.base = sweep.base_model(self.setup, tok).eval()  # the same cache key as the sweep
        self.adapter = adapter_for(self.base)
        self.layout = self.adapter.layout()
        self.base_flops = encoder_flops_per_token(self.layout, FLOPS_SEQ_LEN)
        self.dev = eval_splits(name, str(sweep.GLUE), "dev", eval_limit, 0)
        self.cal_cfg = CalibrationConfig(source="glue", task=name, data_dir=str(sweep.GLUE), split="train",
                                         num_sequences=calibration, batch_size=32, max_length=self.setup.max_length)
        start = time.perf_counter()
        self.batches = calibration_batches(self.cal_cfg, tok, self.base.config, 0)
        self.cal_seconds = time.perf_counter() - start
        self.split_batches = self.batches
        if split_sequences is not None:  # fewer sequences for the measured split's loss only
            keep, out = split_sequences, []
            for b in self.batches:
                if keep <= 0:
                    break
                out.append(b if b.input_ids.shape[0] <= keep else replace(
                    b, input_ids=b.input_ids[:keep], attention_mask=b.attention_mask[:keep],
                    labels=None if b.labels is None else b.labels[:keep]))
                keep -= out[-1].input_ids.shape[0]
            self.split_batches = out
        self.results: dict = {}
        self.scorers: dict = {}
        self.wanted: set[str] = set()  # every scorer the selected pairs use
        self.timings: dict[str, float] = {"calibration": self.cal_seconds}
        self.base_metric = self.score(self.base)
        self.base_onnx: Path | None = None
        print(f"{name}: unpruned {self.glue.main_metric} {self.base_metric:.2f} on {sum(map(len, self.dev))} dev "
              f"examples; calibration {calibration} train sentences, "
              f"{int(sum(int(b.attention_mask.sum()) for b in self.batches)):,} tokens", flush=True)

    def score(self, net) -> float:
        return 100 * score_splits(TorchClassifier(net, self.tok), self.dev, 64, self.setup.max_length).main

    def ensure_scores(self, names: set[str]) -> None:
        """Fisher from its own gradient pass; every seed scorer in ``self.wanted`` from one
        capture, the first time any of them is needed."""
        if names - {"fisher"}:
            names = names | (self.wanted - {"fisher"})
        missing = sorted(n for n in names if n not in self.results)
        if not missing:
            return
        ctx = ScoringContext(self.base, self.adapter, self.layout, 0, self.tok)
        if "fisher" in missing:
            s = SCORERS.get("fisher")()
            s.begin(ctx)
            start = time.perf_counter()
            run_capture(self.base, self.adapter, self.batches, [s], progress=False)
            self.results["fisher"] = s.finish()
            self.scorers["fisher"] = s
            self.timings["score_fisher"] = time.perf_counter() - start
            print(f"{self.name}: fisher (one gradient pass) in {self.timings['score_fisher']:.0f} s", flush=True)
            missing.remove("fisher")
        if missing:
            scorers = {n: SCORERS.get(n)(**SEED_PARAMS[n]) for n in missing}
            for s in scorers.values():
                s.begin(ctx)
            start = time.perf_counter()
            run_capture(self.base, self.adapter, self.batches, list(scorers.values()), progress=False)
            for n, s in scorers.items():
                self.results[n] = s.finish()
                self.scorers[n] = s
            took = time.perf_counter() - start
            self.timings["score_" + "+".join(missing)] = took
            print(f"{self.name}: {', '.join(missing)} from one capture in {took:.0f} s", flush=True)

    def head_scores(self, name: str, removed: float):
        if name == "redundancy":  # clusters depend on the share removed
            return self.scorers[name].head_scores(removed)
        return self.results[name].heads

    def flops_kept(self, net) -> float:
        return encoder_flops_per_token(adapter_for(net).layout(), FLOPS_SEQ_LEN) / self.base_flops

    def onnx_base(self) -> Path:
        if self.base_onnx is None:
            d = Path(tempfile.mkdtemp())
            export_model(self.base, self.tok, d, optimize_graph=True)
            self.base_onnx = d / "model_optimized.onnx"
        return self.base_onnx


def _kept(net) -> dict:
    lay = adapter_for(net).layout()
    return {"heads_per_layer": list(lay.heads_per_layer), "ffn_per_layer": list(lay.ffn_per_layer)}


def run_budget(t: Task, pair: str, share: float, with_reconstruct: bool, latency_runs: int) -> list[dict]:
    """Rows of the shared budget: without and (optionally) with reconstruct."""
    h, n = pair.split("/")
    t.ensure_scores({h, n})
    one_scale = h == n == "fisher"
    target = BudgetTarget(kind="flops", share=share, head_scorer=h, neuron_scorer=n,
                          split="importance" if one_scale else "measure")
    start = time.perf_counter()
    evaluate = None if one_scale else CalibrationLoss(t.base, t.adapter, t.split_batches)
    plan = plan_budget(t.layout, t.head_scores(h, 1 - share), t.results[n].neurons, target, evaluate=evaluate,
                       bias=True, source={})
    plan_s = time.perf_counter() - start
    info = plan.source["budget"]
    chosen = info["candidates"][info["chosen"]] if "candidates" in info else None
    start = time.perf_counter()
    pruned = apply_plan(t.base, plan)
    surgery_s = time.perf_counter() - start
    common = {"task": t.name, "pair": pair, "mode": "budget", "budget": share, "split": target.split,
              "split_chosen": chosen, "within_one_unit": info["within_one_unit"], "plan_s": plan_s,
              "surgery_s": surgery_s, "kept": _kept(pruned)}
    rows = [_row(t, pruned, common, False, None)]
    if with_reconstruct:
        res = reconstruct(pruned, t.base, adapter_for(pruned), t.adapter, t.batches, ReconstructConfig(),
                          progress=False)
        errs = {"surgery": [lf.error_surgery for lf in res.layers],
                "reconstructed": [lf.error_reconstructed for lf in res.layers]}
        row = _row(t, pruned, common, True, res.seconds, layer_error=errs)
        if latency_runs and pair == "fisher/fisher" and t.name == "sst2":
            # ORT's default session (idle workers spin) and one whose workers sleep: on this
            # shared 2-core machine spinning adds a per-operator wait that pruning cannot shrink
            lat = sweep.ort_latencies(pruned, t.tok, t.onnx_base(), latency_runs,
                                      {"default": {}, "no_spin": {"spin": False}})
            ms, base_ms = lat["default"]
            ns, base_ns = lat["no_spin"]
            row.update(latency_ms=ms, base_latency_ms=base_ms, latency_ratio=ms / base_ms,
                       latency_over_flops=ms / base_ms / row["flops_kept"],
                       latency_ms_no_spin=ns, base_latency_ms_no_spin=base_ns, latency_ratio_no_spin=ns / base_ns,
                       latency_over_flops_no_spin=ns / base_ns / row["flops_kept"])
            _print_latency(row)
        rows.append(row)
    return rows


def run_per_kind(t: Task, pair: str, share: float) -> list[dict]:
    """Today's targets: the same share of heads (global) and of each layer's neurons."""
    h, n = pair.split("/")
    t.ensure_scores({h, n})
    r = 1 - share
    start = time.perf_counter()
    plan = make_plan(t.layout, t.head_scores(h, r), t.results[n].neurons, HeadTarget(ratio=r, scope="global"),
                     NeuronTarget(ratio=r, scope="per_layer"), source={})
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    pruned = apply_plan(t.base, plan)
    common = {"task": t.name, "pair": pair, "mode": "per-kind", "budget": share, "split": None, "split_chosen": None,
              "within_one_unit": None, "plan_s": plan_s, "surgery_s": time.perf_counter() - start,
              "kept": _kept(pruned)}
    return [_row(t, pruned, common, False, None)]


def _row(t: Task, net, common: dict, rec: bool, rec_s: float | None, **extra) -> dict:
    metric = t.score(net)
    row = {**common, "reconstruct": rec, "flops_kept": t.flops_kept(net), "metric_name": t.glue.main_metric,
           "metric": metric, "base_metric": t.base_metric, "delta": metric - t.base_metric, "reconstruct_s": rec_s,
           **extra}
    print(f"  {t.name:5s} {row['pair']:24s} {row['mode']:8s} F={row['budget']:.1f} rec={'y' if rec else 'n'}  "
          f"FLOPs kept {row['flops_kept']:.3f}  {row['metric_name']} {metric:6.2f} ({row['delta']:+.2f})  "
          f"plan {row['plan_s']:.1f} s" + (f"  reconstruct {rec_s:.0f} s" if rec_s is not None else ""), flush=True)
    return row


def _print_latency(row: dict) -> None:
    print(f"    ORT 8x128: {row['latency_ms']:.1f} vs {row['base_latency_ms']:.1f} ms unpruned -> "
          f"{row['latency_ratio']:.3f}x at FLOPs {row['flops_kept']:.3f}: {row['latency_over_flops']:.3f}x the FLOPs "
          f"ratio; workers not spinning: {row['latency_ms_no_spin']:.1f} vs {row['base_latency_ms_no_spin']:.1f} ms, "
          f"{row['latency_over_flops_no_spin']:.3f}x", flush=True)


def timed_compress(t: Task, calibration: int = CAL_SEQUENCES) -> dict:
    """The whole compress run without fine-tuning or evaluation, through the pipeline:
    load, calibration, fisher scoring, budget search, surgery, reconstruct, save."""
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    folder = base_folder(t.setup)
    recipe = parse_recipe({  # recipes/budget-60.yaml without its finetune, export and evaluate
        "model": str(folder), "seed": 0,
        "task": {"name": t.name, "data_dir": str(sweep.GLUE), "max_length": t.setup.max_length},
        "calibration": {"source": "glue", "split": "train", "num_sequences": calibration,
                        "max_length": t.setup.max_length},
        "scorers": [{"name": "fisher"}],
        "targets": {"budget": {"flops": 0.6, "scorer": "fisher"}},
        "reconstruct": {},
    }, name="budget-60-timing")
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        metrics = run_recipe(recipe, Path(d) / "out", model=str(folder), progress=False)
        total = time.perf_counter() - start
    out = {"total_s": total, "stage_seconds": metrics["stage_seconds"], "flops_kept": metrics["flops_kept_share"],
           "load_average_before": _loadavg()}
    print(f"{t.name}: compress (fisher, budget 0.6, reconstruct; no fine-tune/evaluate) in {total:.0f} s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in metrics["stage_seconds"].items()), flush=True)
    return out


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def jobs(tasks: list[str], pairs: list[str], budgets: list[float], timing: bool) -> list[tuple]:
    """(priority, task, kind, pair, budget) in the order they run."""
    out = []
    for ti, task in enumerate(tasks):
        for pi, pair in enumerate(pairs):
            for bi, b in enumerate(budgets):
                for mi, mode in enumerate(("budget", "per-kind")):
                    if pair == "fisher/fisher" and mode == "budget":
                        prio = (0 if task == "sst2" else 1,)
                    elif task == "sst2" and abs(b - 0.6) < 1e-9:
                        prio = (2,)
                    else:
                        prio = (3,)
                    out.append((prio + (ti, bi, pi, mi), task, mode, pair, b))
    if timing and "sst2" in tasks:
        out.append(((0, 99), "sst2", "timing", "fisher/fisher", 0.6))
    return [j[1:] for j in sorted(out, key=lambda j: j[0])]


def write(rows: list[dict], meta: dict, name: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, **meta, "machine": machine()}, indent=2, default=float) + "\n")
    return path


def table(rows: list[dict]) -> str:
    head = ("| task | pair (heads/neurons) | mode | reconstruct | FLOPs kept | metric | delta | plan s | "
            "reconstruct s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["task"] != "sst2", PAIRS.index(r["pair"]) if r["pair"] in PAIRS else 99,
                                         -r["budget"], r["mode"] != "budget", r["reconstruct"])):
        lines.append(f"| {r['task']} | {r['pair']} | {r['mode']} | {'y' if r['reconstruct'] else 'n'} | "
                     f"{r['flops_kept']:.3f} | {r['metric']:.2f} | {r['delta']:+.2f} | {r['plan_s']:.1f} | "
                     + (f"{r['reconstruct_s']:.0f}" if r["reconstruct_s"] is not None else "") + " |")
    return "\n".join(lines)


def pareto_png(rows: list[dict], bases: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("sst2", "mrpc") if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(7.5 * len(tasks), 5.5), squeeze=False)
    colors = dict(zip(PAIRS, plt.cm.tab10(np.arange(len(PAIRS))), strict=True))
    styles = {("budget", True): ("-", "o", "budget + reconstruct"), ("budget", False): ("--", "o", "budget"),
              ("per-kind", False): (":", "s", "per-kind ratios (today)")}
    from matplotlib.lines import Line2D

    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in rows if r["task"] == task]
        base = bases[task]
        ax.axhline(base, color="black", lw=0.8)
        ax.scatter([1.0], [base], marker="*", s=220, color="black", zorder=5)
        for pair in PAIRS:
            for key, (ls, mk, _) in styles.items():
                pts = sorted((r for r in rs if r["pair"] == pair and (r["mode"], r["reconstruct"]) == key),
                             key=lambda r: r["flops_kept"])
                if pts:
                    ax.plot([p["flops_kept"] for p in pts], [p["metric"] for p in pts], linestyle=ls, marker=mk,
                            color=colors[pair], alpha=1.0 if key[1] else 0.55)
        ax.set_xlabel("encoder FLOPs per token kept (share of unpruned)")
        ax.set_ylabel(f"dev {glue_task(task).main_metric} (x100), no fine-tuning")
        ax.set_title(f"{task}: MiniLM-L6 pruned to a FLOPs budget (unpruned {base:.2f}, star)")
        ys = [r["metric"] for r in rs] + [base]
        ax.set_ylim(max(min(ys) - 2, 0), max(ys) + 1.5)
        ax.grid(alpha=0.3)
        shown = [p for p in PAIRS if any(r["pair"] == p for r in rs)]
        handles = [Line2D([], [], color=colors[p], lw=2, label=p) for p in shown]
        handles += [Line2D([], [], color="grey", linestyle=ls, marker=mk, label=what)
                    for ls, mk, what in styles.values()]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="FLOPs kept, e.g. 0.6,0.5")
    ap.add_argument("--pairs", default=",".join(PAIRS), help="head/neuron scorer pairs")
    ap.add_argument("--no-reconstruct", action="store_true", help="budget rows without reconstruct only")
    ap.add_argument("--no-per-kind", action="store_true", help="skip today's per-kind baselines")
    ap.add_argument("--no-timing", action="store_true", help="skip the timed end-to-end compress run")
    ap.add_argument("--quick", action="store_true", help="SST-2, budget 0.6, fisher and random, 300 dev examples")
    ap.add_argument("--eval-examples", type=int, default=None, help="dev subset (default: the full dev split)")
    ap.add_argument("--calibration", type=int, default=CAL_SEQUENCES,
                    help=f"labelled train sentences for scoring, the split and reconstruct (default {CAL_SEQUENCES})")
    ap.add_argument("--split-sequences", type=int, default=None,
                    help="calibration sequences for the measured split's loss (default: all of them)")
    ap.add_argument("--runs", type=int, default=20, help="timed ORT calls per model")
    ap.add_argument("--minutes", type=float, default=None, help="start no new row after this long")
    ap.add_argument("--name", default=None, help="results file name (default budget / budget-quick)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the results JSON and run only the missing ones")
    ap.add_argument("--train-base", action="store_true", help="fine-tune a base missing from the sweep's cache")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG and table from the last JSON")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.budgets, args.pairs = "sst2", "0.6", "fisher/fisher,random/random"
        args.eval_examples = args.eval_examples or 300
    name = args.name or ("budget-quick" if args.quick else "budget")
    if args.replot:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        pareto_png(data["rows"], {t: v["base_metric"] for t, v in data["tasks"].items()},
                   FIGURE if name == "budget" else RESULTS / f"{name}.png")
        print(table(data["rows"]))
        return
    pairs = args.pairs.split(",")
    for p in pairs:
        if p not in PAIRS:
            raise SystemExit(f"--pairs: {p!r} is not one of {', '.join(PAIRS)}")
    budgets = [float(b) for b in args.budgets.split(",")]
    tasks = args.tasks.split(",")
    torch.manual_seed(0)
    tok = load_tokenizer("default")
    start = time.perf_counter()
    loaded: dict[str, Task] = {}
    rows: list[dict] = []
    meta: dict = {"tasks": {}, "calibration_sequences": args.calibration, "split_sequences": args.split_sequences,
                  "eval_examples": args.eval_examples, "reconstruct": ReconstructConfig().__dict__,
                  "seed_params": SEED_PARAMS, "timing": None, "skipped": []}
    queue = jobs(tasks, pairs, budgets, not args.no_timing)
    if args.append and (RESULTS / f"{name}.json").is_file():
        old = json.loads((RESULTS / f"{name}.json").read_text())
        if old.get("calibration_sequences") != args.calibration:
            raise SystemExit(f"--append: {name}.json was measured with {old.get('calibration_sequences')} calibration "
                             f"sentences, not {args.calibration}; pass --name for a new file")
        rows = old["rows"]
        meta.update(timing=old.get("timing"), tasks=old.get("tasks", {}))
        done = {(r["task"], r["mode"], r["pair"], r["budget"]) for r in rows}
        if meta["timing"] is not None:
            done.add(("sst2", "timing", "fisher/fisher", 0.6))
        queue = [j for j in queue if tuple(j) not in done]
    while queue:
        task, mode, pair, b = queue.pop(0)
        if mode == "per-kind" and args.no_per_kind:
            continue
        if args.minutes is not None and time.perf_counter() - start > 60 * args.minutes:
            meta["skipped"].append({"task": task, "mode": mode, "pair": pair, "budget": b})
            continue
        if task not in loaded:
            if not args.train_base and not (base_folder(sweep.FULL[task]) / "model.safetensors").is_file():
                # the base is still being fine-tuned elsewhere: run other tasks' rows meanwhile
                if any(j[0] != task for j in queue):
                    queue.insert(next(i for i, j in enumerate(queue) if j[0] != task) + 1, (task, mode, pair, b))
                else:
                    print(f"{task}: waiting for the base in {base_folder(sweep.FULL[task])}", flush=True)
                    time.sleep(30)
                    queue.insert(0, (task, mode, pair, b))
                continue
            loaded[task] = Task(task, tok, args.eval_examples, args.split_sequences, args.train_base, args.calibration)
        t = loaded[task]
        t.wanted = {s for p in pairs for s in p.split("/")}
        if mode == "timing":
            meta["timing"] = timed_compress(t, args.calibration)
        elif mode == "budget":
            rows += run_budget(t, pair, b, not args.no_reconstruct, args.runs)
        else:
            rows += run_per_kind(t, pair, b)
        meta["tasks"].update({k: {"base_metric": v.base_metric, "metric": v.glue.main_metric, "timings": v.timings,
                                  "dev_examples": sum(map(len, v.dev)), "max_length": v.setup.max_length}
                              for k, v in loaded.items()})
        meta["minutes"] = (time.perf_counter() - start) / 60
        write(rows, meta, name)
    path = write(rows, meta, name)
    if rows:
        fig = FIGURE if name == "budget" else RESULTS / f"{name}.png"
        pareto_png(rows, {k: v["base_metric"] for k, v in meta["tasks"].items()}, fig)
        print(table(rows))
        print(f"wrote {path} and {fig}; {meta['minutes']:.1f} min in all")
    if meta["skipped"]:
        print(f"{len(meta['skipped'])} job(s) skipped for time (listed in the JSON)")


if __name__ == "__main__":
    main()
