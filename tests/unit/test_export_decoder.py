"""Decoders exported with a key/value cache at per-layer head counts: graph names and
shapes, parity on the prompt and on decoding steps, ONNX Runtime greedy generation ==
PyTorch's, the CLI and recipe switches, generation timing. Tiny random GPT-2 and Llama
(pruned unevenly, one layer down to 0 heads)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from compressor import PruningPlan, apply_plan, save_model
from compressor.arch import adapter_for
from compressor.cli import main
from compressor.errors import CompressorError, RecipeError
from compressor.evaluate.generation import ort_greedy, torch_greedy
from compressor.export import export_model
from compressor.export.kv_cache import past_names, present_names
from compressor.export.onnx import ParityError
from tests.conftest import tiny_model, tiny_tokenizer

VOCAB = 128


def llama(kind: str = "llama", seed: int = 0, std: float = 0.05, layers: int = 3):
    """Tiny Llama-family decoder: 4 query heads in 2 key/value groups, head_dim 16."""
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[kind]
    cfg = cls(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
              num_hidden_layers=layers, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False,
              attn_implementation="eager")
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # RMSNorms start at 1: perturb everything so a wrong slice cannot hide
        for p in m.parameters():
            p.add_(torch.randn_like(p) * std)
    return m.eval()


def gpt2():
    # the fixture's GPT-2 plus larger noise, so greedy decoding does not settle on one token
    m = tiny_model("gpt2")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


# Layer 0 loses both key/value groups (0 heads, the layer that transformers reads the
# cache length from), layer 1 one group; FFNs lose channels unevenly.
LLAMA_PLAN = PruningPlan.build(heads={0: [0, 1, 2, 3], 1: [2, 3]}, neurons={0: range(40), 2: [1, 2]})
GPT2_PLAN = PruningPlan.build(heads={0: [0, 1, 2], 1: [0, 1, 2, 3], 2: [1]}, neurons={0: range(10)})
CASES = {"llama": (llama, LLAMA_PLAN, [0, 1, 2]), "gpt2": (gpt2, GPT2_PLAN, [1, 0, 3])}


def prompt(batch: int = 3, length: int = 7, seed: int = 0):
    """Left-padded prompts (as for generate): rows 1 and 2 start with padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :1] = 0
    return ids, mask


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each case pruned and exported once with its cache: (model, folder, result)."""
    out = {}
    for kind, (build, plan, _) in CASES.items():
        model = apply_plan(build(), plan)
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = (model, folder, export_model(model, None, folder, quantize="int8"))
    return out


@pytest.mark.smoke
@pytest.mark.parametrize("kind", list(CASES))
def test_cached_graph_names_shapes_and_parity(kind, exported):
    model, folder, res = exported[kind]
    kv_heads = CASES[kind][2]
    layers = len(kv_heads)
    assert res.cache and res.cache_heads == kv_heads == [h for h, _ in adapter_for(model).cache_shapes()]
    files = [folder / f for f in res.files.values()]
    for path in files:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in sess.get_inputs()}
        assert list(inputs) == list(adapter_for(model).spec.onnx_inputs) + past_names(layers)
        assert [o.name for o in sess.get_outputs()] == ["logits", *present_names(layers)]
        for i, h in enumerate(kv_heads):  # [batch, this layer's key/value heads, past, head_dim]
            assert inputs[f"past_key_values.{i}.key"] == ["batch_size", h, "past_sequence_length", 16 if kind == "llama" else 8]
        assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    # parity: the prompt and decoding steps with the past, each fp32 graph within atol
    fp32 = [f for f in res.files.values() if "quantized" not in f]
    assert all(res.parity[f] <= 1e-4 and res.decode_parity[f] <= 1e-4 for f in fp32)
    assert set(res.decode_parity) == set(res.parity)  # int8 too: reported, not held to atol
    assert -1 <= res.quantized_cosine <= 1
    assert any("layers [" in n and "[batch, 0, past, head_dim]" in n for n in res.notes)  # the empty layer
    saved = json.loads((folder / "export.json").read_text())
    assert saved["cache"] is True and saved["cache_heads"] == kv_heads and saved["decode_parity"] == res.decode_parity


@pytest.mark.smoke
@pytest.mark.parametrize("kind", list(CASES))
def test_ort_greedy_equals_pytorch_greedy(kind, exported):
    model, folder, res = exported[kind]
    ids, mask = prompt()
    ours = torch_greedy(model, ids, mask, new_tokens=8)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(ours, reference)  # our PyTorch loop is transformers' greedy search
    assert len(np.unique(ours)) > 3  # a model that repeats one token would prove little
    for f in (f for f in res.files.values() if "quantized" not in f):
        np.testing.assert_array_equal(ort_greedy(folder / f, ids.numpy(), mask.numpy(), new_tokens=8), ours)
    # the int8 graph runs the same loop (its tokens may differ: int8 is not exact)
    assert ort_greedy(folder / res.files["quantized"], ids.numpy(), mask.numpy(), 8).shape == (3, 8)


@pytest.mark.parametrize("kind", list(CASES))
def test_folded_shape_arithmetic_changes_no_output(kind, exported, tmp_path):
    """The cached graph is written with its shape arithmetic folded (export/shape_fold.py):
    far fewer nodes, and the same outputs as the traced graph at batch sizes, prompt and
    past lengths other than the tracing dummy's (one folded dimension would show here)."""
    import onnx

    from compressor.export.kv_cache import export_cached, position_ids
    from compressor.export.onnx import _eager_attention, explicit_head_counts
    from compressor.export.shape_fold import fold_shapes

    model, folder, res = exported[kind]
    note = next(n for n in res.notes if n.startswith("shape arithmetic folded"))
    before, after = (int(x) for x in note.split(": ")[1].split(" computing")[0].split(" -> "))
    assert after < {"llama": 0.6, "gpt2": 0.9}[kind] * before  # measured: llama ~0.5, gpt2 0.86
    assert sum(n.op_type != "Constant" for n in onnx.load(str(folder / "model.onnx")).graph.node) == after
    # the same export unfolded, then folded here: equal outputs everywhere
    raw, folded = tmp_path / "raw.onnx", tmp_path / "folded.onnx"
    with _eager_attention(model):
        export_cached(model, raw, 18)
    explicit_head_counts(raw)
    assert fold_shapes(raw, folded) == (before, after)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (raw, folded)]
    shapes = [(h, d) for h, d in adapter_for(model).cache_shapes()]
    rng = np.random.default_rng(0)
    for batch, past, seq in [(1, 0, 5), (1, 9, 1), (4, 2, 3), (2, 11, 1)]:
        mask = np.ones((batch, past + seq), dtype=np.int64)
        mask[-1, : min(2, past + seq - 1)] = 0  # the last row left-padded
        feeds = {"input_ids": rng.integers(0, model.config.vocab_size, (batch, seq)), "attention_mask": mask,
                 "position_ids": position_ids(mask, seq)}
        for i, (h, d) in enumerate(shapes):
            for k in ("key", "value"):
                feeds[f"past_key_values.{i}.{k}"] = rng.standard_normal((batch, h, past, d)).astype(np.float32)
        names = [i.name for i in sessions[0].get_inputs()]
        a, b = (s.run(None, {n: feeds[n] for n in names}) for s in sessions)
        assert a[0].shape == (batch, seq, model.config.vocab_size)  # logits
        assert all(x.shape[2] == past + seq for x in a[1:])  # presents: the past and the new tokens
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_empty_first_layer_keeps_the_cache_length():
    """A layer with no heads still appends to its cache entry, 0 heads wide: with layer 0
    empty, transformers would otherwise read a cache length of 0 at every step and
    decode left-padded rows with wrong positions and masks. Cached greedy == recomputing
    the whole sequence at every step."""
    model = apply_plan(llama(layers=2), PruningPlan.build(heads={0: [0, 1, 2, 3]}))
    ids, mask = prompt()
    cached = torch_greedy(model, ids, mask, new_tokens=6)
    cur, m = ids, mask
    with torch.no_grad():
        for _ in range(6):
            pos = (m.cumsum(1) - 1).clamp(min=0)
            nxt = model(input_ids=cur, attention_mask=m, position_ids=pos, use_cache=False).logits[:, -1].argmax(-1)
            cur, m = torch.cat([cur, nxt[:, None]], 1), torch.cat([m, torch.ones_like(m[:, :1])], 1)
    np.testing.assert_array_equal(cached, cur[:, ids.shape[1]:].numpy())


def test_export_without_cache_and_cache_errors(tmp_path):
    model = apply_plan(gpt2(), GPT2_PLAN)
    res = export_model(model, None, tmp_path / "nocache", cache=False, optimize_graph=False)
    sess = ort.InferenceSession(str(tmp_path / "nocache" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"] and not res.cache and res.decode_parity == {}
    assert res.parity["model.onnx"] <= 1e-4 and any("without a key/value cache" in n for n in res.notes)
    # an encoder has no cache: asking for one is an error saying why; unset, it exports as before
    with pytest.raises(CompressorError, match="cannot export with a key/value cache: bert is not a decoder"):
        export_model(tiny_model("bert"), None, tmp_path / "bert", cache=True)
    assert not (tmp_path / "bert").exists() or not any((tmp_path / "bert").iterdir())
    # tolerance failures fail, the cached graph's too
    (tmp_path / "tight").mkdir()
    with pytest.raises(ParityError, match=r"ONNX parity failed for model.onnx"):
        export_model(model, None, tmp_path / "tight", atol=1e-12, optimize_graph=False)


def test_qwen3_cached_graph_is_optimized_with_parity(tmp_path):
    """Qwen3 has an ONNX Runtime model type: the cached graph goes through its fusions and
    keeps parity on the prompt and decoding steps."""
    model = apply_plan(llama("qwen3", layers=2), PruningPlan.build(heads={1: [0, 1]}, neurons={0: [3]}))
    res = export_model(model, None, tmp_path)
    assert res.cache_heads == [2, 1] and "optimized" in res.files
    assert res.decode_parity["model_optimized.onnx"] <= 1e-4 and res.parity["model_optimized.onnx"] <= 1e-4
    assert any("fusions:" in n and "nodes" in n for n in res.notes)
    ids, mask = prompt()
    np.testing.assert_array_equal(ort_greedy(tmp_path / "model_optimized.onnx", ids.numpy(), mask.numpy(), 5),
                                  torch_greedy(model, ids, mask, 5))


def test_int8_cached_graph_keeps_logit_direction(tmp_path):
    # a standard init (no perturbation): the perturbed tiny fixtures are too degenerate for 8-bit
    model = apply_plan(llama(std=0.0, layers=2), PruningPlan.build(heads={0: [0, 1]}, neurons={1: range(30)}))
    res = export_model(model, None, tmp_path, quantize="int8")
    assert res.quantized_cosine > 0.99 and "model_quantized.onnx" in res.decode_parity


@pytest.mark.smoke
def test_cli_export_defaults_to_the_cache_for_decoders(tmp_path):
    folder = tmp_path / "gpt"
    save_model(apply_plan(gpt2(), GPT2_PLAN), folder)
    out = tmp_path / "onnx"
    res = CliRunner().invoke(main, ["export", "--model", str(folder), "--output", str(out), "--no-optimize"])
    assert res.exit_code == 0, res.output
    assert "key/value cache: key/value heads per layer [1, 0, 3]" in res.output
    assert json.loads((out / "export.json").read_text())["cache"] is True
    res = CliRunner().invoke(main, ["export", "--model", str(folder), "--output", str(tmp_path / "nc"), "--no-cache",
                                    "--no-optimize"])
    assert res.exit_code == 0 and json.loads((tmp_path / "nc" / "export.json").read_text())["cache"] is False
    # --cache on an encoder: one line naming why, exit 2, nothing written
    bert = tmp_path / "bert"
    save_model(tiny_model("bert"), bert, tiny_tokenizer(tmp_path))
    r = CliRunner().invoke(main, ["export", "--model", str(bert), "--output", str(tmp_path / "b"), "--cache"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "bert is not a decoder: it has no key/value cache" in r.output
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_recipe_cache_key_is_strict():
    from compressor.pipeline import _check_cache
    from compressor.recipe import parse_recipe

    base = {"scorers": [{"name": "magnitude"}], "targets": {"heads": {"ratio": 0.5}}}
    assert parse_recipe({**base, "export": {}}).export.cache is None
    assert parse_recipe({**base, "export": {"cache": False}}).export.cache is False
    with pytest.raises(RecipeError, match=r"recipe field 'export.cache' must be"):
        parse_recipe({**base, "export": {"cache": "yes please"}})
    with pytest.raises(RecipeError, match=r"export.cache is true, but bert is not a decoder"):
        _check_cache(tiny_model("bert"), parse_recipe({**base, "export": {"cache": True}}))
    _check_cache(gpt2(), parse_recipe({**base, "export": {"cache": True}}))  # a decoder with its LM head: fine


def test_bench_times_generation_original_vs_pruned(tmp_path):
    original, pruned = gpt2(), apply_plan(gpt2(), GPT2_PLAN)
    for name, m in (("orig", original), ("pruned", pruned)):
        save_model(m, tmp_path / name)
        export_model(m, None, tmp_path / f"{name}-onnx", optimize_graph=False)
    out = tmp_path / "gen.json"
    args = ["bench", "--model", str(tmp_path / "pruned"), "--onnx", str(tmp_path / "pruned-onnx"),
            "--original", str(tmp_path / "orig"), "--original-onnx", str(tmp_path / "orig-onnx"),
            "--prompt-len", "6", "--new-tokens", "3", "--runs", "2", "--warmup", "1"]
    res = CliRunner().invoke(main, args + ["--json", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert {(r["model"], r["backend"]) for r in rows} == {(m, b) for m in ("original", "pruned")
                                                          for b in ("pytorch", "ort-fp32")}
    for r in rows:
        assert r["prompt_len"] == 6 and r["new_tokens"] == 3 and r["batch"] == 1
        assert 0 < r["prompt_ms"] <= r["prompt_p90_ms"] and r["tokens_per_s"] > 0
        assert (r["vs_first"] == {}) == (r["model"] == "original")
    assert "tokens/s" in res.output and "prompt 6 tokens" in res.output
    # --seq-lens times full-sequence forwards instead, the cached graph fed an empty past
    res = CliRunner().invoke(main, ["bench", "--model", str(tmp_path / "pruned"), "--onnx", str(tmp_path / "pruned-onnx"),
                                    "--batch-sizes", "2", "--seq-lens", "5", "--runs", "1", "--warmup", "0",
                                    "--json", str(tmp_path / "grid.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert {(r["backend"], r["seq"]) for r in json.loads((tmp_path / "grid.json").read_text())} == {
        ("pytorch", 5), ("ort-fp32", 5)}
    # bad input: one line, exit 2
    bert = tmp_path / "bert"
    save_model(tiny_model("bert"), bert)
    export_model(pruned, None, tmp_path / "nocache", cache=False, optimize_graph=False)
    for extra, msg in (
        (["--model", str(bert), "--prompt-len", "8"], "--prompt-len time generation, which needs a decoder"),
        (["--model", str(tmp_path / "pruned"), "--seq-lens", "8", "--prompt-len", "4"], "give one or the other"),
        (["--model", str(tmp_path / "pruned"), "--onnx", str(tmp_path / "nocache")], "no key/value cache inputs"),
        (["--model", str(tmp_path / "pruned"), "--new-tokens", "0"], "--new-tokens must be an integer in the range"),
        (["--model", str(tmp_path / "pruned"), "--prompt-len", "60", "--new-tokens", "10"], "takes at most 64 tokens"),
    ):
        r = CliRunner().invoke(main, ["bench", *extra])
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_recipe_exports_a_decoder_with_its_cache(tmp_path):
    """A recipe's export stage on a decoder: the cached graph by default, recorded in
    metrics.json and the report."""
    folder = tmp_path / "gpt"
    save_model(gpt2(), folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {folder}\nscorers: [magnitude]\ntargets:\n  heads: {{ratio: 0.25}}\n"
                      f"export: {{optimize: false}}\n")
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "ONNX key/value cache: key/value heads per layer" in res.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["export"]["cache"] is True and m["export"]["decode_parity"]["model.onnx"] <= 1e-4
    assert m["export"]["cache_heads"] == m["after"]["heads_per_layer"]  # GPT-2: a key/value head per head
    assert "With a key/value cache" in (tmp_path / "o" / "report.html").read_text()
