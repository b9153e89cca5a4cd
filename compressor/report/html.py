"""report.html: a self-contained page with the run's figures (a plain table for now)."""

from __future__ import annotations

import html
import json


def _row(cells, tag="td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def render_report(metrics: dict, plan: dict) -> str:
    before, after = metrics["before"], metrics["after"]
    summary = [
        ("parameters", before["parameters"], after["parameters"], f"{metrics['parameters_kept_share']:.2%}"),
        ("encoder FLOPs / token", before["encoder_flops_per_token"], after["encoder_flops_per_token"],
         f"{metrics['flops_kept_share']:.2%}"),
        ("heads", sum(before["heads_per_layer"]), sum(after["heads_per_layer"]),
         f"{sum(after['heads_per_layer']) / max(sum(before['heads_per_layer']), 1):.2%}"),
        ("FFN neurons", sum(before["ffn_per_layer"]), sum(after["ffn_per_layer"]),
         f"{sum(after['ffn_per_layer']) / max(sum(before['ffn_per_layer']), 1):.2%}"),
    ]
    layers = [
        (i, hb, ha, fb, fa)
        for i, (hb, ha, fb, fa) in enumerate(
            zip(before["heads_per_layer"], after["heads_per_layer"], before["ffn_per_layer"], after["ffn_per_layer"], strict=True)
        )
    ]
    stages = [(k, f"{v:.2f}") for k, v in metrics.get("stage_seconds", {}).items()]
    export = metrics.get("export")
    export_html = ""
    if export:
        files = [(name, f"{diff:.2g}", "yes" if "quantized" in name or diff <= export["atol"] else "NO")
                 for name, diff in export["parity"].items()]
        fused = ", ".join("-" if h is None else str(h) for h in export["fused_attention"]) or "not optimized"
        header = _row(("file", "max |onnx - torch|", f"within atol {export['atol']:g}"), "th")
        export_html = (
            f'<section id="export"><h2>ONNX export</h2><p>Task {html.escape(export["task"])}; '
            f'fused attention heads per layer: {html.escape(fused)}.</p><table>'
            f"{header}"
            f'{"".join(_row(r) for r in files)}</table>'
            "<p>int8 is not held to the fp32 tolerance; its accuracy cost is measured by evaluation.</p></section>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>compressor report: {html.escape(metrics['recipe'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:.3em .7em;text-align:right}}th{{background:#eee}}</style></head>
<body>
<h1>compressor report: {html.escape(metrics['recipe'])}</h1>
<p>Model: <code>{html.escape(metrics['model'])}</code> ({html.escape(before['architecture'])})</p>
<section id="summary"><h2>Summary</h2><table>{_row(('', 'before', 'after', 'kept'), 'th')}{''.join(_row(r) for r in summary)}</table>
<p>FLOPs at sequence length {metrics['flops_seq_len']}.</p></section>
<section id="layers"><h2>Kept per layer</h2><table>{_row(('layer', 'heads before', 'heads after', 'FFN before', 'FFN after'), 'th')}{''.join(_row(r) for r in layers)}</table></section>
{export_html}
<section id="plan"><h2>Why</h2><pre>{html.escape(json.dumps(plan.get('source', {}), indent=2))}</pre></section>
<section id="stages"><h2>Time per stage (s)</h2><table>{''.join(_row(r) for r in stages)}</table></section>
</body></html>
"""
