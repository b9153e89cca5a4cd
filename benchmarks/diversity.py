"""Does rewarding diverse heads during fine-tuning change accuracy, or how well the
model survives head pruning? (The founding note's proposal, measured.)

MiniLM is fine-tuned on SST-2 exactly as benchmarks/sweep.py fine-tunes its base
(8,000 examples, 250 steps, lr 1e-4, batch 32, 64 tokens), once per diversity weight
lambda: loss = task loss - lambda * (mean sqrt-JS distance per token between heads of the
same layer). Each model is then scored on SST-2 dev as is, and after removing half of
its heads (no recovery) by random (3 seeds), magnitude and the topology scorer (H0 bars
of the head metric D on 256 unseen train sentences).

Run: python benchmarks/diversity.py [--weights 0,0.1,1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402
from sweep import BATCH, FULL, GLUE, LR_BASE, base_model  # noqa: E402

from compressor import apply_plan  # noqa: E402
from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.data.glue import load_glue  # noqa: E402
from compressor.evaluate.glue import TorchClassifier, encode, score_splits  # noqa: E402
from compressor.finetune import finetune  # noqa: E402
from compressor.models import load_model, load_tokenizer, save_model  # noqa: E402
from compressor.planning import plan_heads  # noqa: E402
from compressor.recipe import CalibrationConfig, FinetuneConfig, HeadTarget  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.topology.heads import within_layer_diversity  # noqa: E402
from compressor.types import PruningPlan  # noqa: E402

CACHE = Path.home() / ".cache" / "compressor" / "diversity"


def model_for(weight: float, tok):
    setup = FULL["sst2"]
    if weight == 0:
        return base_model(setup, tok)  # the sweep's base: the same recipe without the term
    folder = CACHE / f"sst2-lambda{weight:g}"
    if not (folder / "model.safetensors").is_file():
        train = load_glue("sst2", str(GLUE), "train").subset(setup.train_examples, seed=0)
        cfg = FinetuneConfig(max_steps=setup.base_steps, lr=LR_BASE, batch_size=BATCH, seed=0, diversity=weight)
        net, res = finetune(load_model("default", attn_implementation="eager"), tok, train, cfg, setup.max_length)
        print(f"lambda {weight:g}: fine-tuned in {res.seconds:.0f} s, task loss {res.final_loss:.3f}, "
              f"diversity {res.diversity:.3f}")
        save_model(net, folder, tok)
    return load_model(str(folder), attn_implementation="eager")


@torch.no_grad()
def spread(net, tok, texts) -> float:
    enc = encode(tok, texts, 64)
    return within_layer_diversity(net(**enc, output_attentions=True).attentions, enc["attention_mask"]).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", default="0,0.1,1")
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    tok = load_tokenizer("default")
    dev = [load_glue("sst2", str(GLUE), "dev")]
    train = load_glue("sst2", str(GLUE), "train")
    unseen = np.random.default_rng(0).permutation(len(train))[FULL["sst2"].train_examples:][:256]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(train.texts[i][0] for i in unseen) + "\n")
    cal = CalibrationConfig(source="text_file", path=f.name, num_sequences=256, batch_size=32, max_length=64)

    def acc(net) -> float:
        return 100 * score_splits(TorchClassifier(net, tok), dev, 64, 64).main

    rows = []
    for w in (float(x) for x in args.weights.split(",")):
        net = model_for(w, tok)
        a = adapter_for(net)
        layout = a.layout()
        scorers = {"random": [SCORERS.get("random")(seed=s) for s in range(3)], "magnitude": [SCORERS.get("magnitude")()],
                   "topology": [SCORERS.get("topology")()]}
        flat = [s for group in scorers.values() for s in group]
        for s in flat:
            s.begin(ScoringContext(net, a, layout, 0, tok))
        run_capture(net, a, calibration_batches(cal, tok, net.config, 0), flat, progress=False)
        row = {"lambda": w, "dev_accuracy": acc(net), "within_layer_D": spread(net, tok, dev[0].texts[:256])}
        target = HeadTarget(ratio=args.ratio, scope="global")
        for name, group in scorers.items():
            accs = [acc(apply_plan(net, PruningPlan.build(heads=plan_heads(s.finish().heads, layout, target))))
                    for s in group]
            row[f"pruned_{name}"] = float(np.mean(accs))
        rows.append(row)
        print(row, flush=True)
    report("diversity", rows, {"ratio": args.ratio, "recipe": "sweep.FULL['sst2'] base fine-tune + diversity term"})


if __name__ == "__main__":
    main()
