"""Perplexity with a meaning: a small LLaMA trained for a few CPU minutes on WikiText-2's
valid.txt, scored on test.txt, then pruned (heads, or FFN channels) at two ratios by
magnitude, random, and the scorers that fit a decoder (redundancy / persistence and
fisher with the next-token loss), perplexity before and after.

- Tokenizer: a byte-level BPE of 4,096 tokens trained on valid.txt (the MiniLM tokenizer's
  30,522 would make the LM head most of the training cost); it puts <s> before a text.
- Model: LlamaForCausalLM, 4 layers, hidden 256, 8 heads of 32 (no head groups, so
  heads are pruned one by one), FFN 704, tied embeddings; AdamW, random 128-token
  windows of valid.txt, batch 16, cosine schedule, 300 steps (--steps; or --minutes of
  training instead, which makes the result depend on the machine's speed).
- Perplexity: compressor.evaluate.perplexity on the first --eval-tokens tokens of
  test.txt, windows of 128 every 64.
- Calibration for the data-driven scorers: 128 lines of valid.txt (headings skipped),
  up to 128 tokens each.

Run: python benchmarks/llama_wikitext.py [--steps 300 | --minutes 5] [--out runs/llama-wikitext]
Writes the trained model to <out>/base (reused when present: --retrain to train again)
and benchmarks/results/llama_wikitext.json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]  # this checkout's compressor
from _common import report  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wikitext-2"


def train_tokenizer(text_file: Path, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train([str(text_file)], trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=704, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         attn_implementation="eager")
    return LlamaForCausalLM(config)


def train(model, ids: torch.Tensor, minutes: float, steps: int | None, seed: int, seq: int = 128,
          batch: int = 16, lr: float = 2e-3) -> dict:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    budget = minutes * 60
    # the schedule needs a length: estimate steps from the first few when training by time
    planned = steps or 10**9
    start, losses, step = time.perf_counter(), [], 0
    model.train()
    while True:
        if steps is not None and step >= steps:
            break
        elapsed = time.perf_counter() - start
        if steps is None and elapsed >= budget:
            break
        if steps is None and step == 10:
            planned = max(20, int(budget / (elapsed / 10)))
        warm = 30
        frac = min(1.0, step / warm) if step < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, planned - warm))))
        for group in opt.param_groups:
            group["lr"] = lr * max(frac, 0.05)
        starts = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0:
            print(f"step {step}: loss {sum(losses[-25:]) / 25:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - start, "tokens": step * batch * seq,
            "final_loss": sum(losses[-25:]) / max(1, len(losses[-25:])), "batch": batch, "seq": seq, "lr": lr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=None, help="train this long instead of --steps")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "llama-wikitext")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--eval-tokens", type=int, default=20000)
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from compressor import apply_plan, load_model, save_model
    from compressor.arch import adapter_for
    from compressor.capture import run_capture
    from compressor.data.calibration import calibration_batches
    from compressor.evaluate.perplexity import TorchLM, perplexity, token_stream
    from compressor.models import load_tokenizer
    from compressor.planning import make_plan
    from compressor.recipe import CalibrationConfig, HeadTarget, NeuronTarget
    from compressor.scorers import SCORERS, ScoringContext

    base = args.out / "base"
    training = None
    if args.retrain or not (base / "config.json").is_file():
        tok = train_tokenizer(DATA / "valid.txt", 4096)
        model = build_model(len(tok), args.seed)
        train_ids, _ = token_stream((DATA / "valid.txt").read_text(encoding="utf-8"), tok)
        print(f"training on {train_ids.numel():,} tokens of valid.txt, {sum(p.numel() for p in model.parameters()):,} "
              f"parameters", flush=True)
        steps = None if args.minutes is not None else args.steps
        training = train(model, train_ids, args.minutes or 0.0, steps, args.seed)
        save_model(model, base, tok)
    model = load_model(str(base))
    tok = load_tokenizer(str(base))
    test_ids, _ = token_stream((DATA / "test.txt").read_text(encoding="utf-8"), tok)

    def ppl(net) -> float:
        return perplexity(TorchLM(net), test_ids, 128, 64, batch_size=8, limit=args.eval_tokens).perplexity

    t = time.perf_counter()
    base_ppl = ppl(model)
    eval_s = time.perf_counter() - t
    print(f"base perplexity {base_ppl:.2f} ({eval_s:.0f} s)", flush=True)

    adapter = adapter_for(model)
    layout = adapter.layout()
    cal = CalibrationConfig(source="text_file", path=str(DATA / "valid.txt"), num_sequences=128, batch_size=16,
                            max_length=128, skip_headings=True)
    batches = calibration_batches(cal, tok, model.config, args.seed)
    specs = {"magnitude": {}, "random": {}, "redundancy": {"ratio": 0.5}, "persistence": {},
             "fisher": {"label_free": "lm", "blocks": False}}
    scorers = {n: SCORERS.get(n)(**p) for n, p in specs.items()}
    for s in scorers.values():
        s.begin(ScoringContext(model, adapter, layout, args.seed, tok))
    t = time.perf_counter()
    run_capture(model, adapter, batches, [s for s in scorers.values() if s.needs], progress=False)
    results = {n: s.finish() for n, s in scorers.items()}
    score_s = time.perf_counter() - t

    rows = [{"kind": "none", "scorer": "-", "ratio": 0.0, "perplexity": base_ppl, "vs_base": 1.0}]
    ratios = [float(r) for r in args.ratios.split(",")]
    for kind, names in (("heads", ["magnitude", "random", "redundancy", "fisher"]),
                        ("ffn", ["magnitude", "random", "persistence", "fisher"])):
        for ratio in ratios:
            for name in names:
                if kind == "heads":
                    heads = (scorers[name].head_scores(ratio) if name == "redundancy" else results[name].heads)
                    plan = make_plan(layout, heads, None, HeadTarget(ratio=ratio, scorer=name, scope="global",
                                                                     min_per_layer=1), None, {})
                else:
                    plan = make_plan(layout, None, results[name].neurons, None,
                                     NeuronTarget(scorer=name, ratio=ratio, scope="per_layer", min_per_layer=1), {})
                value = ppl(apply_plan(copy.deepcopy(model), plan))
                rows.append({"kind": kind, "scorer": name, "ratio": ratio, "perplexity": value,
                             "vs_base": value / base_ppl})
                print(rows[-1], flush=True)
    report("llama_wikitext", rows, {
        "model": {"layers": 4, "hidden": 256, "heads": 8, "ffn": 704, "vocab": len(tok),
                  "parameters": sum(p.numel() for p in model.parameters())},
        "training": training, "eval": {"file": "wikitext-2/test.txt", "tokens": args.eval_tokens, "max_length": 128,
                                       "stride": 64, "seconds_per_evaluation": eval_s},
        "calibration": cal.__dict__, "scoring_seconds": score_s,
        "note": "heads: global ratio of all 32 heads (min 1 per layer); ffn: ratio of each layer's 704 channels",
    })


if __name__ == "__main__":
    main()
