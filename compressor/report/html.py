"""report.html: one self-contained page per run. Pictures are embedded as base64 PNG,
so the file can be mailed or attached to an issue and still shows everything."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from ..results import ExportSummary, RunMetrics
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


def _summary(run: RunMetrics) -> str:
    before, after = run.before, run.after
    rows = [
        ("parameters", f"{before.parameters:,}", f"{after.parameters:,}", f"{run.parameters_kept_share:.2%}"),
        ("encoder FLOPs / token", f"{before.encoder_flops_per_token:,}", f"{after.encoder_flops_per_token:,}",
         f"{run.flops_kept_share:.2%}"),
        ("heads", sum(before.heads_per_layer), sum(after.heads_per_layer),
         f"{sum(after.heads_per_layer) / max(sum(before.heads_per_layer), 1):.2%}"),
        ("FFN neurons", sum(before.ffn_per_layer), sum(after.ffn_per_layer),
         f"{sum(after.ffn_per_layer) / max(sum(before.ffn_per_layer), 1):.2%}"),
    ]
    return (f'<section id="summary"><h2>Model</h2><p>Model <code>{_esc(run.model)}</code>: '
            f'{_esc(before.architecture)} ({_esc(before.model_type)}), {len(before.heads_per_layer)} layers, '
            f'head size {_esc(before.head_dim or "?")}.</p>'
            f"{_table(('', 'before', 'after', 'kept'), rows)}"
            f'<p class="note">FLOPs at sequence length {run.flops_seq_len}.</p>{_budget_note(run)}</section>')


def _budget_note(run: RunMetrics) -> str:
    b = run.budget
    if not b:
        return ""
    (kind, asked), = b.asked.items()
    got = b.achieved
    return (f'<p>Budget: keep at most {asked:.2%} of {"encoder FLOPs" if kind == "flops" else "head/neuron parameters"}'
            f' ({_esc(b.split)} split); kept {got["flops"]:.2%} of encoder FLOPs and {got["params"]:.2%} of '
            f'head/neuron parameters{"" if b.within_one_unit else " (NOT within one unit of the budget)"}.</p>')


def _kept(run: RunMetrics, plan: dict) -> str:
    b, a = run.before, run.after
    png = figures.kept_grid(b.heads_per_layer, a.heads_per_layer, plan.get("heads", {}), b.ffn_per_layer,
                            a.ffn_per_layer)
    rows = [(i, hb, ha, fb, fa) for i, (hb, ha, fb, fa) in
            enumerate(zip(b.heads_per_layer, a.heads_per_layer, b.ffn_per_layer, a.ffn_per_layer, strict=True))]
    return (f'<section id="kept"><h2>Kept per layer</h2>{img(png, "heads and FFN neurons kept per layer")}'
            f"{_table(('layer', 'heads before', 'heads after', 'FFN before', 'FFN after'), rows)}</section>")


def _reconstruct(run: RunMetrics) -> str:
    rec = run.reconstruct
    if not rec:
        return ""
    layers = rec.layers
    before = [lf["error_surgery"] for lf in layers]
    after = [lf["error_reconstructed"] for lf in layers]
    png = figures.layer_errors(before, after, "layer output error vs the unpruned model")

    def kept(lf, kind):
        f = next((f for f in lf["fits"] if f["kind"] == kind), None)
        return "-" if f is None else "kept" if f["kept"] else "undone"

    rows = [(lf["layer"], f"{lf['error_surgery']:.3g}", f"{lf['error_reconstructed']:.3g}", kept(lf, "attention"),
             kept(lf, "ffn")) for lf in layers]
    return (f'<section id="reconstruct"><h2>Reconstruction</h2><p>Output projections re-fit by ridge least squares '
            f'(ridge {rec.ridge:g}, {_esc(rec.kinds)}) on {rec.tokens:,} calibration tokens in '
            f'{rec.seconds:.1f} s. Error: {_esc(rec.error)}; a refit that made it larger is undone.</p>'
            f'{img(png, "layer output error before and after reconstruction")}'
            f"{_table(('layer', 'error after surgery', 'error reconstructed', 'attention refit', 'FFN refit'), rows)}"
            "</section>")


def _evaluation(run: RunMetrics) -> str:
    ev = run.evaluation
    lat = run.latency
    if not ev and not lat and run.perplexity:
        return ""  # a causal LM scored by perplexity: its own section
    if not ev and not lat:
        return ('<section id="evaluation"><h2>Accuracy and latency</h2><p class="note">Not measured in this run: '
                "add a <code>task</code> and an <code>evaluate</code> stage to the recipe.</p></section>")
    parts = ['<section id="evaluation"><h2>Accuracy and latency</h2>']
    if ev:
        first = next(iter(ev.values()))
        names = list(first.metrics)
        base = ev["original"].metrics if "original" in ev else {}
        rows = []
        for kind, r in ev.items():
            cells = [kind, r.backend, r.examples, "?" if r.batch_size is None else r.batch_size]
            for n in names:
                v = r.metrics[n]
                delta = f" ({100 * (v - base[n]):+.2f})" if base and kind != "original" else ""
                cells.append(f"{100 * v:.2f}{delta}")
            rows.append(cells)
        parts.append(f"<p>GLUE {_esc(first.task)}, split {_esc(first.split)}; points (x100), change vs the "
                     f"original in brackets; batch = examples per batch (length-sorted).</p>"
                     f"{_table(('model', 'runtime', 'examples', 'batch', *names), rows)}")
        notes = [f"{kind}: {r.batching}" for kind, r in ev.items() if r.batching]
        if any(r.batch_size is None for r in ev.values()):
            notes.append("batch ?: not recorded by this (older) run; int8 figures then depend on the evaluation "
                         "batch size, since dynamic int8 scales activations per batch")
        if notes:
            parts.append("".join(f'<p class="note">{_esc(n)}.</p>' for n in notes))
    if lat:
        ref = lat.models.get("original", {}).get("median_ms")
        rows = [(k, f"{v['median_ms']:.2f}", f"{v['p90_ms']:.2f}", f"{v['median_ms'] / ref:.2f}x" if ref else "-")
                for k, v in lat.models.items()]
        parts.append(f"<p>PyTorch latency, batch {lat.batch} x {lat.seq} tokens, timed interleaved "
                     f"({lat.runs} runs each).</p>{_table(('model', 'median ms', 'p90 ms', 'vs original'), rows)}")
    parts.append("</section>")
    return "".join(parts)


def _perplexity(run: RunMetrics) -> str:
    """Perplexity of the original, the pruned model and its ONNX graphs (task wikitext)."""
    ppl = run.perplexity
    if not ppl:
        return ""
    first = next(iter(ppl.values()))
    base = ppl["original"].perplexity if "original" in ppl else None
    rows = []
    for kind, p in ppl.items():
        change = "-" if base is None or kind == "original" else f"{p.perplexity / base:.3f}x"
        rows.append((kind, p.backend, f"{p.scored_tokens:,}", p.windows, p.batch_size, f"{p.nll:.4f}",
                     f"{p.perplexity:.4g}", change))
    notes = [f"{kind}: {p.batching}" for kind, p in ppl.items() if p.batching]
    return ('<section id="perplexity"><h2>Perplexity</h2>'
            f"<p>Task {_esc(first.task)} on <code>{_esc(first.source)}</code>: {first.tokens:,} tokens"
            f"{'' if first.file_tokens in (None, first.tokens) else f' (the first of {first.file_tokens:,})'}, windows of "
            f"{first.max_length} tokens every {first.stride} ({_esc(first.method or 'sliding window')}). "
            "Perplexity = exp(mean negative log-likelihood per scored token, nats); lower is better.</p>"
            f"{_table(('model', 'runtime', 'tokens scored', 'windows', 'batch', 'mean NLL', 'perplexity', 'vs original'), rows)}"
            + "".join(f'<p class="note">{_esc(n)}.</p>' for n in notes) + "</section>")


def _finetune(run: RunMetrics) -> str:
    """Every fine-tuning stage with its settings, and the unpruned fine-tuned model's metric."""
    ft = run.finetune
    if not ft:
        return ""

    def cfg(f, key):
        v = (f.config or {}).get(key)
        return "?" if f.config is None else "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    def teacher(f):
        if not f.distilled:
            return "none"
        d = (f.config or {}).get("distill") or {}
        how = f" (alpha {d['alpha']:g}, T {d['temperature']:g})" if "alpha" in d and "temperature" in d else ""
        return f"{f.teacher or 'the unpruned model'}{how}"

    task = next(iter(ft.values())).task or next((e.task for e in (run.evaluation or {}).values()), "?")
    rows = [(stage, f.steps, cfg(f, "lr"), cfg(f, "batch_size"), "?" if f.train_examples is None else f.train_examples,
             f.examples_seen, cfg(f, "seed"), teacher(f), f"{f.final_loss:.4f}", f"{f.seconds:.1f}")
            for stage, f in ft.items()]
    parts = [('<section id="finetune"><h2>Fine-tuning</h2>'
              f"<p>Task {_esc(task)}; base = before pruning, recovery = after. "
              "Train examples: the size of the training set used; examples seen: steps x batch.</p>"),
             _table(("stage", "steps", "lr", "batch", "train examples", "examples seen", "seed", "teacher",
                     "final loss", "seconds"), rows)]
    base = ft.get("base")
    if base is not None:
        orig = (run.evaluation or {}).get("original")
        where = f" (saved as <code>{_esc(base.saved_as)}/</code>)" if base.saved_as else ""
        if orig is not None:
            parts.append(f"<p>Unpruned fine-tuned model{where}: {_esc(orig.main_metric)} "
                         f"{100 * orig.metrics[orig.main_metric]:.2f} on {_esc(orig.task)} {_esc(orig.split)} "
                         f"({orig.examples} examples); the pruned models above are compared with it.</p>")
        else:
            parts.append(f"<p>Unpruned fine-tuned model{where}: not evaluated in this run.</p>")
    parts.append("</section>")
    return "".join(parts)


def _plan_scorer(plan: dict, kind: str) -> str | None:
    """The scorer whose ``kind`` ("heads" / "neurons") scores the plan cut on."""
    src = plan.get("source", {})
    if isinstance(src.get(kind), dict):
        return src[kind].get("scorer")
    b = src.get("budget")
    if isinstance(b, dict):
        return b.get("head_scorer" if kind == "heads" else "neuron_scorer")
    return None


def plan_cuts(values, removed: dict) -> list[tuple[int, float | None, float | None]]:
    """Per layer: (units removed, highest score removed, lowest score kept): where the plan
    actually cut that layer's scores. ``removed`` is plan.json's {"layer": [indices]}."""
    out = []
    for layer, v in enumerate(values):
        v = np.asarray(v, dtype=np.float64)
        idx = [int(i) for i in removed.get(str(layer), removed.get(layer, []))]
        mask = np.zeros(len(v), dtype=bool)
        mask[idx] = True
        out.append((len(idx), float(v[mask].max()) if mask.any() else None,
                    float(v[~mask].min()) if (~mask).any() else None))
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _scores(results: dict, layout_heads: list[int], plan: dict) -> str:
    """Evidence per scorer: distributions, and each scorer's own pictures and tables."""
    if not results:
        return ""
    parts = ['<section id="scores"><h2>Why these cuts: the scorers\' evidence</h2>']
    removed_heads = {f"{layer}.{h}" for layer, hs in plan.get("heads", {}).items() for h in hs}
    for name, res in results.items():
        for part in (res.heads, res.neurons):
            if part is None:
                continue
            key = "heads" if part is res.heads else "neurons"
            kind = "heads" if key == "heads" else "FFN neurons"
            parts.append(f"<h3>{_esc(name)}: {kind}</h3>")
            values = [list(v) for v in part.values]
            cuts = plan_cuts(values, plan.get(key, {})) if _plan_scorer(plan, key) == name else None
            title = f"{name} scores per layer ({kind}; higher = keep)"
            if cuts is not None:
                title += "; red: highest score removed"
            parts.append(img(figures.score_distributions(values, title, "score",
                                                         cuts=None if cuts is None else [c[1] for c in cuts]),
                             f"{name} score distributions"))
            if cuts is not None:
                rows = [(i, n, _fmt(hi), _fmt(lo)) for i, (n, hi, lo) in enumerate(cuts)]
                parts.append(f"<details><summary>where the plan cut each layer's {_esc(name)} scores</summary>"
                             f"{_table(('layer', 'removed', 'highest removed', 'lowest kept'), rows)}</details>")
            ex = part.extras
            mats = ex.get("matrices")
            if mats:
                mean = np.mean([np.asarray(m) for m in mats.values()], axis=0)
                parts.append(img(figures.heatmap(mean, layout_heads, f"redundancy: mean of {', '.join(mats)}"),
                                 "redundancy heatmap"))
                reps = list(ex.get("representatives", []))
                kept = [r for r in reps if r not in removed_heads]
                gone = [r for r in reps if r in removed_heads]
                parts.append(f'<p id="representatives">Representatives kept ({len(kept)} of {len(reps)}, one per cluster): '
                             f"{_esc(', '.join(kept) or 'none')}</p>")
                if gone:
                    parts.append(f'<p class="note">Representatives the plan removed: {_esc(", ".join(gone))} '
                                 "(its per-layer floors or scope overrode the clustering).</p>")
            if "types" in ex:
                counts = ", ".join(f"{k}: {v}" for k, v in ex["type_counts"].items())
                st = ex.get("stability", {})
                stab = ""
                if st.get("stable_share") is not None:  # Guan et al.'s figure first, the mean agreement second
                    stab = (f"; stable in every refit: {100 * st['stable_share']:.1f}% of heads "
                            f"(mean agreement {st.get('mean', float('nan')):.3f})")
                elif st.get("mean") is not None:
                    stab = f"; mean agreement over refits {st['mean']:.3f}"
                parts.append(f"<p>Head types: {_esc(counts)}{stab}.</p>")
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


def _parity_check(export: ExportSummary, file: str) -> str:
    """What a graph's parity is measured against: fp32 graphs against atol; int8 is not
    held to atol, so its cell names its measure (cosine vs PyTorch) and value."""
    if export.is_quantized(file):
        if export.quantized_cosine is None:
            return "int8, not held to atol (cosine not recorded)"
        return f"int8, not held to atol: mean cosine of {export.compared_output} vs PyTorch {export.quantized_cosine:.4f}"
    return f"within atol {export.atol:g}: {'yes' if export.parity[file] <= export.atol else 'NO'}"


def _export(run: RunMetrics) -> str:
    export = run.export
    if not export:
        return ""
    files = [(name, f"{diff:.2g}", _parity_check(export, name)) for name, diff in export.parity.items()]
    fused = ", ".join("-" if h is None else str(h) for h in export.fused_attention) or "not optimized"
    cache = ""
    if export.cache:
        decode = ", ".join(f"{name} {diff:.2g}" for name, diff in export.decode_parity.items())
        cache = (f"<p>With a key/value cache (key/value heads per layer: {_esc(str(export.cache_heads))}): one "
                 f"graph for the prompt and each decoding step. Max |onnx - torch| of the logits over decoding "
                 f"steps with the past: {_esc(decode)}.</p>")
    return (
        f'<section id="export"><h2>ONNX export</h2><p>Task {_esc(export.task)}; '
        f"fused attention heads per layer: {_esc(fused)}.</p>{cache}"
        f"{_table(('file', 'max |onnx - torch|', 'measured against'), files)}"
        f"<p class=\"note\">Parity compares {_esc(export.compared_output)} on a small padded batch. int8 is not held "
        "to the fp32 tolerance; its accuracy cost is measured by evaluation.</p></section>"
    )


def render_report(metrics: RunMetrics | dict, plan: dict, results: dict | None = None) -> str:
    """The report of one run. ``metrics``: the run's RunMetrics, or metrics.json's content
    (an older run's too; one lacking a needed field raises MetricsError, one line)."""
    run = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_dict(metrics)
    results = results or {}
    layout_heads = run.before.heads_per_layer
    stages = [(k, f"{v:.2f}") for k, v in run.stage_seconds.items()]
    body = "\n".join([
        _summary(run),
        _kept(run, plan),
        _reconstruct(run),
        _finetune(run),
        _evaluation(run),
        _perplexity(run),
        _scores(results, layout_heads, plan),
        _barcode_from_js(results, layout_heads),
        _export(run),
        f'<section id="plan"><h2>Plan source</h2><pre>{_esc(json.dumps(plan.get("source", {}), indent=2))}</pre></section>',
        f'<section id="stages"><h2>Time per stage (s)</h2>{_table(("stage", "seconds"), stages)}</section>',
    ])
    return page(f"compressor report: {run.recipe}", body)
