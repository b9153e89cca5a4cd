"""report.html: one self-contained page per run. Pictures are embedded as base64 PNG,
so the file can be mailed or attached to an issue and still shows everything."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from . import figures

STYLE = """body{font-family:sans-serif;margin:2em;max-width:64em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .7em;text-align:right}
th{background:#eee}td.l{text-align:left}img{max-width:100%;display:block;margin:.5em 0}
section{margin-bottom:2em}.note{color:#666;font-size:.9em}"""

# Sets data-images-ok on <body> once every picture has decoded, so a headless browser
# (the report test) can tell a broken image from a good one.
CHECK_IMAGES = """<script>window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.images=i.length;
document.body.dataset.imagesOk=i.every(x=>x.complete&&x.naturalWidth>0)?'yes':'no';});</script>"""


def _esc(x) -> str:
    return html.escape(str(x))


def _row(cells, tag="td") -> str:
    out = []
    for c in cells:
        cls = ' class="l"' if tag == "td" and isinstance(c, str) and not _numeric(c) else ""
        out.append(f"<{tag}{cls}>{_esc(c)}</{tag}>")
    return "<tr>" + "".join(out) + "</tr>"


def _numeric(s: str) -> bool:
    try:
        float(s.replace("%", "").replace(",", "").replace("x", ""))
        return True
    except ValueError:
        return False


def _table(header, rows) -> str:
    return f"<table>{_row(header, 'th')}{''.join(_row(r) for r in rows)}</table>"


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{_esc(title)}</h1>\n{body}\n{CHECK_IMAGES}\n</body></html>\n")


def _summary(metrics: dict) -> str:
    before, after = metrics["before"], metrics["after"]
    rows = [
        ("parameters", f"{before['parameters']:,}", f"{after['parameters']:,}", f"{metrics['parameters_kept_share']:.2%}"),
        ("encoder FLOPs / token", f"{before['encoder_flops_per_token']:,}", f"{after['encoder_flops_per_token']:,}",
         f"{metrics['flops_kept_share']:.2%}"),
        ("heads", sum(before["heads_per_layer"]), sum(after["heads_per_layer"]),
         f"{sum(after['heads_per_layer']) / max(sum(before['heads_per_layer']), 1):.2%}"),
        ("FFN neurons", sum(before["ffn_per_layer"]), sum(after["ffn_per_layer"]),
         f"{sum(after['ffn_per_layer']) / max(sum(before['ffn_per_layer']), 1):.2%}"),
    ]
    return (f'<section id="summary"><h2>Model</h2><p>Model <code>{_esc(metrics["model"])}</code>: '
            f'{_esc(before["architecture"])} ({_esc(before["model_type"])}), {len(before["heads_per_layer"])} layers, '
            f'head size {_esc(before.get("head_dim", "?"))}.</p>'
            f"{_table(('', 'before', 'after', 'kept'), rows)}"
            f'<p class="note">FLOPs at sequence length {metrics["flops_seq_len"]}.</p>{_budget_note(metrics)}</section>')


def _budget_note(metrics: dict) -> str:
    b = metrics.get("budget")
    if not b:
        return ""
    (kind, asked), = b["asked"].items()
    got = b["achieved"]
    return (f'<p>Budget: keep at most {asked:.2%} of {"encoder FLOPs" if kind == "flops" else "head/neuron parameters"}'
            f' ({_esc(b["split"])} split); kept {got["flops"]:.2%} of encoder FLOPs and {got["params"]:.2%} of '
            f'head/neuron parameters{"" if b["within_one_unit"] else " (NOT within one unit of the budget)"}.</p>')


def _kept(metrics: dict, plan: dict) -> str:
    b, a = metrics["before"], metrics["after"]
    png = figures.kept_grid(b["heads_per_layer"], a["heads_per_layer"], plan.get("heads", {}), b["ffn_per_layer"],
                            a["ffn_per_layer"])
    rows = [(i, hb, ha, fb, fa) for i, (hb, ha, fb, fa) in
            enumerate(zip(b["heads_per_layer"], a["heads_per_layer"], b["ffn_per_layer"], a["ffn_per_layer"], strict=True))]
    return (f'<section id="kept"><h2>Kept per layer</h2>{img(png, "heads and FFN neurons kept per layer")}'
            f"{_table(('layer', 'heads before', 'heads after', 'FFN before', 'FFN after'), rows)}</section>")


def _reconstruct(metrics: dict) -> str:
    rec = metrics.get("reconstruct")
    if not rec:
        return ""
    layers = rec["layers"]
    before = [lf["error_surgery"] for lf in layers]
    after = [lf["error_reconstructed"] for lf in layers]
    png = figures.layer_errors(before, after, "layer output error vs the unpruned model")

    def kept(lf, kind):
        f = next((f for f in lf["fits"] if f["kind"] == kind), None)
        return "-" if f is None else "kept" if f["kept"] else "undone"

    rows = [(lf["layer"], f"{lf['error_surgery']:.3g}", f"{lf['error_reconstructed']:.3g}", kept(lf, "attention"),
             kept(lf, "ffn")) for lf in layers]
    return (f'<section id="reconstruct"><h2>Reconstruction</h2><p>Output projections re-fit by ridge least squares '
            f'(ridge {rec["ridge"]:g}, {_esc(rec["kinds"])}) on {rec["tokens"]:,} calibration tokens in '
            f'{rec["seconds"]:.1f} s. Error: {_esc(rec["error"])}; a refit that made it larger is undone.</p>'
            f'{img(png, "layer output error before and after reconstruction")}'
            f"{_table(('layer', 'error after surgery', 'error reconstructed', 'attention refit', 'FFN refit'), rows)}"
            "</section>")


def _evaluation(metrics: dict) -> str:
    ev = metrics.get("evaluation")
    lat = metrics.get("latency")
    if not ev and not lat:
        return ('<section id="evaluation"><h2>Accuracy and latency</h2><p class="note">Not measured in this run: '
                "add a <code>task</code> and an <code>evaluate</code> stage to the recipe.</p></section>")
    parts = ['<section id="evaluation"><h2>Accuracy and latency</h2>']
    if ev:
        names = list(next(iter(ev.values()))["metrics"])
        base = ev.get("original", {}).get("metrics", {})
        rows = []
        for kind, r in ev.items():
            cells = [kind, r["backend"], r["examples"]]
            for n in names:
                v = r["metrics"][n]
                delta = f" ({100 * (v - base[n]):+.2f})" if base and kind != "original" else ""
                cells.append(f"{100 * v:.2f}{delta}")
            rows.append(cells)
        task = next(iter(ev.values()))
        parts.append(f"<p>GLUE {_esc(task['task'])}, split {_esc(task['split'])}; points (x100), change vs the "
                     f"original in brackets.</p>{_table(('model', 'runtime', 'examples', *names), rows)}")
    if lat:
        rows = [(k, f"{v['median_ms']:.2f}", f"{v['p90_ms']:.2f}", f"{v['median_ms'] / lat['original']['median_ms']:.2f}x")
                for k, v in lat.items() if isinstance(v, dict)]
        parts.append(f"<p>PyTorch latency, batch {lat['batch']} x {lat['seq']} tokens, timed interleaved "
                     f"({lat['runs']} runs each).</p>{_table(('model', 'median ms', 'p90 ms', 'vs original'), rows)}")
    parts.append("</section>")
    return "".join(parts)


def _scores(results: dict, layout_heads: list[int]) -> str:
    """Evidence per scorer: distributions, and each scorer's own pictures and tables."""
    if not results:
        return ""
    parts = ['<section id="scores"><h2>Why these cuts: the scorers\' evidence</h2>']
    for name, res in results.items():
        for part in (res.heads, res.neurons):
            if part is None:
                continue
            kind = "heads" if part is res.heads else "FFN neurons"
            parts.append(f"<h3>{_esc(name)}: {kind}</h3>")
            parts.append(img(figures.score_distributions([list(v) for v in part.values],
                                                         f"{name} scores per layer ({kind}; higher = keep)", "score"),
                             f"{name} score distributions"))
            ex = part.extras
            mats = ex.get("matrices")
            if mats:
                mean = np.mean([np.asarray(m) for m in mats.values()], axis=0)
                parts.append(img(figures.heatmap(mean, layout_heads, f"redundancy: mean of {', '.join(mats)}"),
                                 "redundancy heatmap"))
                parts.append(f"<p>Representatives kept: {_esc(', '.join(ex.get('representatives', [])))}</p>")
            if "types" in ex:
                counts = ", ".join(f"{k}: {v}" for k, v in ex["type_counts"].items())
                stab = ex.get("stability", {}).get("mean")
                parts.append(f"<p>Head types: {_esc(counts)}"
                             f"{'' if stab is None else f'; stability {stab:.3f}'}.</p>")
                for fig_name, png in ex.get("figures", {}).items():
                    parts.append(img(png, fig_name))
                rows = [(h, t) for h, t in zip(ex["heads"], ex["types"], strict=True)]
                parts.append(f"<details><summary>type of every head</summary>{_table(('head', 'type'), rows)}</details>")
            if "roles" in ex:
                counts = ", ".join(f"{k}: {v}" for k, v in ex["role_counts"].items())
                parts.append(f"<p>Sieve roles (bias > {ex['tau']}, p < {ex['alpha']}): {_esc(counts)}.</p>")
                rows = [(h, ", ".join(r) or "none") for h, r in ex["roles"].items()]
                parts.append(f"<details><summary>roles of every head</summary>{_table(('head', 'roles'), rows)}</details>")
            if "diagrams" in ex:
                parts.append(img(figures.barcode(ex["diagrams"]["pairs"], f"{name}: persistence barcode of the heads"),
                                 "barcode"))
                parts.append(img(figures.heatmap(ex["distance_mean"], layout_heads, "head metric D per token"),
                                 "head metric heatmap"))
    parts.append("</section>")
    return "".join(parts)


def _barcode_from_js(results: dict, layout_heads: list[int]) -> str:
    """Every run shows a barcode when it has a head metric: the topology scorer's own,
    else the redundancy scorer's Jensen-Shannon distance matrix (the same metric,
    averaged per sequence rather than summed over tokens)."""
    if any("diagrams" in (r.heads.extras if r.heads else {}) for r in results.values()):
        return ""
    for r in results.values():
        mats = (r.heads.extras.get("matrices") or {}) if r.heads else {}
        if "js" in mats:
            from ..topology.heads import rips_persistence

            d = rips_persistence(np.asarray(mats["js"]), 1)
            return ('<section id="topology"><h2>Topology of the heads</h2>'
                    + img(figures.barcode(d.to_json()["pairs"], "persistence barcode, Jensen-Shannon head distance"),
                          "barcode") + "</section>")
    return ('<section id="topology"><h2>Topology of the heads</h2><p class="note">No head metric in this run: '
            "add the <code>topology</code> or <code>redundancy</code> scorer for a barcode.</p></section>")


def render_report(metrics: dict, plan: dict, results: dict | None = None) -> str:
    results = results or {}
    layout_heads = metrics["before"]["heads_per_layer"]
    export = metrics.get("export")
    export_html = ""
    if export:
        files = [(name, f"{diff:.2g}", "yes" if "quantized" in name or diff <= export["atol"] else "NO")
                 for name, diff in export["parity"].items()]
        fused = ", ".join("-" if h is None else str(h) for h in export["fused_attention"]) or "not optimized"
        export_html = (
            f'<section id="export"><h2>ONNX export</h2><p>Task {_esc(export["task"])}; '
            f"fused attention heads per layer: {_esc(fused)}.</p>"
            f"{_table(('file', 'max |onnx - torch|', 'within atol ' + format(export['atol'], 'g')), files)}"
            "<p class=\"note\">int8 is not held to the fp32 tolerance; its accuracy cost is measured by evaluation."
            "</p></section>"
        )
    stages = [(k, f"{v:.2f}") for k, v in metrics.get("stage_seconds", {}).items()]
    body = "\n".join([
        _summary(metrics),
        _kept(metrics, plan),
        _reconstruct(metrics),
        _evaluation(metrics),
        _scores(results, layout_heads),
        _barcode_from_js(results, layout_heads),
        export_html,
        f'<section id="plan"><h2>Plan source</h2><pre>{_esc(json.dumps(plan.get("source", {}), indent=2))}</pre></section>',
        f'<section id="stages"><h2>Time per stage (s)</h2>{_table(("stage", "seconds"), stages)}</section>',
    ])
    return page(f"compressor report: {metrics['recipe']}", body)
