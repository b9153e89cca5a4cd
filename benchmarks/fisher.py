"""fisher scorer on MiniLM: time, and whether the label-free mode measures what it claims.

1. Time of fisher scoring on SST-2 train sentences: with labels (MiniLM with a freshly
   initialized SST-2 head, only for timing; no fine-tuned base is needed for that) and
   label-free (``label_free: output``) on the embedded sentence encoder; then the
   budget planner's time (importance search + rearrangement, flops 0.6).
2. Label-free justification: the label-free score of unit i estimates ||J_i||^2, the
   squared output change of removing it to first order. Against direct ablation (the
   real ||h(without i) - h||^2 over the same sentences' final hidden states, every head
   and a random sample of neurons): Spearman rank correlation and the median ratio.

Run: python benchmarks/fisher.py [--sentences 256] [--ablate 32] [--neurons 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor import load_model  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.data.glue import glue_task  # noqa: E402
from compressor.masking import CalibrationLoss  # noqa: E402
from compressor.models import load_tokenizer  # noqa: E402
from compressor.planning import plan_budget  # noqa: E402
from compressor.recipe import BudgetTarget, CalibrationConfig  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.task_head import with_task_head  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def score(model, batches, **params):
    a = adapter_for(model)
    s = SCORERS.get("fisher")(**params)
    s.begin(ScoringContext(model, a, a.layout(), 0))
    start = time.perf_counter()
    run_capture(model, a, batches, [s], progress=False)
    res = s.finish()
    return res, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--ablate", type=int, default=32, help="sentences for the ablation check")
    ap.add_argument("--neurons", type=int, default=100, help="neurons ablated one at a time")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer("default")
    encoder = load_model("default", attn_implementation="eager")
    cfg = CalibrationConfig(source="glue", task="sst2", data_dir=args.data, num_sequences=args.sentences,
                            max_length=64)
    batches = calibration_batches(cfg, tok, encoder.config, 0)
    rows = []
    labelled = with_task_head(encoder, glue_task("sst2")).eval()
    res, t = score(labelled, batches)
    rows.append({"what": f"fisher, labels (random head), {args.sentences} sentences", "seconds": t})
    print(rows[-1], flush=True)
    a = adapter_for(labelled)
    start = time.perf_counter()
    plan = plan_budget(a.layout(), res.heads, res.neurons,
                       BudgetTarget("flops", 0.6, "fisher", "fisher", split="importance"))
    rows.append({"what": "budget planner: importance search + rearrangement, flops 0.6",
                 "seconds": time.perf_counter() - start})
    print(rows[-1], plan.source["budget"]["achieved"], flush=True)
    for probes in (1, 4):
        _, t = score(encoder, batches, label_free="output", probes=probes)
        rows.append({"what": f"fisher, label_free output, probes {probes}, {args.sentences} sentences", "seconds": t})
        print(rows[-1], flush=True)

    # --- label-free vs direct ablation on the sentence encoder --------------------------
    small = calibration_batches(CalibrationConfig(source="glue", task="sst2", data_dir=args.data,
                                                  num_sequences=args.ablate, max_length=64), tok, encoder.config, 0)
    a = adapter_for(encoder)
    lay = a.layout()
    loss = CalibrationLoss(encoder, a, small)
    energy = float(sum(r.pow(2).sum() for r in loss.reference))
    rng = np.random.default_rng(0)
    flat = rng.choice(sum(lay.ffn_per_layer), args.neurons, replace=False)
    neurons = [(int(i // lay.ffn_per_layer[0]), int(i % lay.ffn_per_layer[0])) for i in flat]
    start = time.perf_counter()
    heads_true = [loss({l: [h]}, {}) * energy for l in range(lay.num_layers) for h in range(lay.heads_per_layer[l])]
    neurons_true = [loss({}, {l: [j]}) * energy for l, j in neurons]
    t_ablate = time.perf_counter() - start
    checks = []
    for probes in (1, 4, 16):
        res, _ = score(encoder, small, label_free="output", probes=probes)
        hp = np.concatenate([np.asarray(v) for v in res.heads.values])
        npred = np.array([res.neurons.values[l][j] for l, j in neurons])
        checks.append({
            "probes": probes,
            "heads_spearman": float(spearmanr(hp, heads_true)[0]),
            "heads_median_ratio": float(np.median(hp / np.asarray(heads_true))),
            "neurons_spearman": float(spearmanr(npred, neurons_true)[0]),
            "neurons_median_ratio": float(np.median(npred / np.asarray(neurons_true))),
        })
        print(checks[-1], flush=True)
    report("fisher", rows, {"label_free_vs_ablation": checks, "ablation_seconds": t_ablate,
                            "ablation_sentences": args.ablate, "neurons_sampled": args.neurons})


if __name__ == "__main__":
    main()
