"""Accuracy vs latency on real GLUE data: every scorer at several sparsities.

For each task, all-MiniLM-L6-v2 is fine-tuned on a train subset (cached in
~/.cache/compressor/sweep, outside git). One capture pass over train sentences the base
never saw scores the heads and neurons with every scorer. Then, for each
(scorer, sparsity): prune the base, score on dev ("before"), recovery fine-tune with
logit distillation from the base (same budget for every configuration), score again
("after"), export to ONNX (optimized) and time it against the unpruned graph,
interleaved, at batch 8 x 128 tokens.

Configurations at sparsity r:
- heads:    random, magnitude, redundancy, head_types, sieve_roles remove r of the 72 heads
- neurons:  random, magnitude, persistence remove r of each layer's FFN neurons
- combined: random, and redundancy + persistence, remove r of the heads and r of the neurons
Research scorers are compared with `random` of the same kind and sparsity.

Writes benchmarks/results/sweep.json and sweep.png (Pareto: accuracy vs latency).
Run: python benchmarks/sweep.py [--quick] [--tasks sst2,mrpc]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, report  # noqa: E402

from compressor import apply_plan  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.data.glue import glue_task, load_glue  # noqa: E402
from compressor.evaluate.glue import TorchClassifier, score_splits  # noqa: E402
from compressor.evaluate.latency import measure, ort_runner, ort_session, random_batch  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.finetune import finetune  # noqa: E402
from compressor.metrics import FLOPS_SEQ_LEN, encoder_flops_per_token  # noqa: E402
from compressor.models import count_parameters, load_model, load_tokenizer, save_model  # noqa: E402
from compressor.planning import plan_heads, plan_neurons  # noqa: E402
from compressor.recipe import CalibrationConfig, DistillConfig, FinetuneConfig, HeadTarget, NeuronTarget  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.types import PruningPlan  # noqa: E402

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
CACHE = Path.home() / ".cache" / "compressor" / "sweep"
HEAD_SCORERS = ("random", "magnitude", "redundancy", "head_types", "sieve_roles")
NEURON_SCORERS = ("random", "magnitude", "persistence")
COMBINED = {"random": ("random", "random"), "redundancy+persistence": ("redundancy", "persistence")}


@dataclass(frozen=True)
class TaskSetup:
    task: str
    train_examples: int
    base_steps: int
    recovery_steps: int
    max_length: int
    sparsities: tuple[float, ...]
    eval_examples: int | None = None


FULL = {
    "sst2": TaskSetup("sst2", 8000, 250, 40, 64, (0.3, 0.45, 0.6)),
    "mrpc": TaskSetup("mrpc", 3000, 190, 30, 128, (0.5,)),
}
QUICK = {
    "sst2": TaskSetup("sst2", 2000, 60, 15, 64, (0.5,), eval_examples=400),
    "mrpc": TaskSetup("mrpc", 1000, 40, 10, 128, (0.5,), eval_examples=200),
}
LR_BASE, LR_RECOVERY, BATCH = 1e-4, 1e-4, 32
DISTILL = DistillConfig(alpha=0.5, temperature=2.0)


def base_model(setup: TaskSetup, tok):
    """The unpruned model fine-tuned on the task, from the cache when it is there."""
    key = hashlib.sha1(json.dumps([setup.task, setup.train_examples, setup.base_steps, setup.max_length,
                                   LR_BASE, BATCH]).encode()).hexdigest()[:10]
    folder = CACHE / f"{setup.task}-{key}"
    if not (folder / "model.safetensors").is_file():
        train = load_glue(setup.task, str(GLUE), "train").subset(setup.train_examples, seed=0)
        net, res = finetune(load_model("default", attn_implementation="eager"), tok, train,
                            FinetuneConfig(max_steps=setup.base_steps, lr=LR_BASE, batch_size=BATCH, seed=0),
                            setup.max_length)
        print(f"{setup.task}: base fine-tuned in {res.seconds:.0f} s, final loss {res.final_loss:.3f}")
        save_model(net, folder, tok)
    return load_model(str(folder), attn_implementation="eager")


def calibration(setup: TaskSetup, tok, config):
    """Train sentences the base did not see: the end of the shuffled train split."""
    train = load_glue(setup.task, str(GLUE), "train")
    unseen = np.random.default_rng(0).permutation(len(train))[setup.train_examples:]
    texts = [train.texts[i] for i in unseen[:512]]
    if len(texts) < 64:
        raise SystemExit(f"{setup.task}: only {len(texts)} train examples left for calibration; lower train_examples")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(" ".join(t) for t in texts) + "\n")
    cfg = CalibrationConfig(source="text_file", path=f.name, num_sequences=256, batch_size=32, max_length=128)
    return calibration_batches(cfg, tok, config, seed=0)


def score_all(net, tok, setup: TaskSetup):
    a = adapter_for(net)
    ctx = ScoringContext(net, a, a.layout(), 0, tok)
    scorers = {
        "random": SCORERS.get("random")(seed=0),
        "magnitude": SCORERS.get("magnitude")(),
        "redundancy": SCORERS.get("redundancy")(js_query_sample=32),
        "head_types": SCORERS.get("head_types")(tsne=False, stability_splits=0),
        "sieve_roles": SCORERS.get("sieve_roles")(),
        "persistence": SCORERS.get("persistence")(),
    }
    for s in scorers.values():
        s.begin(ctx)
    start = time.perf_counter()
    run_capture(net, a, calibration(setup, tok, net.config), list(scorers.values()), progress=False)
    results = {name: s.finish() for name, s in scorers.items()}
    print(f"{setup.task}: all scorers from one capture in {time.perf_counter() - start:.0f} s")
    return scorers, results


def plans(setup: TaskSetup, layout, scorers, results) -> list[tuple[str, str, float, PruningPlan]]:
    def heads(name: str, r: float) -> dict:
        sc = scorers[name].head_scores(r) if name == "redundancy" else results[name].heads
        return plan_heads(sc, layout, HeadTarget(ratio=r, scope="global"))

    def neurons(name: str, r: float) -> dict:
        return plan_neurons(results[name].neurons, layout, NeuronTarget(ratio=r, scope="per_layer"))

    out = []
    for r in setup.sparsities:
        out += [("heads", n, r, PruningPlan.build(heads=heads(n, r))) for n in HEAD_SCORERS]
        out += [("neurons", n, r, PruningPlan.build(neurons=neurons(n, r))) for n in NEURON_SCORERS]
        out += [("combined", n, r, PruningPlan.build(heads=heads(h, r), neurons=neurons(f, r)))
                for n, (h, f) in COMBINED.items()]
    return out


def ort_latency(net, tok, base_onnx: Path, runs: int) -> tuple[float, float]:
    """(pruned ms, unpruned ms), timed interleaved at batch 8 x 128 with ORT's default session."""
    return ort_latencies(net, tok, base_onnx, runs, {"default": {}})["default"]


def ort_latencies(net, tok, base_onnx: Path, runs: int, settings: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """{setting: (pruned ms, unpruned ms)} at batch 8 x 128, every session of every setting
    (``ort_session`` keyword arguments, e.g. {"spin": False}) timed in one interleaved round."""
    with tempfile.TemporaryDirectory() as d:
        export_model(net, tok, Path(d), optimize_graph=True)
        feeds = random_batch(net.config.vocab_size, 8, 128)
        runners = {}
        for name, kw in settings.items():
            runners[(name, "pruned")] = ort_runner(ort_session(Path(d) / "model_optimized.onnx", **kw), feeds)
            runners[(name, "base")] = ort_runner(ort_session(base_onnx, **kw), feeds)
        timed = measure(runners, warmup=2, runs=runs)
    return {name: (timed[(name, "pruned")][0], timed[(name, "base")][0]) for name in settings}


def run_task(setup: TaskSetup, tok, runs: int, progress: bool, kinds: tuple[str, ...] = ("heads", "neurons", "combined"),
             same_budget_baseline: bool = False) -> list[dict]:
    task = glue_task(setup.task)
    dev = [load_glue(setup.task, str(GLUE), sp).subset(setup.eval_examples, seed=0) for sp in task.dev_splits]
    train = load_glue(setup.task, str(GLUE), "train").subset(setup.train_examples, seed=1)
    base = base_model(setup, tok)
    layout = adapter_for(base).layout()
    base_flops = encoder_flops_per_token(layout, FLOPS_SEQ_LEN)
    base_params = count_parameters(base)

    def score(net) -> float:
        return 100 * score_splits(TorchClassifier(net, tok), dev, 64, setup.max_length).main

    base_acc = score(base)
    print(f"{setup.task}: unpruned {task.main_metric} {base_acc:.2f} on {sum(map(len, dev))} dev examples")
    tmp = Path(tempfile.mkdtemp())
    export_model(base, tok, tmp, optimize_graph=True)
    base_onnx = tmp / "model_optimized.onnx"
    scorers, results = score_all(base, tok, setup)

    rows = [{"task": setup.task, "kind": "none", "scorer": "unpruned", "sparsity": 0.0, "metric": task.main_metric,
             "before": base_acc, "after": base_acc, "params_kept": 1.0, "flops_kept": 1.0, "latency_ms": None,
             "latency_ratio": 1.0}]
    recovery = FinetuneConfig(max_steps=setup.recovery_steps, lr=LR_RECOVERY, batch_size=BATCH, seed=0,
                              warmup_ratio=0.1, distill=DISTILL)
    if same_budget_baseline:
        # the unpruned model trained as long again, the same way: what recovery alone is worth
        # finetune trains in place: train a copy, so the base stays the teacher and the pruning source
        more, _ = finetune(copy.deepcopy(base), tok, train, recovery, setup.max_length, teacher=base,
                           progress=progress)
        acc_more = score(more)
        rows.append({**rows[0], "scorer": "unpruned+recovery", "before": base_acc, "after": acc_more})
        print(f"{setup.task}: unpruned after the same recovery budget: {acc_more:.2f}")
    for kind, name, r, plan in plans(setup, layout, scorers, results):
        if kind not in kinds:
            continue
        start = time.perf_counter()
        pruned = apply_plan(base, plan)
        before = score(pruned)
        recovered, _ = finetune(pruned, tok, train, recovery, setup.max_length, teacher=base, progress=progress)
        after = score(recovered)
        ms, base_ms = ort_latency(recovered, tok, base_onnx, runs)
        lay = adapter_for(recovered).layout()
        row = {"task": setup.task, "kind": kind, "scorer": name, "sparsity": r, "metric": task.main_metric,
               "before": before, "after": after, "params_kept": count_parameters(recovered) / base_params,
               "flops_kept": encoder_flops_per_token(lay, FLOPS_SEQ_LEN) / base_flops, "latency_ms": ms,
               "latency_ratio": ms / base_ms}
        rows.append(row)
        print(f"  {setup.task} {kind:8s} {name:24s} r={r:.1f}  before {before:6.2f}  after {after:6.2f}  "
              f"FLOPs kept {row['flops_kept']:.2f}  ORT {ms:.1f} ms ({row['latency_ratio']:.2f}x)  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
        del pruned, recovered
    base_row = rows[0]
    base_row["latency_ms"] = float(np.median([r["latency_ms"] / r["latency_ratio"] for r in rows
                                              if r["kind"] != "none"]))
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    sst = [r for r in rows if r["task"] == "sst2"]
    if sst:
        base = next(r for r in sst if r["scorer"] == "unpruned")["after"]
        deep = [r for r in sst if r["flops_kept"] <= 0.60 and r["kind"] != "none"]
        if deep:
            best = max(deep, key=lambda r: r["after"])
            drop = base - best["after"]
            out.append(f"SST-2, >=40% of encoder FLOPs removed: best is {best['kind']} {best['scorer']} r={best['sparsity']} "
                       f"({1 - best['flops_kept']:.0%} removed) at {best['after']:.2f} vs {base:.2f} unpruned: "
                       f"{drop:+.2f} points lost -> target (<= 1.0) {'MET' if drop <= 1.0 else 'NOT MET'}")
            same = [r for r in sst if r["scorer"] == "unpruned+recovery"]
            if same:
                out.append(f"  against the unpruned model trained for the same extra budget ({same[0]['after']:.2f}): "
                           f"{same[0]['after'] - best['after']:+.2f} points")
    for r in rows:
        if r["kind"] == "none" or r["scorer"] == "random":  # unpruned rows and the baseline itself
            continue
        rnd = next(x for x in rows if x["task"] == r["task"] and x["kind"] == r["kind"] and x["scorer"] == "random"
                   and x["sparsity"] == r["sparsity"])
        if r["after"] < rnd["after"]:
            out.append(f"{r['task']} {r['kind']} r={r['sparsity']}: {r['scorer']} {r['after']:.2f} is below random "
                       f"{rnd['after']:.2f} after recovery (before recovery: {r['before']:.2f} vs {rnd['before']:.2f})")
    if len(out) <= 1:
        out.append("every research scorer is at least as good as random at every sparsity, after recovery")
    return out


def pareto_png(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.5), squeeze=False)
    names = sorted({(r["kind"], r["scorer"]) for r in rows if r["kind"] != "none"})
    colors = dict(zip(names, plt.cm.tab20(np.linspace(0, 1, max(len(names), 2))), strict=False))
    marker = {"heads": "o", "neurons": "s", "combined": "D"}
    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in rows if r["task"] == task]
        base = next(r for r in rs if r["kind"] == "none")
        ax.scatter([1.0], [base["after"]], marker="*", s=250, color="black", label="unpruned", zorder=5)
        for key in names:
            pts = sorted((r for r in rs if (r["kind"], r["scorer"]) == key), key=lambda r: r["latency_ratio"])
            if not pts:
                continue
            xs = [p["latency_ratio"] for p in pts]
            ax.plot(xs, [p["after"] for p in pts], marker=marker[key[0]], color=colors[key], label=f"{key[0]}: {key[1]}")
            ax.scatter(xs, [p["before"] for p in pts], marker=marker[key[0]], facecolors="none", edgecolors=colors[key],
                       alpha=0.6)
        pts = sorted(rs, key=lambda r: r["latency_ratio"])
        front, best = [], -np.inf
        for p in pts:
            if p["after"] > best:
                front.append(p)
                best = p["after"]
        ax.step([p["latency_ratio"] for p in front], [p["after"] for p in front], where="post", color="grey",
                linestyle=":", label="Pareto front")
        ax.set_xlabel(f"ONNX Runtime fp32 latency / unpruned (batch 8 x 128; unpruned {base['latency_ms']:.0f} ms)")
        ax.set_ylabel(f"dev {base.get('metric') or glue_task(task).main_metric} (x100): filled after recovery, hollow before")
        ax.set_title(f"{task}: MiniLM-L6, pruned then recovered (KD)")
        lo = min(p["after"] for p in rs)
        ax.set_ylim(max(lo - 3, 0), base["after"] + 2)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small budgets, one sparsity: a few minutes")
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--runs", type=int, default=15, help="timed ORT calls per configuration")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG and verdicts from the last JSON")
    ap.add_argument("--kinds", default="heads,neurons,combined", help="which configurations to run")
    ap.add_argument("--sparsities", default=None, help="override, e.g. 0.4")
    ap.add_argument("--recovery-steps", type=int, default=None, help="override the recovery budget")
    ap.add_argument("--same-budget-baseline", action="store_true",
                    help="also train the unpruned model for the recovery budget (the fair reference)")
    ap.add_argument("--name", default=None, help="results file name (default sweep / sweep-quick)")
    args = ap.parse_args()
    name = args.name or ("sweep-quick" if args.quick else "sweep")
    if args.replot:
        rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
        pareto_png(rows, RESULTS / f"{name}.png")
        for v in verdicts(rows):
            print("-", v)
        return
    torch.manual_seed(0)
    setups = dict(QUICK if args.quick else FULL)
    for t, st in list(setups.items()):
        if args.sparsities:
            st = replace(st, sparsities=tuple(float(x) for x in args.sparsities.split(",")))
        if args.recovery_steps:
            st = replace(st, recovery_steps=args.recovery_steps)
        setups[t] = st
    tok = load_tokenizer("default")
    start = time.perf_counter()
    rows = []
    for t in args.tasks.split(","):
        rows += run_task(setups[t], tok, args.runs, args.progress, tuple(args.kinds.split(",")),
                         args.same_budget_baseline)
    minutes = (time.perf_counter() - start) / 60
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    notes = verdicts(rows)
    report(name, table, {"setups": {t: setups[t].__dict__ for t in args.tasks.split(",")}, "minutes": minutes,
                         "verdicts": notes, "lr_recovery": LR_RECOVERY, "distill": DISTILL.__dict__})
    pareto_png(rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / f'{name}.png'}; {minutes:.1f} min in all")
    for v in notes:
        print("-", v)


if __name__ == "__main__":
    main()
