"""Cost of the head scorers as ratios to a plain eager forward pass, and the evidence
that redundancy matrices from random tokens match those from real text.

MiniLM, 256 sequences x 128 tokens, batch 32. Targets: capture + head_types +
sieve_roles + the matrix-product distances (cosine, correlation, Bhattacharyya) at
most 1.5x the forward; exact Jensen-Shannon at most 2x.
Run: python benchmarks/heads.py [--sequences 256]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.models import load_model, load_tokenizer  # noqa: E402
from compressor.recipe import CalibrationConfig  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.scorers.base import Scorer  # noqa: E402

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "valid.txt"


class AttentionsOnly(Scorer):
    name = "attentions-only"
    needs = frozenset({"attentions"})

    def __init__(self):
        pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--js-sample", type=int, default=32, help="query positions for the subsampled JS")
    args = ap.parse_args()

    model = load_model("default", attn_implementation="eager")
    tok = load_tokenizer("default")
    a = adapter_for(model)
    cfg = CalibrationConfig(num_sequences=args.sequences, batch_size=32, min_length=128, max_length=128)
    batches = calibration_batches(cfg, tok, model.config, 0)

    def scorers(*specs):
        out = []
        for name, params in specs:
            s = SCORERS.get(name)(**params)
            s.begin(ScoringContext(model, a, a.layout(), 0, tok))
            out.append(s)
        return out

    @torch.no_grad()
    def plain():
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def run(*specs, finish=True):
        ss = scorers(*specs)
        run_capture(model, a, batches, ss or [AttentionsOnly()], progress=False)
        return [s.finish() for s in ss] if finish else None

    plain()  # warm-up
    forward = min(timed(plain) for _ in range(2))
    rows = [{"what": "plain eager forward", "seconds": forward, "ratio": 1.0, "target": ""}]

    def add(what, seconds, target=""):
        rows.append({"what": what, "seconds": seconds, "ratio": seconds / forward, "target": target})
        print(f"{what}: {seconds:.2f} s ({seconds / forward:.2f}x)")

    add("capture (attention maps)", timed(lambda: run()))
    matprod = {"metrics": ["cosine", "correlation", "bhattacharyya"]}
    add("capture + head_types + sieve_roles + cosine/correlation/bhattacharyya",
        timed(lambda: run(("head_types", {"tsne": False, "stability_splits": 0}), ("sieve_roles", {}),
                          ("redundancy", matprod))), "<= 1.5")
    holder = {}
    js_total = timed(lambda: holder.update(exact=run(("redundancy", {"metrics": ["js"]}))))
    add("capture + exact JS", js_total)
    add("exact JS alone (capture subtracted)", js_total - rows[1]["seconds"], "<= 2")
    sub_total = timed(lambda: holder.update(sub=run(("redundancy", {"metrics": ["js"], "js_query_sample": args.js_sample}))))
    add(f"capture + JS on {args.js_sample} sampled queries", sub_total)
    exact = np.array(holder["exact"][0].heads.extras["matrices"]["js"])
    sub = np.array(holder["sub"][0].heads.extras["matrices"]["js"])
    iu = np.triu_indices(len(exact), 1)
    js_error = {"max_abs": float(np.abs(exact - sub).max()), "mean_abs": float(np.abs(exact - sub)[iu].mean()),
                "pearson": float(np.corrcoef(exact[iu], sub[iu])[0, 1])}
    print(f"JS subsample error vs exact: {js_error}")

    # random tokens vs real text: the paper's task-agnostic finding
    n = min(64, args.sequences)
    metrics = {"metrics": ["js", "cosine", "correlation", "bhattacharyya"]}
    rand_cfg = CalibrationConfig(num_sequences=n, batch_size=32, min_length=32, max_length=128)
    text_cfg = CalibrationConfig(source="text_file", path=str(WIKI), num_sequences=n, batch_size=32, max_length=128)
    corr = {}
    mats = {}
    for label, c in (("random", rand_cfg), ("text", text_cfg)):
        s = scorers(("redundancy", metrics))
        run_capture(model, a, calibration_batches(c, tok, model.config, 0), s, progress=False)
        mats[label] = s[0].finish().heads.extras["matrices"]
    for m in metrics["metrics"]:
        x, y = np.array(mats["random"][m])[iu], np.array(mats["text"][m])[iu]
        corr[m] = float(np.corrcoef(x, y)[0, 1])
    print(f"Pearson r, redundancy matrix from random tokens vs WikiText ({n} sequences each): {corr}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the whole run: {peak:.0f} MiB")
    report("heads", rows, {"sequences": args.sequences, "length": 128, "js_subsample_error": js_error,
                           "random_vs_text_pearson": corr, "peak_rss_mib": peak})


if __name__ == "__main__":
    main()
