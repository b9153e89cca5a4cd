"""A recipe end to end on a tiny random LLaMA folder (grouped-query attention, gated FFN):
WikiText-style text calibration, a seed scorer (sieve_roles) for heads, magnitude for FFN
channels, fisher's next-token loss scored beside them, surgery, ONNX export, perplexity
of the original, the pruned model and the graph, and a report that shows it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from compressor import load_model
from compressor.arch import adapter_for
from compressor.cli import main
from compressor.evaluate.perplexity import TorchLM, perplexity, token_stream
from compressor.models import load_tokenizer
from compressor.results import RunMetrics
from tests.decoders import FFN, HEADS, LAYERS, llama_folder, text

RECIPE = """
model: {model}
seed: 0
calibration: {{source: text_file, path: {cal}, skip_headings: true, num_sequences: 24, batch_size: 8, max_length: 48}}
scorers:
  - {{name: sieve_roles, params: {{sieves: [local, prev, next, delimiter, cls, block]}}}}
  - magnitude
  - {{name: fisher, params: {{label_free: lm}}}}
targets:
  heads: {{scorer: sieve_roles, ratio: 0.5, min_per_layer: 1}}
  neurons: {{scorer: magnitude, ratio: 0.25}}
export: {{}}
task: {{name: wikitext, data_file: {wiki}, eval_tokens: 400}}
evaluate: {{latency: false, batch_size: 2}}
"""


def run(args):
    return CliRunner().invoke(main, args)


def test_llama_recipe_end_to_end(tmp_path):
    model = llama_folder(tmp_path / "llama")
    (tmp_path / "cal.txt").write_text(text(40, seed=1))
    (tmp_path / "wiki.txt").write_text(text(60, seed=2))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=model, cal=tmp_path / "cal.txt", wiki=tmp_path / "wiki.txt"))
    out = tmp_path / "out"
    res = run(["--recipe", str(recipe), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    run_ = RunMetrics.load(out / "metrics.json")
    assert run_.evaluation is None and set(run_.perplexity) == {"original", "pruned", "onnx_raw"}
    ppl = run_.perplexity
    assert ppl["pruned"].tokens == 400 and ppl["pruned"].scored_tokens == 399 and ppl["pruned"].stride == 32
    # the graph is the pruned model; pruning changed the model
    assert ppl["onnx_raw"].perplexity == pytest.approx(ppl["pruned"].perplexity, rel=1e-4)
    assert abs(ppl["pruned"].nll - ppl["original"].nll) > 1e-4
    for line in ("(original, 399 tokens scored)", "(pruned, 399 tokens scored)", "(onnx_raw, 399 tokens scored)"):
        assert line in res.output
    # whole key/value groups went: one of the two groups of 2 query heads per layer
    plan = json.loads((out / "plan.json").read_text())
    assert run_.after.heads_per_layer == [HEADS // 2] * LAYERS
    assert all(sorted(h) in ([0, 1], [2, 3]) for h in plan["heads"].values())
    assert run_.after.ffn_per_layer == [FFN - FFN // 4] * LAYERS
    assert plan["source"]["calibration"]["skip_headings"] is True
    scores = json.loads((out / "scores" / "sieve_roles.heads.json").read_text())
    assert "next" not in scores["extras"]["sieves"]  # a causal query never sees it
    assert json.loads((out / "scores" / "fisher.neurons.json").read_text())["extras"]["loss"].startswith("lm")
    html = (out / "report.html").read_text()
    assert 'id="perplexity"' in html and "onnx_raw" in html and "Not measured in this run" not in html
    # the saved model reloads at its layout and has the recorded perplexity; the original's
    # figure is what compress evaluate gives for the input folder
    pruned = load_model(str(out / "model"))
    assert list(adapter_for(pruned).layout().heads_per_layer) == run_.after.heads_per_layer
    ids, _ = token_stream((tmp_path / "wiki.txt").read_text(), load_tokenizer(str(out / "model")))
    again = perplexity(TorchLM(pruned), ids, 64, 32, limit=400)
    assert again.perplexity == pytest.approx(ppl["pruned"].perplexity, rel=1e-5)
    res = run(["evaluate", "--model", str(model), "--task", "wikitext", "--data-file", str(tmp_path / "wiki.txt"),
               "--limit", "400", "--json", str(tmp_path / "e.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["perplexity"] == pytest.approx(ppl["original"].perplexity,
                                                                                        rel=1e-5)


def test_wikitext_recipe_on_an_encoder_is_one_line(tmp_path, tiny_bert_dir):
    (tmp_path / "wiki.txt").write_text(text(10))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_bert_dir}\nscorers: [magnitude]\ntargets: {{heads: {{ratio: 0.5}}}}\n"
                      f"task: {{name: wikitext, data_file: {tmp_path / 'wiki.txt'}}}\nevaluate: {{}}\n")
    res = run(["--recipe", str(recipe), "--output", str(tmp_path / "o"), "--quiet"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and not (tmp_path / "o").exists()
    assert ("recipe field 'task.name' is wikitext, scored by perplexity, which needs a causal language model; "
            "BertModel (bert) is an encoder") in lines[0]
    recipe.write_text(recipe.read_text().replace(str(tmp_path / "wiki.txt"), str(tmp_path / "none.txt")))
    res = run(["--recipe", str(recipe), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2 and "task.data_file not found" in res.output and not (tmp_path / "o").exists()
