"""targets.budget + reconstruct on a small random LLaMA-style decoder (grouped-query
attention, gated FFN): how far the pruned model's outputs move from the unpruned ones at a
FLOPs budget, with and without the reconstruct stage.

There is no trained decoder or tokenizer on this machine, so two settings:
- ``--train-steps 0``: random weights (transformers' initialization, seeded) and random
  token ids; the figures say what the least squares does to the outputs of a model with
  no structure to recover;
- ``--train-steps N`` (with ../shared/data/wikitext-2): the same layout trained here for N
  steps as a word-level language model on WikiText-2 valid.txt (the most frequent
  ``--vocab`` - 1 words, the rest one unknown id), calibrated on its training text and
  measured on test.txt, where the next-token loss (LM loss, nats) is also reported.

Per budget and scorer: plan (magnitude: measured split, scope search; fisher label-free:
importance search + rearrangement) on the fit tokens, surgery, and on held-out tokens
- hidden error: sum ||h - h_ref||^2 / sum ||h_ref||^2 of the final hidden states (after the
  final norm), real tokens;
- KL: mean KL(p_ref || p) of the next-token distributions;
then the same after reconstruct (ridge 0.1, both kinds, fit tokens).

Run: python benchmarks/decoder_budget.py [--layers 4] [--hidden 256] [--sequences 64]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor import apply_plan  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import Batch  # noqa: E402
from compressor.masking import CalibrationLoss  # noqa: E402
from compressor.metrics import encoder_flops_per_token  # noqa: E402
from compressor.planning import plan_budget  # noqa: E402
from compressor.recipe import BudgetTarget, ReconstructConfig  # noqa: E402
from compressor.reconstruct import reconstruct  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402


WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def wikitext_ids(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """valid.txt and test.txt as word ids: the vocab - 1 most frequent words of valid.txt, then unknown."""
    from collections import Counter

    train = (WIKITEXT / "valid.txt").read_text().split()
    test = (WIKITEXT / "test.txt").read_text().split()
    ids = {w: i for i, (w, _) in enumerate(Counter(train).most_common(vocab - 1))}
    return (torch.tensor([ids.get(w, vocab - 1) for w in train]), torch.tensor([ids.get(w, vocab - 1) for w in test]))


def chunks(ids: torch.Tensor, n: int, seq: int, seed: int, batch_size: int = 16) -> list[Batch]:
    """n random windows of seq tokens."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq, (n,), generator=g)
    windows = torch.stack([ids[s : s + seq] for s in starts.tolist()])  # [n, seq]
    return [Batch(w, torch.ones_like(w)) for w in windows.split(batch_size)]


def train(model, ids: torch.Tensor, steps: int, seq: int, batch_size: int = 16, lr: float = 3e-3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        (b,) = chunks(ids, batch_size, seq + 1, seed=1000 + step, batch_size=batch_size)
        out = model(input_ids=b.input_ids, labels=b.input_ids, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = out.loss.detach()
        if step % 100 == 0:
            print(f"train step {step}: loss {float(loss):.3f}", flush=True)
    model.eval()
    return float(loss)


def batches(vocab: int, n: int, seq: int, seed: int, batch_size: int = 16) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        ids = torch.randint(0, vocab, (min(batch_size, n - start), seq), generator=g)
        out.append(Batch(ids, torch.ones_like(ids)))
    return out


@torch.no_grad()
def outputs(model, data: list[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    res = []
    for b in data:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True, use_cache=False)
        res.append((out.hidden_states[-1].double(), F.log_softmax(out.logits.double(), -1)))
    return res


def distance(model, reference: list, data: list[Batch]) -> tuple[float, float, float]:
    """(hidden error, KL to the reference, next-token loss) over the data's tokens."""
    err = norm = kl = nll = count = 0.0
    for b, (h, logp), (h_ref, logp_ref) in zip(data, outputs(model, data), reference, strict=True):
        err += float((h - h_ref).pow(2).sum())
        norm += float(h_ref.pow(2).sum())
        kl += float((logp_ref.exp() * (logp_ref - logp)).sum())
        count += logp.shape[0] * logp.shape[1]
        nll -= float(logp[:, :-1].gather(-1, b.input_ids[:, 1:, None]).sum())  # [batch, seq-1, 1]
    predicted = count - sum(len(b.input_ids) for b in data)  # every position but the last of each row
    return err / norm, kl / count, nll / predicted


def sig(x: float) -> float:
    return float(f"{x:.3g}")  # three significant digits: errors span 1e-5 .. 1


def scores(model, name: str, data: list[Batch], **params):
    a = adapter_for(model)
    s = SCORERS.get(name)(**params)
    s.begin(ScoringContext(model, a, a.layout(), 0))
    if s.needs:
        run_capture(model, a, data, [s], progress=False)
    return s.finish()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--shares", default="0.7,0.5")
    ap.add_argument("--train-steps", type=int, default=0, help="0: random weights and tokens; else train on WikiText-2")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, intermediate_size=args.ffn, vocab_size=args.vocab,
                      max_position_embeddings=max(args.seq, 64), tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    extra: dict = {"weights": "random (seeded), random token ids"}
    if args.train_steps:
        train_ids, test_ids = wikitext_ids(args.vocab)
        final = train(model, train_ids, args.train_steps, args.seq)
        fit = chunks(train_ids, args.sequences, args.seq, seed=1)
        held = chunks(test_ids, args.sequences, args.seq, seed=2)
        extra = {"weights": f"trained here, {args.train_steps} steps on WikiText-2 valid.txt (word level)",
                 "final_train_loss": final}
    else:
        fit = batches(args.vocab, args.sequences, args.seq, seed=1)
        held = batches(args.vocab, args.sequences, args.seq, seed=2)
    reference = outputs(model, held)
    base_loss = distance(model, reference, held)[2]
    extra["unpruned_lm_loss"] = base_loss
    print(f"unpruned next-token loss on the held-out tokens: {base_loss:.3f}")
    layout = adapter_for(model).layout()
    print(f"layout: {args.layers} layers, {args.heads} heads in {args.kv_heads} key/value groups, "
          f"FFN {args.ffn} gated, {sum(len(b.input_ids) * args.seq for b in fit)} fit tokens")
    plans = {"magnitude": scores(model, "magnitude", fit),
             "fisher": scores(model, "fisher", fit, label_free="output")}
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        for name, res in plans.items():
            split = "importance" if name == "fisher" else "measure"
            target = BudgetTarget("flops", share, name, name, split=split, candidates=5)
            evaluate = CalibrationLoss(model, adapter_for(model), fit) if split == "measure" else None
            plan = plan_budget(layout, res.heads, res.neurons, target, evaluate=evaluate, bias=False, ffn_bias=False)
            pruned = apply_plan(model, plan)
            kept = adapter_for(pruned).layout()
            surgery = distance(pruned, reference, held)
            start = time.perf_counter()
            rebuilt = copy.deepcopy(pruned)
            reconstruct(rebuilt, model, adapter_for(rebuilt), adapter_for(model), fit, ReconstructConfig(ridge=0.1),
                        progress=False)
            seconds = time.perf_counter() - start
            after = distance(rebuilt, reference, held)
            rows.append({
                "flops_budget": share, "scorer": name,
                "flops_kept": round(encoder_flops_per_token(kept) / encoder_flops_per_token(layout), 4),
                "heads_kept": sum(kept.heads_per_layer), "ffn_kept": sum(kept.ffn_per_layer),
                "hidden_err_surgery": sig(surgery[0]), "hidden_err_reconstructed": sig(after[0]),
                "hidden_ratio": round(after[0] / surgery[0], 3),
                "kl_surgery": sig(surgery[1]), "kl_reconstructed": sig(after[1]),
                "kl_ratio": round(after[1] / surgery[1], 3),
                "lm_loss_surgery": round(surgery[2], 3), "lm_loss_reconstructed": round(after[2], 3),
                "reconstruct_s": round(seconds, 1),
            })
            print(rows[-1], flush=True)
    name = "decoder_budget_trained" if args.train_steps else "decoder_budget"
    report(name, rows, {"args": vars(args), **extra})


if __name__ == "__main__":
    main()
