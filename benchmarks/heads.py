"""Cost of the head scorers as ratios to a plain eager forward pass, and their evidence
on real text: redundancy matrices from random tokens vs SST-2 and WikiText, the share
of sieve_roles p-values left undecided on SST-2, head_types' clustering stability.

MiniLM, 256 sequences x 128 tokens, batch 32. Targets: capture + head_types +
sieve_roles + the matrix-product distances (cosine, correlation, Bhattacharyya) at
most 1.5x the forward; exact Jensen-Shannon at most 2x. The distances run on the
native kernels (compressor/native) when they build; --no-native measures the PyTorch
fallback.
Run: python benchmarks/heads.py [--sequences 256] [--no-native]
"""

from __future__ import annotations

import argparse
import os
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
from compressor.head_distances import token_metric_means  # noqa: E402
from compressor.models import load_model, load_tokenizer  # noqa: E402
from compressor.native import heads_library  # noqa: E402
from compressor.recipe import CalibrationConfig  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.scorers.base import Scorer  # noqa: E402
from compressor.scorers.sieve_roles import POSITIONAL, spacy_parser  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKI = DATA / "wikitext-2" / "valid.txt"
GLUE = DATA / "glue"


class AttentionsOnly(Scorer):
    name = "attentions-only"
    needs = frozenset({"attentions"})

    def __init__(self):
        pass


def timed(fn, repeats: int = 2) -> float:
    """Best of ``repeats`` wall times: single runs on a shared 2-core machine vary by
    30% and more, the minimum is the stable figure."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--js-sample", type=int, default=32, help="query positions for the subsampled JS")
    ap.add_argument("--no-native", action="store_true",
                    help="PyTorch paths only (as without a C compiler); results go to heads-torch.json")
    args = ap.parse_args()
    if args.no_native:
        os.environ["COMPRESSOR_NATIVE"] = "0"
    kernel = "pytorch" if heads_library() is None else "native"
    print(f"head-distance kernels: {kernel}")

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
    forward = timed(plain, 3)
    rows = [{"what": "plain eager forward", "seconds": forward, "ratio": 1.0, "target": ""}]

    def add(what, fn, target="", repeats=2):
        # Each run is paired with a plain forward just before it, and the ratio is taken
        # within the pair: the machine's speed drifts by 30% between minutes.
        best = None
        for _ in range(repeats):
            base = timed(plain, 1)
            sec = timed(fn, 1)
            if best is None or sec / base < best[1] / best[0]:
                best = (base, sec)
        rows.append({"what": what, "seconds": best[1], "ratio": best[1] / best[0], "target": target})
        print(f"{what}: {best[1]:.2f} s ({best[1] / best[0]:.2f}x)")
        return best[1] / best[0]

    capture = add("capture (attention maps)", lambda: run())
    matprod = {"metrics": ["cosine", "correlation", "bhattacharyya"]}
    positional = {"sieves": list(POSITIONAL)}
    add("capture + head_types + sieve_roles (positional sieves) + cosine/correlation/bhattacharyya",
        lambda: run(("head_types", {"tsne": False, "stability_splits": 0}), ("sieve_roles", positional),
                    ("redundancy", matprod)), "<= 1.5")
    if spacy_parser() is not None:  # parsing is per-text CPU work outside the tensor statistics
        add("capture + sieve_roles with syntactic sieves (spaCy parse of every sequence)",
            lambda: run(("sieve_roles", {})))
    holder = {}
    js = add("capture + exact JS", lambda: holder.update(exact=run(("redundancy", {"metrics": ["js"]}))))
    rows.append({"what": "exact JS alone (capture subtracted)", "seconds": float("nan"), "ratio": js - capture,
                 "target": "<= 2"})
    add(f"capture + JS on {args.js_sample} sampled queries",
        lambda: holder.update(sub=run(("redundancy", {"metrics": ["js"], "js_query_sample": args.js_sample}))))
    exact = np.array(holder["exact"][0].heads.extras["matrices"]["js"])
    sub = np.array(holder["sub"][0].heads.extras["matrices"]["js"])
    iu = np.triu_indices(len(exact), 1)
    js_error = {"max_abs": float(np.abs(exact - sub).max()), "mean_abs": float(np.abs(exact - sub)[iu].mean()),
                "pearson": float(np.corrcoef(exact[iu], sub[iu])[0, 1])}
    print(f"JS subsample error vs exact: {js_error}")

    # 144 heads: a BERT-base-shaped model (random weights, nothing to download), one
    # batch of 32 x 128, each distance family as a ratio to that model's forward.
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    big = BertModel(BertConfig(num_hidden_layers=12, num_attention_heads=12, hidden_size=768,
                               intermediate_size=3072, attn_implementation="eager")).eval()
    ids, ones = batches[0].input_ids, torch.ones_like(batches[0].input_ids)
    with torch.no_grad():
        big(input_ids=ids, attention_mask=ones)  # warm-up
        big_forward = timed(lambda: big(input_ids=ids, attention_mask=ones), 3)
        stacked = torch.cat(big(input_ids=ids, attention_mask=ones, output_attentions=True).attentions, 1)
    for label, ms in (("exact JS", ["js"]), ("cosine/correlation/bhattacharyya", ["cosine", "correlation", "bhattacharyya"])):
        sec = timed(lambda ms=ms: token_metric_means(stacked, ones, ms), 1)
        what = f"BERT-base shape (144 heads), one batch: {label} alone"
        rows.append({"what": what, "seconds": sec, "ratio": sec / big_forward, "target": "<= 2" if ms == ["js"] else ""})
        print(f"{what}: {sec:.2f} s ({sec / big_forward:.2f}x its forward)")
    big = stacked = None  # free ~0.5 GB before the evidence runs

    # Evidence on real text. Random tokens vs real text is the paper's task-agnostic
    # finding; p-values between 0.05 and 0.95 show how many head/sieve tests the data
    # leave undecided; stability is head_types' agreement across random halves.
    n = min(64, args.sequences)
    metrics = {"metrics": ["js", "cosine", "correlation", "bhattacharyya"]}
    configs = {
        "random": CalibrationConfig(num_sequences=n, batch_size=32, min_length=32, max_length=128),
        "sst2": CalibrationConfig(source="glue", task="sst2", data_dir=str(GLUE), split="dev", num_sequences=n,
                                  batch_size=32, max_length=128),
        "wikitext": CalibrationConfig(source="text_file", path=str(WIKI), num_sequences=n, batch_size=32,
                                      max_length=128),
    }
    mats = {}
    for label, c in configs.items():
        s = scorers(("redundancy", metrics))
        run_capture(model, a, calibration_batches(c, tok, model.config, 0), s, progress=False)
        mats[label] = s[0].finish().heads.extras["matrices"]
    corr = {text: {m: float(np.corrcoef(np.array(mats["random"][m])[iu], np.array(mats[text][m])[iu])[0, 1])
                   for m in metrics["metrics"]} for text in ("sst2", "wikitext")}
    for text, r in corr.items():
        print(f"Pearson r, redundancy matrix from random tokens vs {text} ({n} sequences each): "
              + ", ".join(f"{m} {v:.3f}" for m, v in r.items()))

    sst2 = CalibrationConfig(source="glue", task="sst2", data_dir=str(GLUE), split="dev", num_sequences=256,
                             batch_size=32, max_length=128)
    roles, types = scorers(("sieve_roles", {}), ("head_types", {"tsne": False, "stability_splits": 10}))
    run_capture(model, a, calibration_batches(sst2, tok, model.config, 0), [roles, types], progress=False)
    role_ex, type_ex = roles.finish().heads.extras, types.finish().heads.extras
    p = np.array(role_ex["p_values"])  # [heads, sieves]
    undecided = float(((p > 0.05) & (p < 0.95)).mean())
    stab = type_ex["stability"]
    print(f"sieve_roles on 256 SST-2 dev sentences: sieves {role_ex['sieves']}; share of p-values in "
          f"(0.05, 0.95): {undecided:.3f}; heads per role {role_ex['role_counts']}")
    print(f"head_types on 256 SST-2 dev sentences: {type_ex['type_counts']}; stability over "
          f"{stab['splits']} random halves: heads stable in every refit {stab['stable_share']:.3f} (Guan et al.'s "
          f"figure); per-refit agreement mean {stab['mean']:.3f}, min {stab['min']:.3f}")
    evidence = {"random_vs_text_pearson": corr, "sst2_p_values_undecided": undecided,
                "sst2_role_counts": role_ex["role_counts"], "sst2_type_counts": type_ex["type_counts"],
                "sst2_type_stability": stab}

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the whole run: {peak:.0f} MiB")
    report("heads-torch" if args.no_native else "heads", rows, {
        "sequences": args.sequences, "length": 128, "kernels": kernel, "js_subsample_error": js_error,
        "peak_rss_mib": peak, **evidence})


if __name__ == "__main__":
    main()
