"""Does pruning turn into speed? Original vs pruned, PyTorch vs ONNX Runtime fp32 vs int8.

Models: the real MiniLM and a BERT-base-shaped model (random weights: latency does not
depend on their values), each as is and pruned to 50% of heads (global, by magnitude,
at least one per layer) and 50% of FFN neurons (per layer, by magnitude). Every model
is saved, reloaded and exported with compressor itself, so this times what users get.

Backends: PyTorch with eager attention, PyTorch with SDPA attention, ORT fp32 on the
optimized graph (attention fused per layer), ORT dynamic int8.
Targets (batch 8 x 128): ORT pruned/original latency ratio <= 1.15 x the FLOPs ratio;
ORT fp32 faster than PyTorch eager; int8 faster than ORT fp32.

Run: python benchmarks/latency.py [--quick | --full] [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from compressor.arch import adapter_for  # noqa: E402
from compressor.evaluate.latency import Subject, benchmark  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.metrics import encoder_flops_per_token  # noqa: E402
from compressor.models import load_model, load_tokenizer, save_model  # noqa: E402
from compressor.planning import make_plan  # noqa: E402
from compressor.recipe import HeadTarget, NeuronTarget  # noqa: E402
from compressor.scorers import SCORERS, ScoringContext  # noqa: E402
from compressor.surgery.prune import apply_plan  # noqa: E402


def pruned_half(model):
    a = adapter_for(model)
    s = SCORERS.get("magnitude")()
    s.begin(ScoringContext(model, a, a.layout(), 0))
    scores = s.finish()
    plan = make_plan(a.layout(), scores.heads, scores.neurons, HeadTarget(ratio=0.5, scorer="magnitude", min_per_layer=1),
                     NeuronTarget(ratio=0.5, scorer="magnitude"), {})
    return apply_plan(model, plan)


def prepare(name: str, model, tokenizer, root: Path) -> dict:
    """Save original and pruned, export both; returns {label: (folder, onnx folder, flops)}."""
    out = {}
    for label, m in ((f"{name}", model), (f"{name}-pruned", pruned_half(model))):
        folder, onnx_dir = root / label, root / f"{label}-onnx"
        save_model(m, folder, tokenizer)
        onnx_dir.mkdir()
        res = export_model(load_model(str(folder), attn_implementation="eager"), tokenizer, onnx_dir, quantize="int8")
        out[label] = (folder, onnx_dir, encoder_flops_per_token(adapter_for(m).layout(), 128), res.fused_attention)
        print(f"{label}: heads {adapter_for(m).layout().heads_per_layer}, fused {res.fused_attention}, "
              f"parity {max(v for k, v in res.parity.items() if 'quantized' not in k):.2g}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="MiniLM only, batch 8 x 128, 10 runs")
    ap.add_argument("--full", action="store_true", help="every shape for BERT-base too")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    runs = 10 if args.quick else args.runs
    grid = [(b, s) for b in (1, 8, 32) for s in (32, 128)]
    target = [(8, 128)]

    from transformers import BertConfig, BertModel

    rows, summary = [], []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tok = load_tokenizer("default")
        sets = [("MiniLM", load_model("default", attn_implementation="eager"), target if args.quick else grid)]
        if not args.quick:
            sets.append(("BERT-base", BertModel(BertConfig(attn_implementation="eager")).eval(), grid if args.full else target))
        for name, model, shapes in sets:
            prepared = prepare(name, model, tok, root)
            subjects = []
            for label, (folder, onnx_dir, _, _) in prepared.items():
                for attn in ("eager", "sdpa"):
                    subjects.append(Subject(label, load_model(str(folder), attn_implementation=attn),
                                            torch_backend=f"pytorch-{attn}"))
                subjects.append(Subject(label, onnx_dir=onnx_dir))
            rows += benchmark(subjects, shapes, runs, progress=print)
            del subjects
            # ratios at the target shape
            orig, pruned = prepared[name], prepared[f"{name}-pruned"]
            at = {(r.model, r.backend): r.median_ms for r in rows if (r.batch, r.seq) == target[0]}
            flops_ratio = pruned[2] / orig[2]
            for backend in ("pytorch-eager", "pytorch-sdpa", "ort-fp32", "ort-int8"):
                lat = at[(f"{name}-pruned", backend)] / at[(name, backend)]
                summary.append({"model": name, "backend": backend, "latency_ratio": lat, "flops_ratio": flops_ratio,
                                "ratio_over_flops": lat / flops_ratio,
                                "target": "<= 1.15" if backend == "ort-fp32" else ""})
            for label in (name, f"{name}-pruned"):
                summary.append({"model": label, "backend": "ort-fp32 / pytorch-eager",
                                "latency_ratio": at[(label, "ort-fp32")] / at[(label, "pytorch-eager")],
                                "flops_ratio": "", "ratio_over_flops": "", "target": "< 1"})
                summary.append({"model": label, "backend": "ort-fp32 / pytorch-sdpa",
                                "latency_ratio": at[(label, "ort-fp32")] / at[(label, "pytorch-sdpa")],
                                "flops_ratio": "", "ratio_over_flops": "", "target": ""})
                summary.append({"model": label, "backend": "ort-int8 / ort-fp32",
                                "latency_ratio": at[(label, "ort-int8")] / at[(label, "ort-fp32")],
                                "flops_ratio": "", "ratio_over_flops": "", "target": "< 1"})
    report("latency", [r.to_json() for r in rows], {"runs": runs})
    print(f"\nRatios at batch {target[0][0]} x {target[0][1]} (median latency)")
    report("latency_summary", summary, {"shape": target[0]})


if __name__ == "__main__":
    main()
