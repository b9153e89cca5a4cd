"""Time per pipeline stage on MiniLM, and the capture pass as a ratio to a plain forward.

Target: capture (attention maps + [CLS] FFN activations, eager attention) at most
1.3x a plain eager forward over the same batches. Run: python benchmarks/pipeline.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, report  # noqa: E402

from compressor.arch import adapter_for  # noqa: E402
from compressor.capture import run_capture  # noqa: E402
from compressor.data.calibration import calibration_batches  # noqa: E402
from compressor.models import load_model, load_tokenizer  # noqa: E402
from compressor.pipeline import run_recipe  # noqa: E402
from compressor.recipe import CalibrationConfig, load_recipe  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.scorers.base import Scorer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Everything(Scorer):
    """Asks for everything the capture pass can produce and does nothing with it."""

    name = "everything"
    needs = frozenset({"attentions", "ffn_summary"})

    def __init__(self):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    model = load_model("default", attn_implementation="eager")
    tok = load_tokenizer("default")
    a = adapter_for(model)
    cfg = CalibrationConfig(num_sequences=args.sequences, batch_size=args.batch_size,
                            min_length=args.length, max_length=args.length)
    batches = calibration_batches(cfg, tok, model.config, 0)

    @torch.no_grad()
    def plain():
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def capture_ffn():
        s = SCORERS.get("persistence")()
        s.begin(ScoringContext(model, a, a.layout(), 0))
        run_capture(model, a, batches, [s], progress=False)

    def capture_all():
        run_capture(model, a, batches, [Everything()], progress=False)

    plain()  # warm-up: first-touch allocations and thread pools
    # Interleaved rounds, minimum per pass: all three see the same machine state.
    plain_s = ffn_s = all_s = float("inf")
    for _ in range(3):
        plain_s = min(plain_s, best_of(plain, 1))
        ffn_s = min(ffn_s, best_of(capture_ffn, 1))
        all_s = min(all_s, best_of(capture_all, 1))
    rows = [
        {"pass": "plain eager forward", "seconds": plain_s, "ratio": 1.0},
        {"pass": "capture: [CLS] FFN activations", "seconds": ffn_s, "ratio": ffn_s / plain_s},
        {"pass": "capture: + attention maps", "seconds": all_s, "ratio": all_s / plain_s},
    ]
    recipe = load_recipe(REPO / "recipes" / "obce-50.yaml")
    with tempfile.TemporaryDirectory() as d:
        metrics = run_recipe(recipe, output=Path(d) / "o", progress=False)
    for stage, sec in metrics["stage_seconds"].items():
        rows.append({"pass": f"obce-50 stage: {stage}", "seconds": sec, "ratio": sec / plain_s})
    print(f"MiniLM, {args.sequences} sequences x {args.length} tokens, batch {args.batch_size}")
    report("pipeline", rows, {"sequences": args.sequences, "length": args.length,
                              "capture_ratio_target": 1.3, "capture_ratio": max(ffn_s, all_s) / plain_s})


if __name__ == "__main__":
    main()
