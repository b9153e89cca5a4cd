"""``compress analyze``: the head metric D, persistence of the heads, and a comparison
of two models' diagrams (e.g. BERT vs GPT-2) by bottleneck and Wasserstein distance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arch.base import adapter_for
from .capture import run_capture
from .data.calibration import calibration_batches, fit_length
from .errors import CompressorError
from .models import load_model, load_tokenizer, model_summary, resolve_model
from .outputs import atomic_output, check_output
from .recipe import CalibrationConfig
from .report import figures
from .report.html import _esc, _table, img, page
from .scorers import ScoringContext
from .scorers.base import per_layer
from .topology.heads import TopologyScorer, Topology, analyze_distances, compare_diagrams


@dataclass
class ModelAnalysis:
    label: str
    model: str
    summary: dict
    heads: list[str]
    tokens: int
    d_sum: np.ndarray  # [N, N] D summed over the data's tokens
    d_mean: np.ndarray  # [N, N] D per token
    topology: Topology


def analyze_model(name: str, calibration: CalibrationConfig, seed: int = 0, max_dimension: int = 1,
                  label: str = "model", progress: bool = True) -> ModelAnalysis:
    net = load_model(name, attn_implementation="eager")
    tok = load_tokenizer(name)
    adapter = adapter_for(net)
    layout = adapter.layout()
    if sum(layout.heads_per_layer) == 0:
        raise CompressorError(f"model {name} has no attention heads left (every head was removed); "
                              f"the topology of heads needs at least one")
    calibration = fit_length(calibration, net.config, "calibration max_length (--max-length)")
    scorer = TopologyScorer(max_dimension=max_dimension)
    scorer.begin(ScoringContext(net, adapter, layout, seed, tok))
    run_capture(net, adapter, calibration_batches(calibration, tok, net.config, seed), [scorer], progress=progress)
    total, mean = scorer.distances()
    _, names = per_layer(np.zeros(len(mean)), layout.heads_per_layer)
    topo = analyze_distances(mean, names, max_dimension)
    return ModelAnalysis(label, name, model_summary(net), names, scorer.tokens, total, mean, topo)


def _files(a: ModelAnalysis) -> dict[str, bytes]:
    heads = a.summary["heads_per_layer"]
    return {
        "distances.json": json.dumps({"model": a.model, "heads": a.heads, "tokens": a.tokens,
                                      "d_sum": a.d_sum.round(6).tolist(), "d_mean": a.d_mean.round(8).tolist()}).encode(),
        "diagrams.json": json.dumps(a.topology.diagrams.to_json(), indent=1).encode(),
        "structure.json": json.dumps({"h0_clusters": a.topology.clusters, "h1_loops": a.topology.loops,
                                      "persistence_seconds": a.topology.seconds}, indent=2).encode(),
        "distance.png": figures.heatmap(a.d_mean, heads, f"{a.label}: head metric D per token"),
        "barcode.png": figures.barcode(a.topology.diagrams.to_json()["pairs"], f"{a.label}: persistence barcode"),
        "diagram.png": figures.persistence_diagram({a.label: a.topology.diagrams.to_json()["pairs"]},
                                                   f"{a.label}: persistence diagram"),
    }


def _section(a: ModelAnalysis, files: dict[str, bytes]) -> str:
    s = a.summary
    clusters = [(f"{c['death']:.4f}", c["size"], ", ".join(c["heads"][:12]) + (" ..." if c["size"] > 12 else ""))
                for c in a.topology.clusters]
    loops = [(f"{lp['birth']:.4f}", "never" if lp["death"] is None else f"{lp['death']:.4f}", " - ".join(lp["heads"]))
             for lp in a.topology.loops]
    bars = {f"H{d}": len(p) for d, p in a.topology.diagrams.pairs.items()}
    return (f'<section id="{a.label}"><h2>{a.label}: <code>{_esc(a.model)}</code></h2>'
            f"<p>{_esc(s['architecture'])} ({_esc(s['model_type'])}), {sum(s['heads_per_layer'])} heads in "
            f"{len(s['heads_per_layer'])} layers; D over {a.tokens:,} tokens; bars {bars}; persistence "
            f"{a.topology.seconds:.2f} s.</p>"
            + img(files["distance.png"], f"{a.label} distance heatmap") + img(files["barcode.png"], f"{a.label} barcode")
            + img(files["diagram.png"], f"{a.label} diagram")
            + "<h3>Longest-lived H0 clusters</h3>" + _table(("dies at", "heads", "members"), clusters)
            + "<h3>Most persistent H1 loops</h3>" + _table(("born", "dies", "cycle of heads"), loops)
            + "</section>")


def analyze(models: list[str], output: Path, calibration: CalibrationConfig, seed: int = 0, max_dimension: int = 1,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Analyze one or two models; writes per-model folders, comparison.json and report.html."""
    sources = [resolve_model(m) for m in models]
    check_output(output, overwrite, protect=[Path(s) for s in sources if Path(s).exists()])
    results = [analyze_model(m, calibration, seed, max_dimension, f"model{i + 1}", progress)
               for i, m in enumerate(models)]
    summary: dict = {"models": {a.label: {"model": a.model, "tokens": a.tokens,
                                          "bars": {f"H{d}": len(p) for d, p in a.topology.diagrams.pairs.items()},
                                          "persistence_seconds": a.topology.seconds} for a in results},
                     "calibration": calibration.__dict__, "max_dimension": max_dimension}
    sections = []
    with atomic_output(output, overwrite) as tmp:
        for a in results:
            files = _files(a)
            (tmp / a.label).mkdir()
            for fname, data in files.items():
                (tmp / a.label / fname).write_bytes(data)
            sections.append(_section(a, files))
        if len(results) == 2:
            x, y = results
            cmp = compare_diagrams(x.topology.diagrams, y.topology.diagrams)
            summary["comparison"] = cmp
            (tmp / "comparison.json").write_text(json.dumps(cmp, indent=2) + "\n")
            png = figures.persistence_diagram({x.label: x.topology.diagrams.to_json()["pairs"],
                                               y.label: y.topology.diagrams.to_json()["pairs"]},
                                              "both models' persistence diagrams")
            (tmp / "diagrams.png").write_bytes(png)
            rows = [(dim, f"{v['bottleneck']:.4f}", f"{v['wasserstein']:.4f}", f"{v['bars'][0]} / {v['bars'][1]}")
                    for dim, v in cmp.items()]
            sections.append('<section id="comparison"><h2>Comparison</h2>'
                            f"<p>{x.label} = <code>{_esc(x.model)}</code>, {y.label} = <code>{_esc(y.model)}</code>; "
                            "distances between the finite parts of the diagrams.</p>"
                            + _table(("dimension", "bottleneck", "Wasserstein-1", "finite bars"), rows)
                            + img(png, "both diagrams") + "</section>")
        (tmp / "analysis.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "report.html").write_text(page("compressor analysis: topology of attention heads", "\n".join(sections)))
    return summary
