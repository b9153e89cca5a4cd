"""Architecture families beyond BERT/RoBERTa/GPT-2/LLaMA on tiny random configs:
DistilBERT, ELECTRA (a sequence classifier), XLM-RoBERTa, ModernBERT (fused Wqkv, fused
GLU input Wi, local/global attention, RoPE, no biases) and Phi-3 (fused qkv_proj with
grouped-query widths, fused gate_up_proj). For each: surgery equals masking, a pruned
model reloads at its per-layer layout (and with stock transformers where the layout is
uniform), ONNX export matches PyTorch, every registered scorer runs, and a recipe runs
end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import PruningPlan, apply_plan, load_model, mask_plan, save_model
from compressor.arch import ARCHITECTURES, adapter_for
from compressor.arch.base import spec_for
from compressor.errors import ModelLoadError
from tests.conftest import tiny_tokenizer

FAMILIES = ["distilbert", "electra", "xlm-roberta", "modernbert", "phi3"]
LAYERS, HEADS, FFN, VOCAB = 2, 4, 48, 64
GROUP = {"phi3": 2}  # query heads per key/value head; 1 elsewhere
ATOL = 1e-5


def family_model(kind: str, seed: int = 0):
    import transformers as T

    common = {"vocab_size": VOCAB, "max_position_embeddings": 64, "attn_implementation": "eager"}
    if kind == "distilbert":
        m = T.DistilBertModel(T.DistilBertConfig(dim=32, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, **common))
    elif kind == "electra":  # the discriminator with a sequence-classification head; embeddings narrower than hidden
        m = T.ElectraForSequenceClassification(T.ElectraConfig(
            embedding_size=24, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=FFN, num_labels=2, **common))
    elif kind == "xlm-roberta":
        m = T.XLMRobertaModel(T.XLMRobertaConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                 intermediate_size=FFN, **{**common, "max_position_embeddings": 70}))
    elif kind == "modernbert":
        # layer 0 attends globally, layer 1 in a window of 4 tokens (sequences here are 11 long)
        m = T.ModernBertModel(T.ModernBertConfig(
            hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
            local_attention=4, global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
            cls_token_id=2, sep_token_id=3, **common))
    elif kind == "phi3":
        m = T.Phi3ForCausalLM(T.Phi3Config(
            hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
            intermediate_size=FFN, pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
            **common))
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb everything, so no wrong slice hides
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


MODELS = {k: family_model(k) for k in FAMILIES}


def inputs(seed: int = 0, batch_size: int = 3, seq: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4 :] = 0  # one right-padded row
    return ids, mask


def run(model, ids, mask, **kw):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **adapter_for(model).forward_kwargs(), **kw)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Outputs at real tokens ([tokens, features]); a classifier's logits as they are."""
    return x[mask.bool()] if x.dim() == 3 else x


# the same plans for every family: heads in whole pairs, so Phi-3's key/value groups of 2 stay whole
PLANS = {
    "heads": PruningPlan.build(heads={0: [0, 1], 1: [2, 3]}),
    "neurons": PruningPlan.build(neurons={0: [0, 5, FFN - 1], 1: range(10)}),
    "uneven": PruningPlan.build(heads={0: [2, 3]}, neurons={0: range(30), 1: [1, 2]}),
    "layer emptied": PruningPlan.build(heads={0: [0, 1], 1: range(HEADS)}, neurons={0: [7], 1: range(FFN)}),
}


@st.composite
def plans(draw, group: int):
    heads, neurons = {}, {}
    for layer in range(LAYERS):
        groups = draw(st.sets(st.integers(0, HEADS // group - 1)))
        heads[layer] = [h for g in groups for h in range(g * group, (g + 1) * group)]
        neurons[layer] = draw(st.sets(st.integers(0, FFN - 1), max_size=FFN))
    return PruningPlan.build(heads, neurons)


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5)
@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("plan", list(PLANS), ids=list(PLANS))
def test_surgery_equals_masking(kind, plan):
    model, plan = MODELS[kind], PLANS[plan]
    ids, mask = inputs()
    pruned = apply_plan(model, plan)
    assert adapter_for(pruned).layout() == plan.kept_layout(adapter_for(model).layout())
    diff = (real(run(pruned, ids, mask), mask) - real(run(mask_plan(model, plan), ids, mask), mask)).abs().max()
    assert diff.item() <= ATOL
    # the plan changed something (so the comparison is not vacuous) and the model is intact
    assert (real(run(pruned, ids, mask), mask) - real(run(model, ids, mask), mask)).abs().max() > 1e-4
    assert adapter_for(model).layout().heads_per_layer == (HEADS,) * LAYERS


@pytest.mark.parametrize("kind", FAMILIES)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_surgery_equals_masking_for_any_plan(kind, data):
    plan = data.draw(plans(GROUP.get(kind, 1)))
    model = MODELS[kind]
    ids, mask = inputs(1)
    diff = real(run(apply_plan(model, plan), ids, mask), mask) - real(run(mask_plan(model, plan), ids, mask), mask)
    assert diff.abs().max().item() <= ATOL


def test_fused_projections_lose_each_segment():
    """Phi-3's qkv_proj keeps [q | k | v] at (kept heads, kept groups, kept groups) * d and
    gate_up_proj rows j and j + F; ModernBERT's Wqkv three equal segments and Wi two."""
    pruned = apply_plan(MODELS["phi3"], PruningPlan.build(heads={0: [0, 1]}, neurons={0: [3, 4, 5]}))
    a, d = adapter_for(pruned), 16
    attn, mlp = pruned.model.layers[0].self_attn, pruned.model.layers[0].mlp
    assert attn.qkv_proj.out_features == (2 + 1 + 1) * d and attn.o_proj.in_features == 2 * d
    assert a.num_heads(0) == 2 and a.kv_heads(0) == 1 and attn.num_key_value_heads == 1
    assert attn.config.num_attention_heads == 2 and pruned.config.num_attention_heads == HEADS  # a per-layer view
    assert pruned.model.layers[1].self_attn.config is pruned.config  # untouched layers share the config
    full = MODELS["phi3"].model.layers[0]
    keep_q = torch.arange(2 * d, 4 * d)  # query heads 2, 3
    keep_kv = torch.arange(d, 2 * d)  # key/value head 1
    w = full.self_attn.qkv_proj.weight
    want = torch.cat([w[keep_q], w[4 * d + keep_kv], w[6 * d + keep_kv]])
    assert torch.equal(attn.qkv_proj.weight, want)
    keep = torch.tensor([j for j in range(FFN) if j not in (3, 4, 5)])
    assert torch.equal(mlp.gate_up_proj.weight, full.mlp.gate_up_proj.weight[torch.cat([keep, keep + FFN])])
    assert mlp.down_proj.in_features == FFN - 3 and a.ffn_size(0) == FFN - 3

    pruned = apply_plan(MODELS["modernbert"], PruningPlan.build(heads={1: [1]}, neurons={1: [0]}))
    layer = pruned.layers[1]
    assert layer.attn.Wqkv.out_features == 3 * 3 * 8 and layer.attn.num_heads == 3 and layer.attn.all_head_size == 24
    assert layer.mlp.Wi.out_features == 2 * (FFN - 1) and layer.mlp.Wo.in_features == FFN - 1
    assert adapter_for(pruned).layout().ffn_inputs == 2


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5)
@pytest.mark.parametrize("kind", FAMILIES)
def test_emptied_layer_keeps_one_attention_map_per_layer(kind):
    pruned = apply_plan(MODELS[kind], PLANS["layer emptied"])
    ids, mask = inputs()
    with torch.no_grad():
        out = pruned(input_ids=ids, attention_mask=mask, output_attentions=True, **adapter_for(pruned).forward_kwargs())
    assert [tuple(t.shape[:2]) for t in out.attentions] == [(3, 2), (3, 0)]


@pytest.mark.parametrize("kind", FAMILIES)
def test_save_and_reload_keep_the_per_layer_layout(kind, tmp_path):
    model = MODELS[kind]
    pruned = apply_plan(model, PLANS["layer emptied"])
    save_model(pruned, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    recorded = config["compressor_layout"]
    assert recorded["heads_per_layer"] == [2, 0] and recorded["ffn_per_layer"] == [FFN - 1, 0]
    assert recorded.get("group_size", 1) == GROUP.get(kind, 1)
    reloaded = load_model(str(tmp_path / "m"))
    assert type(reloaded) is type(pruned)
    assert adapter_for(reloaded).layout() == adapter_for(pruned).layout()
    ids, mask = inputs()
    assert (real(run(reloaded, ids, mask), mask) - real(run(pruned, ids, mask), mask)).abs().max() <= ATOL
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in pruned.parameters())


def _stock_load(folder):
    import transformers

    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(folder, attn_implementation="eager").eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=16,
                                        intermediate_size=FFN, num_hidden_layers=LAYERS, vocab_size=VOCAB,
                                        max_position_embeddings=64, tie_word_embeddings=False,
                                        attn_implementation="eager")).eval()


def _conftest_model(kind: str):
    from tests.conftest import tiny_model

    return tiny_model(kind)


def uniform_plans(layout) -> dict[str, PruningPlan]:
    """Every layer loses the same units: every third FFN neuron; and heads 0, 1 as well."""
    n = layout.num_layers
    ffn = {i: range(0, f, 3) for i, f in enumerate(layout.ffn_per_layer)}
    return {"ffn": PruningPlan.build(neurons=ffn),
            "heads": PruningPlan.build(heads={i: [0, 1] for i in range(n)}, neurons=ffn)}


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5)
@pytest.mark.parametrize("kind", FAMILIES + ["bert", "gpt2", "llama"])
def test_uniform_layouts_load_with_stock_transformers(kind, tmp_path):
    """A uniform FFN cut is a stock config everywhere; uniform head cuts only where the
    config states the head width (Phi-3, LLaMA), since BERT-style configs derive it from
    the head count. Either way compressor_layout is written and load_model reads it."""
    model = _llama() if kind == "llama" else _conftest_model(kind) if kind in ("bert", "gpt2") else MODELS[kind]
    spec = adapter_for(model).spec
    stock_heads = spec.config_head_dim is not None
    ids, mask = inputs()
    for name, plan in uniform_plans(adapter_for(model).layout()).items():
        pruned = apply_plan(model, plan)
        sizes = [a for a in (spec.config_ffn, spec.config_heads, spec.config_kv_heads, spec.config_head_dim) if a]
        before = {a: getattr(pruned.config, a, None) for a in sizes}
        save_model(pruned, tmp_path / name)
        assert {a: getattr(pruned.config, a, None) for a in sizes} == before  # the in-memory config keeps its values
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert "compressor_layout" in config
        ref = real(run(pruned, ids, mask), mask)
        assert (real(run(load_model(str(tmp_path / name)), ids, mask), mask) - ref).abs().max() <= ATOL
        if name == "ffn" or stock_heads:
            assert config[spec.config_ffn] == adapter_for(pruned).layout().ffn_per_layer[0]
            stock = _stock_load(tmp_path / name)
            assert adapter_for(stock).layout() == adapter_for(pruned).layout()
            assert (real(run(stock, ids, mask), mask) - ref).abs().max() <= ATOL
        else:  # not expressible: config.json keeps the full sizes and stock loading refuses the weights
            assert spec.stock_config(adapter_for(pruned).layout(), pruned.config) is None
            with pytest.raises(Exception, match="size mismatch|mismatched"):
                _stock_load(tmp_path / name)


def test_non_uniform_layout_keeps_the_full_config():
    layout = adapter_for(apply_plan(_llama(), PLANS["uneven"])).layout()
    assert ARCHITECTURES.get("llama").stock_config(layout, None) is None
    emptied = adapter_for(apply_plan(_llama(), PruningPlan.build(neurons={i: range(FFN) for i in range(LAYERS)}))).layout()
    assert ARCHITECTURES.get("llama").stock_config(emptied, None) is None  # a 0-wide FFN everywhere: not stock


@pytest.mark.parametrize("kind", FAMILIES)
def test_onnx_export_matches_pytorch(kind, tmp_path):
    from compressor.export.onnx import export_model

    pruned = apply_plan(MODELS[kind], PLANS["uneven"])
    res = export_model(pruned, None, tmp_path)
    assert res.heads_per_layer == [2, 4]
    assert all(v <= 1e-4 for v in res.parity.values()), res.parity
    if adapter_for(pruned).spec.ort_model_type is None:
        assert "model_optimized.onnx" not in res.parity and any("not optimized" in n for n in res.notes)
    else:
        assert res.parity["model_optimized.onnx"] <= 1e-4
        # fusion is recorded per layer: at the layer's head count, or None (not fused)
        assert all(f in (None, n) for f, n in zip(res.fused_attention, res.heads_per_layer, strict=True))
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["parity"] == res.parity


def _scorer_params(name: str) -> dict:
    return {"fisher": {"label_free": "output"}}.get(name, {})


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_registered_scorer_gives_finite_scores_of_the_right_shape(kind):
    from compressor.capture import run_capture
    from compressor.data.calibration import Batch
    from compressor.scorers import SCORERS, ScoringContext

    model = MODELS[kind]
    a = adapter_for(model)
    layout = a.layout()
    batches = [Batch(*inputs(seed, batch_size=4)) for seed in range(2)]
    scorers = [SCORERS.get(name)(**_scorer_params(name)) for name in SCORERS.names()]
    for s in scorers:
        s.begin(ScoringContext(model, a, layout, 0))
    run_capture(model, a, batches, scorers, progress=False)
    for s in scorers:
        res = s.finish()
        if "heads" in s.produces:
            assert [len(v) for v in res.heads.values] == list(layout.heads_per_layer), s.name
            assert all(np.isfinite(v).all() for v in res.heads.values), s.name
        if "neurons" in s.produces:
            assert [len(v) for v in res.neurons.values] == list(layout.ffn_per_layer), s.name
            assert all(np.isfinite(v).all() for v in res.neurons.values), s.name


RECIPE = """
model: {model}
calibration: {{num_sequences: 16, batch_size: 8, min_length: 4, max_length: 12}}
scorers: [persistence, magnitude]
targets:
  heads: {{scorer: magnitude, ratio: 0.5, min_per_layer: 1}}
  neurons: {{scorer: persistence, percentile: 50}}
export: {{optimize: true}}
"""


@pytest.mark.parametrize("kind", FAMILIES)
def test_recipe_end_to_end(kind, tmp_path):
    from compressor.cli import main

    folder = tmp_path / "model"
    MODELS[kind].save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=folder))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(out), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["before"]["architecture"] == adapter_for(MODELS[kind]).spec.name
    assert sum(m["after"]["heads_per_layer"]) == HEADS * LAYERS // 2 and min(m["after"]["heads_per_layer"]) >= 1
    assert all(f < FFN for f in m["after"]["ffn_per_layer"])
    assert m["after"]["parameters"] < m["before"]["parameters"]
    exported = json.loads((out / "onnx" / "export.json").read_text())
    assert all(v <= 1e-4 for v in exported["parity"].values())
    reloaded = load_model(str(out / "model"))
    assert list(adapter_for(reloaded).layout().heads_per_layer) == m["after"]["heads_per_layer"]


def test_unsupported_architecture_names_the_supported_ones_and_what_is_missing():
    with pytest.raises(ModelLoadError) as e:
        spec_for("albert")
    msg = str(e.value)
    assert "unsupported architecture 'albert'; supported: " + ", ".join(ARCHITECTURES.names()) in msg
    assert "no ArchSpec in compressor/arch/ declares model_type 'albert'" in msg
    for name in ("distilbert", "electra", "modernbert", "phi3"):
        assert name in ARCHITECTURES.names()
    assert spec_for("xlm-roberta").name == "roberta"


def test_adapter_that_does_not_fit_names_the_missing_module():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=8))
    del model.transformer.layer[0].attention.q_lin
    with pytest.raises(ModelLoadError, match=r"distilbert adapter: no query projection found at "
                                             r"'transformer\.layer\.0\.attention\.q_lin' in TransformerBlock"):
        adapter_for(model)
    model = DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=8))
    del model.transformer.layer[0].attention
    with pytest.raises(ModelLoadError, match="no attention module found at 'transformer.layer.0.attention'"):
        adapter_for(model)


@pytest.mark.parametrize("kind", FAMILIES)
def test_reconstruct_refits_every_family(kind):
    """Every family declares where each sublayer's residual sum is read (DistilBERT:
    sa_layer_norm / output_layer_norm; the pre-norm ModernBERT: mlp_norm's input and the
    layer output; Phi-3 as Llama), so the reconstruct stage runs on them and never makes
    a layer worse on its calibration data."""
    from compressor.data.calibration import Batch
    from compressor.recipe import ReconstructConfig
    from compressor.reconstruct import reconstruct

    original = MODELS[kind]
    pruned = apply_plan(original, PLANS["uneven"])
    batches = [Batch(*inputs(seed, batch_size=8, seq=12)) for seed in range(4)]
    res = reconstruct(pruned, original, adapter_for(pruned), adapter_for(original), batches, ReconstructConfig(),
                      progress=False)
    assert all(lf.error_reconstructed <= lf.error_surgery + 1e-9 for lf in res.layers)
    assert sum(lf.error_reconstructed for lf in res.layers) < sum(lf.error_surgery for lf in res.layers)
