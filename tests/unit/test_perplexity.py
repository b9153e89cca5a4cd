"""Perplexity of causal LMs on a text file: the sliding window scores every token once,
the figure equals the model's own loss and Hugging Face's guide loop, PyTorch equals
ONNX, and every bad input is one line (CLI evaluate and recipe task wikitext)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.errors import CompressorError, RecipeError
from compressor.evaluate.perplexity import TorchLM, perplexity, token_stream, windows
from compressor.recipe import parse_recipe
from tests.decoders import VOCAB, llama_folder, text, tiny_llama

MODEL = tiny_llama()


def stream(n: int = 150, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 300), max_length=st.integers(2, 64), data=st.data())
def test_windows_score_every_token_once_with_enough_context(n, max_length, data):
    stride = data.draw(st.integers(1, max_length))
    spans = windows(n, max_length, stride)
    scored = [t for _, e, f in spans for t in range(f, e)]
    assert len(scored) == len(set(scored))  # never twice
    assert all(e - b <= max_length and b < f for b, e, f in spans)
    if stride < max_length:
        assert sorted(scored) == list(range(1, n))  # every token but the first
        for b, e, f in spans:  # the first token a window scores has max_length - stride tokens before it
            assert f - b >= min(f, max_length - stride)
    else:  # no overlap: a window's first token (every stride-th) has no context in it
        assert sorted(scored) == [t for t in range(1, n) if t % stride]
    assert spans[-1][1] == n or (stride == max_length and n % stride == 1)  # a last lone token has no context


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5)
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_one_window_equals_the_models_own_loss(kind):
    from tests.decoders import decoder

    model = MODEL if kind == "llama" else decoder(kind)
    ids = stream(40)
    res = perplexity(TorchLM(model), ids, max_length=64, stride=64)
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None], use_cache=False).loss
    assert res.windows == 1 and res.scored_tokens == 39
    assert res.nll == pytest.approx(loss.item(), rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(loss.item()), rel=1e-5)


def hf_guide(model, ids: torch.Tensor, max_length: int, stride: int) -> float:
    """The loop of Hugging Face's perplexity guide, token-weighted."""
    seq_len, nll_sum, n_tokens, prev_end = ids.numel(), 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        x = ids[None, begin:end]
        y = x.clone()
        y[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids=x, labels=y, use_cache=False).loss
        valid = int((y[:, 1:] != -100).sum())  # the model shifts labels left by one
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("max_length, stride", [(16, 8), (16, 16), (20, 7), (64, 32)])
def test_sliding_window_equals_the_hf_guide_and_ignores_batching(max_length, stride):
    ids = stream(150)
    want = hf_guide(MODEL, ids, max_length, stride)
    for batch in (1, 3, 8):
        res = perplexity(TorchLM(MODEL), ids, max_length, stride, batch_size=batch)
        assert res.perplexity == pytest.approx(want, rel=1e-5), batch
    limited = perplexity(TorchLM(MODEL), ids, max_length, stride, limit=60)
    assert limited.tokens == 60 and limited.file_tokens == 150
    assert limited.perplexity == pytest.approx(hf_guide(MODEL, ids[:60], max_length, stride), rel=1e-5)


def test_token_stream_puts_the_tokenizers_prefix_once(tmp_path):
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    body = text(12)
    ids, prefix = token_stream(body, tok)
    plain = tok(body, add_special_tokens=False)["input_ids"]
    assert prefix == 1 and ids[0].item() == tok.cls_token_id and ids[1:].tolist() == plain
    assert tok.sep_token_id not in ids.tolist()
    with pytest.raises(CompressorError, match="has no tokenizer"):
        token_stream(body, None)


def test_encoder_and_classifier_are_refused():
    from tests.conftest import tiny_model

    with pytest.raises(CompressorError, match=r"perplexity needs a causal language model; BertModel \(bert\) is an "
                                              r"encoder"):
        TorchLM(tiny_model("bert"))
    with pytest.raises(CompressorError, match="GPT2Model .* has no language-model head"):
        from transformers import GPT2Model

        from tests.conftest import tiny_config

        TorchLM(GPT2Model(tiny_config("gpt2")))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ppl")
    llama_folder(root / "llama")
    (root / "wiki.txt").write_text(text(60))
    return root


def run(args):
    return CliRunner().invoke(main, args)


def test_cli_reports_perplexity_and_onnx_agrees(work, tmp_path):
    from compressor.export import export_model
    from compressor.models import load_model, load_tokenizer

    res = run(["evaluate", "--model", str(work / "llama"), "--task", "wikitext", "--data-file", str(work / "wiki.txt"),
               "--json", str(tmp_path / "r.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["task"] == "wikitext" and got["backend"] == "pytorch" and got["max_length"] == 64 and got["stride"] == 32
    assert got["scored_tokens"] == got["tokens"] - 1 and got["tokens"] == got["file_tokens"]
    assert f"perplexity {got['perplexity']:.4f}" in res.output
    # the same figure from the module, on the same stream
    tok = load_tokenizer(str(work / "llama"))
    ids, _ = token_stream((work / "wiki.txt").read_text(), tok)
    direct = perplexity(TorchLM(load_model(str(work / "llama"))), ids, 64, 32)
    assert direct.perplexity == pytest.approx(got["perplexity"], rel=1e-6)
    # ONNX gives the same perplexity: the default export (with a KV cache, fed an empty
    # past) and one without the cache
    torch_res = perplexity(TorchLM(load_model(str(work / "llama"))), ids, 48, 16, limit=300)
    for cache in (True, False):
        onnx = tmp_path / f"onnx-{cache}"
        onnx.mkdir()
        export_model(load_model(str(work / "llama")), tok, onnx, optimize_graph=False, cache=cache)
        res = run(["evaluate", "--model", str(onnx), "--task", "wikitext", "--data-file", str(work / "wiki.txt"),
                   "--limit", "300", "--stride", "16", "--max-length", "48", "--batch-size", "2", "--json",
                   str(tmp_path / f"o-{cache}.json"), "--quiet"])
        assert res.exit_code == 0, res.output
        o = json.loads((tmp_path / f"o-{cache}.json").read_text())
        assert o["backend"] == "onnxruntime" and o["tokens"] == 300 and o["max_length"] == 48 and o["stride"] == 16
        assert o["perplexity"] == pytest.approx(torch_res.perplexity, rel=1e-4)


def bad_evaluations(work: Path, tmp_path: Path, bert: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    model, wiki = str(work / "llama"), str(work / "wiki.txt")
    base = ["evaluate", "--model", model, "--task", "wikitext"]
    return [
        (["evaluate", "--model", str(bert), "--task", "wikitext", "--data-file", wiki],
         "perplexity needs a causal language model; BertModel (bert) is an encoder"),
        (base + ["--data-file", str(tmp_path / "none.txt")], "text file not found"),
        (base + ["--data-file", str(empty)], "has no text (it is empty or only whitespace)"),
        (base + ["--data-file", str(latin)], "is not UTF-8 text (byte 3, line 1)"),
        (base, "--task wikitext needs --data-file"),
        (base + ["--data-file", wiki, "--data-dir", str(tmp_path)], "--data-dir applies to GLUE tasks"),
        (base + ["--data-file", wiki, "--split", "train"], "--split applies to GLUE tasks"),
        (["evaluate", "--model", model, "--task", "sst2", "--stride", "4"], "--stride applies to --task wikitext"),
        (base + ["--data-file", wiki, "--stride", "40", "--max-length", "16"], "--stride is 40, above --max-length (16)"),
        (base + ["--data-file", wiki, "--stride", "100"], "--stride is 100, above the window length 64"),
        (base + ["--data-file", wiki, "--max-length", "100"], "the model takes at most 64 tokens per sequence"),
        (base + ["--data-file", wiki, "--limit", "1"], "perplexity needs at least 2 tokens"),
        (base + ["--data-file", wiki, "--json", wiki], "would replace"),
    ]


def test_bad_evaluations_are_one_line(work, tmp_path, tiny_bert_dir):
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    for args, message in bad_evaluations(work, tmp_path, tiny_bert_dir):
        res = run(args + ["--quiet"])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
        assert message in lines[0], (args, lines[0])
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


BASE = {"scorers": ["magnitude"], "targets": {"heads": {"ratio": 0.5}}}
WIKI = {"name": "wikitext", "data_file": "w.txt"}


@pytest.mark.parametrize("data, message", [
    ({**BASE, "task": {"name": "wikitext"}, "evaluate": {}}, r"'task.data_file' is required for task wikitext"),
    ({**BASE, "task": {**WIKI, "data_dir": "d"}}, r"'task.data_dir' applies to GLUE tasks; task wikitext reads"),
    ({**BASE, "task": {**WIKI, "eval_examples": 5}}, r"'task.eval_examples' applies to GLUE tasks"),
    ({**BASE, "task": {"name": "sst2", "stride": 4}}, r"'task.stride' applies to task wikitext \(perplexity\)"),
    ({**BASE, "task": {"name": "sst2", "data_file": "x"}}, r"'task.data_file' applies to task wikitext"),
    ({**BASE, "task": {**WIKI, "stride": 64, "max_length": 32}}, r"'task.stride' is 64, above task.max_length \(32\)"),
    ({**BASE, "task": {**WIKI, "eval_tokens": 1}}, r"'task.eval_tokens' must be an integer >= 2"),
    ({**BASE, "task": WIKI, "finetune": {"base": {}}}, r"'finetune' fine-tunes on a GLUE task; task wikitext"),
    ({**BASE, "task": WIKI, "evaluate": {"split": "dev"}}, r"'evaluate.split' applies to GLUE tasks"),
    ({**BASE, "task": {"name": "wiki"}}, r"or wikitext: perplexity of a causal LM on a text file\)"),
    ({**BASE, "calibration": {"skip_headings": True}},
     r"'calibration.skip_headings' applies to calibration.source text_file; the source is random_tokens"),
    ({"scorers": [{"name": "fisher", "params": {"label_free": "lmm"}}], "targets": {"heads": {"ratio": 0.5}}},
     r"label_free' must be one of output, lm"),
])
def test_bad_perplexity_recipes_name_the_field(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_perplexity_recipe_defaults():
    r = parse_recipe({**BASE, "task": {**WIKI, "name": "WikiText"}, "evaluate": {}})
    assert r.task.name == "wikitext" and r.task.perplexity and r.task.stride is None
    assert r.evaluate.batch_size == 4  # windows; GLUE keeps 64 examples
    assert parse_recipe({**BASE, "task": {"name": "sst2"}, "evaluate": {}}).evaluate.batch_size == 64


def test_calibration_can_skip_wikitext_headings(work):
    from compressor.data.calibration import calibration_batches, is_heading
    from compressor.models import load_tokenizer
    from compressor.recipe import CalibrationConfig

    assert is_heading("= Robert Boulter =") and is_heading("= = = Early life = = =")
    assert not is_heading("= x") and not is_heading("a = b = c") and not is_heading("the film ( = 1 )")
    tok = load_tokenizer(str(work / "llama"))
    config = MODEL.config
    lines = [ln.strip() for ln in (work / "wiki.txt").read_text().splitlines() if ln.strip()]
    headings = sum(is_heading(ln) for ln in lines)
    assert headings == 7
    counts = {}
    for skip in (False, True):
        cfg = CalibrationConfig(source="text_file", path=str(work / "wiki.txt"), num_sequences=1000, batch_size=8,
                                max_length=64, skip_headings=skip)
        counts[skip] = sum(b.input_ids.shape[0] for b in calibration_batches(cfg, tok, config, 0))
    assert counts == {False: len(lines), True: len(lines) - headings}


def test_shipped_llama_recipe_is_valid():
    from compressor.recipe import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "llama-wikitext.yaml")
    assert r.task.perplexity and r.task.stride == 64 and r.calibration.skip_headings
    assert r.scorers[0].params["label_free"] == "lm" and r.heads.scorer == "fisher" and r.neurons.scorer == "magnitude"
