"""OBCE persistence step: closed form for a BERT-base-sized layer set vs gudhi.

12 layers x 3072 neurons = 36,864 point clouds of 1,000 [CLS] values each.
Target: the closed form under 0.5 s on 2 cores; gudhi's time per neuron measured on a
sample and compared per neuron. Run: python benchmarks/persistence.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import gudhi
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, report  # noqa: E402

from compressor.topology.line_h0 import STATISTICS, layer_scores  # noqa: E402

LAYERS, NEURONS, INPUTS, GUDHI_SAMPLE = 12, 3072, 1000, 40


def parameter_shares() -> list[dict]:
    """Parameters kept when OBCE removes p% of every layer's FFN neurons, by real surgery
    on models built from config (the weights do not matter for counting)."""
    from transformers import AutoConfig, BertConfig, BertModel

    from compressor import PruningPlan, apply_plan
    from compressor.arch import adapter_for
    from compressor.models import default_model_path

    rows = []
    for name, config in (("MiniLM-L6-H384", AutoConfig.from_pretrained(default_model_path())),
                         ("BERT-base-shaped", BertConfig())):
        model = BertModel(config)
        total = sum(p.numel() for p in model.parameters())
        layout = adapter_for(model).layout()
        for pct in (30, 50, 70):
            plan = PruningPlan.build(neurons={i: range(int(f * pct / 100)) for i, f in enumerate(layout.ffn_per_layer)})
            kept = sum(p.numel() for p in apply_plan(model, plan).parameters())
            rows.append({"model": name, "percentile": pct, "parameters": total, "kept": kept, "kept_share": kept / total})
    return rows


def main() -> None:
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(INPUTS, NEURONS, generator=g) for _ in range(LAYERS)]  # per layer [inputs, neurons]

    def closed_form(stat="max_death"):
        layer_scores(acts, stat)

    ours = best_of(closed_form, repeats=5)
    rows = [{"method": "closed form, max_death", "neurons": LAYERS * NEURONS, "seconds": ours,
             "us_per_neuron": ours / (LAYERS * NEURONS) * 1e6}]
    for stat in STATISTICS[1:]:
        t = best_of(lambda stat=stat: closed_form(stat), repeats=3)
        rows.append({"method": f"closed form, {stat}", "neurons": LAYERS * NEURONS, "seconds": t,
                     "us_per_neuron": t / (LAYERS * NEURONS) * 1e6})

    sample = acts[0][:, :GUDHI_SAMPLE].double().numpy()

    def with_gudhi():
        for j in range(GUDHI_SAMPLE):
            st = gudhi.RipsComplex(points=sample[:, j : j + 1]).create_simplex_tree(max_dimension=1)
            st.persistence()

    gt = best_of(with_gudhi, repeats=1)
    per = gt / GUDHI_SAMPLE
    rows.append({"method": f"gudhi RipsComplex ({GUDHI_SAMPLE} neurons sampled)", "neurons": GUDHI_SAMPLE,
                 "seconds": gt, "us_per_neuron": per * 1e6})
    speedup = per / (ours / (LAYERS * NEURONS))
    print(f"{LAYERS} x {NEURONS} neurons, {INPUTS} inputs each; target closed form < 0.5 s")
    report("persistence", rows, {"target_seconds": 0.5, "closed_form_seconds": ours,
                                         "speedup_per_neuron_vs_gudhi": speedup,
                                         "gudhi_extrapolated_seconds": per * LAYERS * NEURONS})
    print("\nParameters kept by OBCE FFN pruning (the paper: BERT-base to 58.47%, BERT-large to 52.3%)")
    shares = parameter_shares()
    report("persistence_parameters", shares, {})
    print(f"closed form {ours:.3f} s; gudhi {per * 1e3:.1f} ms/neuron -> {speedup:,.0f}x faster per neuron "
          f"(gudhi for all: ~{per * LAYERS * NEURONS / 60:.0f} min)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
