"""The seeds' headline claims next to what the toolkit measures (docs/reproductions.md).

On the real MiniLM (all-MiniLM-L6-v2, 72 heads) and the real data in ../shared/data:
- sieve_roles (Pande et al. 2021) on MRPC train pairs and SST-2 dev sentences: share of
  p-values in (0.05, 0.95) under the z-test (the paper's) and the t-test, block heads per
  layer on pairs, local/syntactic overlap and Spearman correlation, unaligned sequences,
  and the effect of the paper's 5-token local window against the former 4-token one;
- head_types (Guan et al. 2020) on SST-2 dev: types, share of heads whose type survives
  every refit (the paper's stability) and the mean per-refit agreement;
- redundancy (Bian et al. 2021): the task-agnostic finding (Pearson r of the JS
  redundancy matrices from random tokens vs SST-2 / WikiText), with and without the
  [unusedN] ids in the random tokens, and per-sentence vs token-pooled averaging;
- persistence (OBCE, Balderas et al. 2023): parameters kept at percentile 50 on BERT-base
  and BERT-large shapes under each accounting the paper might use (surgery on a random
  BERT-base-shaped model for the two the toolkit can do);
- topology (sqrt-JS head metric, docs/topology.md): the triangle inequality of D on
  MiniLM's heads, and H0 deaths equal to the minimum spanning tree's edges.
Seed-dependent figures run over --seeds (default 3): disjoint data slices for the text
sources, different random-token draws, different K-means / split seeds.

Run: python benchmarks/reproductions.py [--seeds 3] [--pairs 128]   (about 5 min on 2 cores)
Writes benchmarks/results/reproductions.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

import compressor.data.calibration as calibration  # noqa: E402
from compressor import apply_plan  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.glue import load_glue  # noqa: E402
from compressor.head_distances import token_metric_means  # noqa: E402
from compressor.models import load_model, load_tokenizer  # noqa: E402
from compressor.recipe import CalibrationConfig  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.scorers.base import Scorer  # noqa: E402
from compressor.scorers.sieve_roles import SYNTACTIC, one_tailed_test, sieve_bias  # noqa: E402
from compressor.types import PruningPlan  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GLUE, WIKI = DATA / "glue", DATA / "wikitext-2" / "valid.txt"


def spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "values": v.round(5).tolist()}


def fmt(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def text_batches(tok, task: str, split: str, start: int, n: int, max_length: int = 128):
    """n texts (pairs for MRPC) of a GLUE split from ``start``: disjoint slices per seed."""
    cfg = CalibrationConfig(source="glue", task=task, data_dir=str(GLUE), split=split, num_sequences=n,
                            batch_size=32, max_length=max_length)
    texts = load_glue(task, str(GLUE), split).texts[start : start + n]
    seqs, types = calibration._encode_texts(texts, tok, cfg)
    return calibration._batches(seqs, 32, tok.pad_token_id, None, types)


class Local4(Scorer):
    """The former local sieve (two neighbours each side, the token itself excluded), to
    measure what the paper's window changes."""

    name = "local4-probe"
    needs = frozenset({"attentions"})

    def __init__(self):
        self.bias = []

    def update(self, batch):
        mask = batch.attention_mask
        s = mask.shape[1]
        pos = torch.arange(s)
        off = pos[None, :] - pos[:, None]  # [q, k]
        sieve = ((off.abs() <= 2) & (off != 0))[None, :, :, None] & mask.bool()[:, None, :, None]  # [b, q, k, 1]
        self.bias.append(sieve_bias(batch.heads(), sieve, mask))


def sieve_figures(model, tok, a, batches, seed: int) -> dict:
    roles = SCORERS.get("sieve_roles")()
    roles.begin(ScoringContext(model, a, a.layout(), seed, tok))
    probe = Local4()
    run_capture(model, a, batches, [roles, probe], progress=False)
    bias = torch.cat(roles._bias).double().numpy()  # [sequences, N, S]
    ex = roles.finish().heads.extras
    names = ex["sieves"]
    tau, alpha = ex["tau"], ex["alpha"]
    mean, pz = one_tailed_test(bias, tau, "z")
    _, pt = one_tailed_test(bias, tau, "t")
    has = (pz < alpha) & (np.nan_to_num(mean) > tau)
    loc = names.index("local")
    syn = [names.index(s) for s in SYNTACTIC if s in names]
    local_heads = has[:, loc]
    syn_heads = has[:, syn].any(1)
    from scipy.stats import spearmanr

    rho = {names[j]: float(spearmanr(mean[:, loc], mean[:, j]).statistic) for j in syn}
    rho["max syntactic"] = float(spearmanr(mean[:, loc], np.nan_to_num(mean[:, syn]).max(1)).statistic)
    m4, p4 = one_tailed_test(torch.cat(probe.bias).double().numpy(), tau, "z")
    local4 = (p4[:, 0] < alpha) & (m4[:, 0] > tau)
    hpl = a.layout().heads_per_layer[0]
    block = has[:, names.index("block")].reshape(-1, hpl).sum(1)  # [layers]
    block_bias = np.nan_to_num(mean[:, names.index("block")]).reshape(-1, hpl)  # [layers, heads]
    # the largest block bias any head can reach: all of each query's mass inside its own
    # segment gives L / |segment| (about 2 for two sentences of similar length)
    ceiling = []
    for b in batches:
        seg = b.token_type_ids if b.token_type_ids is not None else torch.zeros_like(b.input_ids)
        for row in range(seg.shape[0]):
            n = int(b.attention_mask[row].sum())
            sizes = torch.bincount(seg[row, :n])
            ceiling.append(float((n / sizes[seg[row, :n]].double()).mean()))
    return {
        "block_bias_max_per_layer": block_bias.max(1).round(3).tolist(),
        "block_bias_ceiling": float(np.mean(ceiling)),
        "undecided_z": float(((pz > 0.05) & (pz < 0.95)).mean()),
        "undecided_t": float(((pt > 0.05) & (pt < 0.95)).mean()),
        "roles_t_minus_z": int(((pt < alpha) & (np.nan_to_num(mean) > tau)).sum() - has.sum()),
        "role_counts": ex["role_counts"],
        "block_heads_per_layer": block.tolist(),
        "unaligned": ex["unaligned_sequences"], "sequences": int(bias.shape[0]), "segments": ex["segments"],
        "local_heads": int(local_heads.sum()), "local4_heads": int(local4.sum()),
        "syntactic_heads": int(syn_heads.sum()),
        "syntactic_also_local": float(local_heads[syn_heads].mean()) if syn_heads.any() else float("nan"),
        "spearman_local_vs": rho,
    }


class Pooling(Scorer):
    """JS redundancy averaged per sentence then over sentences (Bian's, the scorer's) and
    pooled over all tokens of all sentences."""

    name = "pooling-probe"
    needs = frozenset({"attentions"})

    def __init__(self):
        self.per_sentence, self.pooled, self.seqs, self.tokens = 0.0, 0.0, 0, 0

    def update(self, batch):
        mask = batch.attention_mask
        js = token_metric_means(batch.heads(), mask, ["js"])["js"].double()  # [batch, N, N] per-sentence means
        n = mask.sum(1).double()  # [batch] real query tokens
        self.per_sentence = self.per_sentence + js.sum(0)
        self.pooled = self.pooled + (js * n[:, None, None]).sum(0)
        self.seqs += mask.shape[0]
        self.tokens += int(n.sum())

    def means(self) -> tuple[float, float]:
        iu = np.triu_indices(self.per_sentence.shape[0], 1)
        return (float((self.per_sentence / self.seqs).numpy()[iu].mean()),
                float((self.pooled / self.tokens).numpy()[iu].mean()))


def js_matrix(model, tok, a, batches, seed: int = 0) -> tuple[np.ndarray, Pooling]:
    s = SCORERS.get("redundancy")(metrics=["js"])
    s.begin(ScoringContext(model, a, a.layout(), seed, tok))
    pool = Pooling()
    run_capture(model, a, batches, [s, pool], progress=False)
    return s.matrices()["js"], pool


def obce_counts() -> dict:
    """Parameters kept at percentile 50 (half of each layer's units) under each accounting."""
    from transformers import BertConfig, BertModel

    def shape_counts(L, d, f, V=30522, P=512, T=2):
        emb = V * d + P * d + T * d + 2 * d
        attn_lin, ffn_lin = L * (4 * d * d + 3 * d), L * (2 * d * f + f)  # prunable: q/k/v rows + out cols; in rows + out cols
        total = emb + L * (4 * d * d + 4 * d + 2 * d + 2 * d * f + f + d + 2 * d) + d * d + d
        return emb, attn_lin, ffn_lin, total

    out = {}
    for name, (L, d, f, paper) in {"BERT-base": (12, 768, 3072, 58.47), "BERT-large": (24, 1024, 4096, 52.3)}.items():
        emb, attn, ffn, total = shape_counts(L, d, f)
        enc = total - emb
        # the share of all encoder linear parameters (attention + FFN) that must go to reach the paper's figure
        needed = (1 - paper / 100) * total / (attn + ffn)
        out[name] = {
            "paper": paper,
            "total_params": total,
            "ffn_only": 100 * (total - ffn / 2) / total,
            "ffn_only_without_embeddings": 100 * (enc - ffn / 2) / enc,
            "ffn_and_heads": 100 * (total - (ffn + attn) / 2) / total,
            "ffn_and_heads_without_embeddings": 100 * (enc - (ffn + attn) / 2) / enc,
            "share_of_encoder_linears_removed_to_match": needed,
        }
    # the two accountings the toolkit can do, by surgery on a random BERT-base-shaped model
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    base = BertModel(cfg, add_pooling_layer=True)
    total = sum(p.numel() for p in base.parameters())
    g = torch.Generator().manual_seed(0)
    neurons = {i: torch.randperm(3072, generator=g)[:1536].sort().values.tolist() for i in range(12)}
    heads = {i: torch.randperm(12, generator=g)[:6].sort().values.tolist() for i in range(12)}
    for label, plan in (("ffn_only", PruningPlan.build({}, neurons)), ("ffn_and_heads", PruningPlan.build(heads, neurons))):
        kept = sum(p.numel() for p in apply_plan(base, plan).parameters())
        out["BERT-base"][f"{label}_by_surgery"] = 100 * kept / total
    return out


def topology_checks(d_mean: np.ndarray) -> dict:
    from compressor.topology.heads import h0_deaths, rips_persistence

    d = d_mean.astype(np.float64)
    # every triple i, j, k: D(i, k) <= D(i, j) + D(j, k)
    slack = d[:, None, :] - (d[:, :, None] + d[None, :, :])  # [i, j, k]
    worst = float(slack.max())
    h0 = rips_persistence(d, 0).pairs[0]
    finite = np.sort(h0[np.isfinite(h0[:, 1]), 1])
    return {"triangle_worst_excess": worst, "triangle_violations_over_1e-6": int((slack > 1e-6).sum()),
            "h0_vs_mst_max_abs": float(np.abs(finite - h0_deaths(d)).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=128, help="MRPC pairs / SST-2 sentences per seed for sieve_roles")
    ap.add_argument("--sequences", type=int, default=64, help="sequences per source for the redundancy matrices")
    args = ap.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load_model("default", attn_implementation="eager")
    tok = load_tokenizer("default")
    a = adapter_for(model)
    seeds = range(args.seeds)
    rows, extra = [], {}

    def row(seed_name, claim, paper, measured):
        rows.append({"seed": seed_name, "claim": claim, "paper": paper, "measured": measured})
        print(f"[{time.perf_counter() - start:5.0f} s] {seed_name}: {claim}: paper {paper}; measured {measured}",
              file=sys.stderr)

    # --- sieve_roles -----------------------------------------------------------------
    sieve = {}
    for task, split in (("mrpc", "train"), ("sst2", "dev")):
        sieve[task] = [sieve_figures(model, tok, a, text_batches(tok, task, split, s * args.pairs, args.pairs), s)
                       for s in seeds]
    extra["sieve_roles"] = sieve
    for task in ("mrpc", "sst2"):
        runs = sieve[task]
        label = "MRPC pairs" if task == "mrpc" else "SST-2 sentences"
        row("sieve_roles", f"p-values in (0.05, 0.95), z-test, {label}", "1.8%",
            fmt(spread([100 * r["undecided_z"] for r in runs]), 1) + "%")
        row("sieve_roles", f"p-values in (0.05, 0.95), t-test, {label}", "-",
            fmt(spread([100 * r["undecided_t"] for r in runs]), 1) + "%")
    mrpc = sieve["mrpc"]
    block = np.array([r["block_heads_per_layer"] for r in mrpc])  # [seeds, layers]
    row("sieve_roles", "block heads prevalent in layer 0 (sentence pairs)", "yes (layer 0)",
        "per layer " + " / ".join(f"{block[:, i].mean():.1f}" for i in range(block.shape[1]))
        + " (mean over seeds); before the fix: 0 everywhere (bias exactly 1)")
    bb = np.array([r["block_bias_max_per_layer"] for r in mrpc])  # [seeds, layers]
    row("sieve_roles", "largest mean block bias per layer (sentence pairs)", "highest in layer 0",
        " / ".join(f"{bb[:, i].mean():.2f}" for i in range(bb.shape[1]))
        + f"; ceiling (all mass in the own segment) {np.mean([r['block_bias_ceiling'] for r in mrpc]):.2f}"
        + " < tau = 3; before the fix: 1.00 everywhere")
    row("sieve_roles", "MRPC pairs with syntactic sieves aligned", "all",
        f"{sum(r['sequences'] - r['unaligned'] for r in mrpc)} of {sum(r['sequences'] for r in mrpc)} "
        "(before: 0 of 32)")
    for task in ("mrpc", "sst2"):
        runs = sieve[task]
        row("sieve_roles", f"syntactic heads that are also local ({task})", "high overlap",
            fmt(spread([r["syntactic_also_local"] for r in runs]), 2)
            + f"; syntactic heads {fmt(spread([r['syntactic_heads'] for r in runs]), 1)}")
        row("sieve_roles", f"Spearman, local vs max syntactic mean bias over heads ({task})", "positive, high",
            fmt(spread([r["spearman_local_vs"]["max syntactic"] for r in runs]), 2)
            + "; per sieve " + ", ".join(f"{k} {np.mean([r['spearman_local_vs'][k] for r in runs]):.2f}"
                                         for k in SYNTACTIC))
        row("sieve_roles", f"local heads, 5-token window (paper) vs 4 ({task})", "-",
            f"{fmt(spread([r['local_heads'] for r in runs]), 1)} vs {fmt(spread([r['local4_heads'] for r in runs]), 1)}")

    # --- head_types ------------------------------------------------------------------
    sst = text_batches(tok, "sst2", "dev", 0, 256)
    scs = []
    for s in seeds:  # one capture feeds every seed's K-means and half-splits
        scs.append(SCORERS.get("head_types")(tsne=False, stability_splits=10))
        scs[-1].begin(ScoringContext(model, a, a.layout(), s, tok))
    run_capture(model, a, sst, scs, progress=False)
    types = [sc.finish().heads.extras for sc in scs]
    extra["head_types"] = [{"type_counts": t["type_counts"], "stability": t["stability"]} for t in types]
    row("head_types", "heads whose type is the same in every refit (10 half-splits)", "about 96%",
        fmt(spread([100 * t["stability"]["stable_share"] for t in types]), 1) + "%")
    row("head_types", "mean per-refit agreement (the former figure)", "-",
        fmt(spread([100 * t["stability"]["mean"] for t in types]), 1) + "%")
    row("head_types", "type counts (K-means, k=4), seed 0", "4 types", str(types[0]["type_counts"]))

    # --- redundancy ------------------------------------------------------------------
    n = args.sequences
    texts = {"sst2": text_batches(tok, "sst2", "dev", 0, n),
             "wikitext": calibration.calibration_batches(
                 CalibrationConfig(source="text_file", path=str(WIKI), num_sequences=n, batch_size=32,
                                   max_length=128), tok, model.config, 0)}
    text_mats, pools = {}, {}
    for k, b in texts.items():
        text_mats[k], pools[k] = js_matrix(model, tok, a, b)
    iu = np.triu_indices(text_mats["sst2"].shape[0], 1)
    rand_cfg = CalibrationConfig(num_sequences=n, batch_size=32, min_length=32, max_length=128)
    real_never = calibration.never_produced_ids
    corr = {"without_unused": {k: [] for k in texts}, "with_unused": {k: [] for k in texts}}
    for s in seeds:
        for label in corr:
            # with_unused: the former sampling (every non-special id, [unusedN] included)
            calibration.never_produced_ids = real_never if label == "without_unused" else (
                lambda t: set(t.all_special_ids))
            try:
                m, pool = js_matrix(model, tok, a, calibration.calibration_batches(rand_cfg, tok, model.config, s))
            finally:
                calibration.never_produced_ids = real_never
            if label == "without_unused":
                pools[f"random seed {s}"] = pool
            for k in texts:
                corr[label][k].append(float(np.corrcoef(m[iu], text_mats[k][iu])[0, 1]))
    extra["redundancy_task_agnostic_pearson"] = corr
    for k in texts:
        row("redundancy", f"JS matrix, random tokens vs {k}: Pearson r (no [unusedN])", "high (task-agnostic)",
            fmt(spread(corr["without_unused"][k])) + f"; with [unusedN]: {fmt(spread(corr['with_unused'][k]))}")
    diffs = {k: p.means() for k, p in pools.items()}
    extra["redundancy_averaging"] = {k: {"per_sentence": v[0], "token_pooled": v[1]} for k, v in diffs.items()}
    row("redundancy", "mean JS, per sentence then over sentences (Bian) vs token-pooled", "per sentence",
        "; ".join(f"{k} {v[0]:.4f} vs {v[1]:.4f} ({v[1] - v[0]:+.4f})" for k, v in diffs.items()))

    # --- topology ----------------------------------------------------------------------
    topo = topology_checks(text_mats["sst2"])
    extra["topology"] = topo
    row("topology", "D (mean sqrt-JS) satisfies the triangle inequality on MiniLM's 72 heads", "pseudometric",
        f"{topo['triangle_violations_over_1e-6']} violations of 373,248 triples; worst excess "
        f"{topo['triangle_worst_excess']:.2e}")
    row("topology", "H0 deaths = minimum spanning tree edges", "equal", f"max |diff| {topo['h0_vs_mst_max_abs']:.1e}")

    # --- persistence / OBCE ----------------------------------------------------------------
    obce = obce_counts()
    extra["obce_params_kept_p50"] = obce
    for name, c in obce.items():
        surg = f" (surgery {c['ffn_only_by_surgery']:.1f}% / {c['ffn_and_heads_by_surgery']:.1f}%)" if "ffn_only_by_surgery" in c else ""
        row("persistence", f"{name} parameters kept at percentile 50", f"{c['paper']}%",
            f"FFN only {c['ffn_only']:.1f}%, FFN + attention {c['ffn_and_heads']:.1f}%{surg}; "
            f"without embeddings {c['ffn_only_without_embeddings']:.1f}% / {c['ffn_and_heads_without_embeddings']:.1f}%; "
            f"paper's figure = {100 * c['share_of_encoder_linears_removed_to_match']:.1f}% of all encoder linears removed")

    extra["seconds"] = time.perf_counter() - start
    report("reproductions", rows, extra)


if __name__ == "__main__":
    main()
