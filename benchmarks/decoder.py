"""Does pruning a decoder turn into generation speed? ONNX Runtime with the key/value cache.

Model: a random Llama-style decoder (random weights: speed does not depend on their
values): 8 layers, hidden 512, 8 query heads sharing 2 key/value heads (head_dim 64),
gated FFN of 1408 channels, untied LM head; vocabulary 32,000 (``--vocabs`` runs others
too, e.g. ``32000,4096``, to show what the unpruned LM head costs).

Pruned to about half the layers' FLOPs with compressor's own planning and surgery:
magnitude scores, ``targets.heads: {ratio: 0.5, scope: per_layer}`` (whole key/value
groups: one of the 2 groups per layer, i.e. 4 of 8 query heads and 1 of 2 key/value
heads) and ``targets.neurons: {ratio: 0.5, scope: per_layer}`` (704 of 1408 channels of
gate, up and down). Embeddings, norms and the LM head are not pruned.

Both models are saved, reloaded and exported with compressor (a graph with the cache at
per-layer head counts, its shape arithmetic folded; Llama has no ONNX Runtime fusion, so
that graph is timed, with ONNX Runtime's own load-time optimizations).
Timed interleaved (``compressor.evaluate.generation.time_generation``), batch 1: prompt
latency for a ``--prompt-len`` prompt (one forward that builds the cache) and decoding
speed over ``--new-tokens`` greedy tokens with the cache, PyTorch (eager) and ORT fp32.

Targets (issue 16): ORT decode tokens/s pruned/original >= 1.7x; ORT prompt latency ratio
within 1.15x the FLOPs ratio. FLOPs are given two ways: the layers only
(``metrics.encoder_flops_per_token``, what the planner's 50% refers to) and the whole
forward including the LM head (2 * hidden * vocab per token), which pruning leaves as it is.

Writes benchmarks/results/decoder.json.
Run: python benchmarks/decoder.py [--vocabs 32000,4096] [--prompt-len 128] [--new-tokens 64] [--runs 10]
     [--sessions default,1t-nospin] [--no-torch] [--int8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor.arch import adapter_for  # noqa: E402
from compressor.evaluate.generation import time_generation  # noqa: E402
from compressor.evaluate.latency import Subject  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.metrics import encoder_flops_per_token  # noqa: E402
from compressor.models import load_model, save_model  # noqa: E402
from compressor.planning import make_plan  # noqa: E402
from compressor.recipe import HeadTarget, NeuronTarget  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.surgery.prune import apply_plan  # noqa: E402

DECODE_TARGET, PROMPT_TARGET = 1.7, 1.15
# ONNX Runtime session settings (intra-op threads, spinning): ORT's defaults (one thread per
# physical core, idle workers busy-wait), and one thread without spinning, which wastes
# nothing waiting for cores that other processes hold (README, "Why latency lags FLOPs")
SESSIONS = {"default": (None, None), "1t-nospin": (1, False), "2t-nospin": (2, False)}


def decoder(vocab: int, layers: int = 8, hidden: int = 512, heads: int = 8, kv_heads: int = 2, ffn: int = 1408):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=ffn, max_position_embeddings=2048,
                      tie_word_embeddings=False, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def pruned_half(model):
    """One of the 2 key/value groups and half the FFN channels of every layer, by magnitude."""
    a = adapter_for(model)
    s = SCORERS.get("magnitude")()
    s.begin(ScoringContext(model, a, a.layout(), 0))
    scores = s.finish()
    plan = make_plan(a.layout(), scores.heads, scores.neurons,
                     HeadTarget(ratio=0.5, scorer="magnitude", scope="per_layer"),
                     NeuronTarget(ratio=0.5, scorer="magnitude", scope="per_layer"), {})
    return apply_plan(model, plan)


def flops(model, seq: int) -> dict:
    """FLOPs per token: the layers (attention at context ``seq``) and the LM head."""
    layers = encoder_flops_per_token(adapter_for(model).layout(), seq)
    head = 2 * model.config.hidden_size * model.config.vocab_size
    return {"layers": layers, "lm_head": head, "total": layers + head}


def run_vocab(vocab: int, root: Path, args) -> list[dict]:
    original = decoder(vocab)
    models = {"original": original, "pruned": pruned_half(original)}
    subjects = []
    for label, m in models.items():
        folder, onnx_dir = root / f"{label}-{vocab}", root / f"{label}-{vocab}-onnx"
        save_model(m, folder)
        onnx_dir.mkdir()
        net = load_model(str(folder), attn_implementation="eager")
        res = export_model(net, None, onnx_dir, quantize="int8" if args.int8 else None)
        layout = adapter_for(net).layout()
        print(f"vocab {vocab} {label}: kv heads {res.cache_heads}, FFN {list(layout.ffn_per_layer)}, "
              f"parity prompt {res.parity['model.onnx']:.2g}, decode {res.decode_parity['model.onnx']:.2g}", flush=True)
        subjects.append(Subject(label, net if args.torch else None, onnx_dir, "pytorch-eager"))
    timings = []
    for i, setting in enumerate(args.sessions.split(",")):
        threads, spin = SESSIONS[setting]
        print(f"ORT sessions: {setting} (intra-op threads {threads or 'ORT default'}, "
              f"spinning {'ORT default (on)' if spin is None else spin})", flush=True)
        # PyTorch does not depend on the ORT settings: timed with the first only
        subs = subjects if i == 0 else [Subject(s.label, None, s.onnx_dir) for s in subjects]
        for t in time_generation(subs, 1, args.prompt_len, args.new_tokens, args.runs, args.warmup,
                                 threads=threads, spin=spin, progress=lambda s: print(s, flush=True)):
            if t.backend.startswith("ort"):
                t.backend = f"{t.backend} {setting}"
            timings.append(t)
    context = args.prompt_len + args.new_tokens // 2  # mean context of a decoding step
    f_prompt = {k: flops(m, args.prompt_len) for k, m in models.items()}
    f_decode = {k: flops(m, context) for k, m in models.items()}
    rows = []
    for t in timings:
        row = {"vocab": vocab, "model": t.model, "backend": t.backend, "prompt_len": t.prompt_len,
               "prompt_ms": t.prompt_ms, "new_tokens": t.new_tokens, "tokens_per_s": t.tokens_per_s,
               "ms_per_token": t.decode_ms_per_token}
        if t.vs_first:
            p = f_prompt["pruned"]["layers"] / f_prompt["original"]["layers"]
            p_all = f_prompt["pruned"]["total"] / f_prompt["original"]["total"]
            d_all = f_decode["original"]["total"] / f_decode["pruned"]["total"]
            row.update({
                "prompt_ratio": t.vs_first["prompt_ms"],
                "flops_ratio_layers": p, "flops_ratio_total": p_all,
                "prompt_ratio_over_flops_layers": t.vs_first["prompt_ms"] / p,
                "prompt_ratio_over_flops_total": t.vs_first["prompt_ms"] / p_all,
                "decode_speedup": t.vs_first["tokens_per_s"],
                "decode_speedup_bound_total_flops": d_all,
            })
        rows.append(row)
    share = f_decode["original"]["lm_head"] / f_decode["original"]["total"]
    share_pruned = f_decode["pruned"]["lm_head"] / f_decode["pruned"]["total"]
    print(f"vocab {vocab}: LM head = {share:.1%} of the original's FLOPs per decoded token, {share_pruned:.1%} of the "
          f"pruned one's; the layers keep {f_decode['pruned']['layers'] / f_decode['original']['layers']:.1%} of "
          f"theirs, the whole forward {f_decode['pruned']['total'] / f_decode['original']['total']:.1%}", flush=True)
    for r in rows:
        r["lm_head_share_original"], r["lm_head_share_pruned"] = share, share_pruned
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocabs", default="32000", help="comma-separated vocabulary sizes, one model pair each")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sessions", default="default,1t-nospin",
                    help=f"comma-separated ORT session settings, each timed: {', '.join(SESSIONS)}")
    ap.add_argument("--no-torch", dest="torch", action="store_false", help="time ORT only")
    ap.add_argument("--int8", action="store_true", help="also export and time the int8 graphs")
    ap.add_argument("--quick", action="store_true", help="prompt 32, 16 new tokens, 3 runs")
    args = ap.parse_args()
    unknown = [k for k in args.sessions.split(",") if k not in SESSIONS]
    if unknown:
        ap.error(f"--sessions: unknown {unknown}; choose from {', '.join(SESSIONS)}")
    if args.quick:
        args.prompt_len, args.new_tokens, args.runs, args.warmup = 32, 16, 3, 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as tmp:
        for vocab in (int(v) for v in args.vocabs.split(",")):
            rows += run_vocab(vocab, Path(tmp), args)
    checks = []
    for r in rows:
        if r["backend"].startswith("ort") and "decode_speedup" in r:
            checks.append({
                "vocab": r["vocab"], "backend": r["backend"],
                f"decode_speedup (>= {DECODE_TARGET})": r["decode_speedup"],
                "met_decode": r["decode_speedup"] >= DECODE_TARGET,
                f"prompt_ratio_over_flops_layers (<= {PROMPT_TARGET})": r["prompt_ratio_over_flops_layers"],
                "met_prompt": r["prompt_ratio_over_flops_layers"] <= PROMPT_TARGET,
                "prompt_ratio_over_flops_total": r["prompt_ratio_over_flops_total"],
                "lm_head_share_original": r["lm_head_share_original"],
            })
    table = [{k: r.get(k, "") for k in ("vocab", "model", "backend", "prompt_ms", "tokens_per_s", "prompt_ratio",
                                          "flops_ratio_layers", "flops_ratio_total", "decode_speedup")} for r in rows]
    report("decoder", table, {"all": rows, "targets": checks, "settings": {
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "runs": args.runs, "batch": 1,
        "sessions": {k: SESSIONS[k] for k in args.sessions.split(",")}, "layers": 8, "hidden": 512, "heads": 8, "kv_heads": 2,
        "ffn": 1408}})
    for c in checks:
        print(c)


if __name__ == "__main__":
    main()
