"""Which statistic of the H0 death times should OBCE rank neurons by?

The paper (arXiv 2312.10702) does not pin it down, so this measures it: MiniLM is
fine-tuned on an SST-2 train subset (cached in ~/.cache/compressor, outside git), each
statistic scores the FFN neurons from [CLS] outputs on SST-2 train sentences, the
lowest-scoring half of every layer is removed (ratio 0.5, per layer), and SST-2 dev accuracy
is measured with no recovery fine-tuning. random and magnitude run beside it, and
everything is repeated over calibration seeds to show the spread.

Run: python benchmarks/obce_statistic.py [--train 4000] [--calibration 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor import apply_plan, load_model  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.data.glue import read_glue_tsv  # noqa: E402
from compressor.models import default_model_path, load_tokenizer  # noqa: E402
from compressor.planning import plan_neurons  # noqa: E402
from compressor.recipe import CalibrationConfig, NeuronTarget  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.topology.line_h0 import STATISTICS  # noqa: E402
from compressor.types import PruningPlan  # noqa: E402

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
CACHE = Path.home() / ".cache" / "compressor"


def finetuned(train: int, tokenizer) -> Path:
    from transformers import BertForSequenceClassification

    out = CACHE / f"minilm-sst2-{train}"
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    rows = read_glue_tsv(SST2 / "train.tsv")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(rows))[:train]
    texts = [rows[i]["sentence"] for i in pick]
    labels = torch.tensor([int(rows[i]["label"]) for i in pick])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    bs = 32
    steps = range(0, train, bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / len(steps))
    for start in tqdm(steps, desc="fine-tune SST-2"):
        enc = tokenizer(texts[start : start + bs], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**enc, labels=labels[start : start + bs]).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@torch.no_grad()
def accuracy(model, tokenizer, dev) -> float:
    texts, labels = [r["sentence"] for r in dev], np.array([int(r["label"]) for r in dev])
    preds = []
    for start in range(0, len(texts), 64):
        enc = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
        preds.append(model(**enc).logits.argmax(-1).numpy())
    return float((np.concatenate(preds) == labels).mean() * 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    # A ratio, not a percentile: integer-valued statistics (count_above) tie a lot, and
    # "strictly below the percentile" would then remove far fewer neurons than 50%.
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()

    tok = load_tokenizer("default")
    path = finetuned(args.train, tok)
    model = load_model(str(path))
    dev = read_glue_tsv(SST2 / "dev.tsv")
    base = accuracy(model, tok, dev)
    a = adapter_for(model)
    target = NeuronTarget(ratio=args.ratio, scope="per_layer", min_per_layer=1)
    train_rows = read_glue_tsv(SST2 / "train.tsv")

    results: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        # calibration: sentences the fine-tuning never saw (from the end of the file)
        rng = np.random.default_rng(100 + seed)
        pick = rng.permutation(np.arange(len(train_rows) // 2, len(train_rows)))[: args.calibration]
        text = CACHE / f"sst2-calibration-{seed}.txt"
        text.write_text("\n".join(train_rows[i]["sentence"] for i in pick) + "\n")
        cfg = CalibrationConfig(source="text_file", path=str(text), num_sequences=args.calibration,
                                batch_size=64, max_length=64)
        batches = calibration_batches(cfg, tok, model.config, seed)
        scorers = {f"persistence:{s}": SCORERS.get("persistence")(statistic=s) for s in STATISTICS}
        scorers["random"] = SCORERS.get("random")(seed=seed)
        scorers["magnitude"] = SCORERS.get("magnitude")()
        for s in scorers.values():
            s.begin(ScoringContext(model, a, a.layout(), seed))
        run_capture(model, a, batches, list(scorers.values()), progress=False)
        for name, s in scorers.items():
            scores = s.finish().neurons
            plan = PruningPlan.build(neurons=plan_neurons(scores, a.layout(), target))
            acc = accuracy(apply_plan(model, plan), tok, dev)
            results.setdefault(name, []).append(acc)
            print(f"seed {seed} {name:32s} removed {sum(map(len, plan.neurons.values()))} acc {acc:.2f}")

    rows = [{"scorer": "unpruned", "accuracy_mean": base, "accuracy_min": base, "accuracy_max": base}]
    for name, accs in sorted(results.items(), key=lambda kv: -np.mean(kv[1])):
        rows.append({"scorer": name, "accuracy_mean": float(np.mean(accs)), "accuracy_min": min(accs),
                     "accuracy_max": max(accs)})
    print(f"SST-2 dev accuracy, MiniLM fine-tuned on {args.train} examples, {args.ratio:.0%} of FFN neurons "
          f"removed per layer, no recovery fine-tuning, {args.seeds} calibration seeds x {args.calibration} sentences")
    report("obce_statistic", rows, vars(args))


if __name__ == "__main__":
    main()
