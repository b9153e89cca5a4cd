"""LLaMA-style decoders (grouped-query attention, gated FFN, RMSNorm): Llama, Mistral,
Qwen2, Qwen3 on tiny random configs. Surgery must equal masking, whole key/value groups
go together, gate/up/down channels go together, and a pruned model reloads at its
per-layer layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import PruningPlan, apply_plan, load_model, mask_plan, save_model
from compressor.arch import adapter_for
from compressor.arch.base import Layout
from compressor.errors import PlanError, RecipeError
from compressor.recipe import HeadTarget

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
ATOL = 1e-5
LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2, 4, 2, 96, 128
GROUP = HEADS // KV_HEADS


def llama_config(kind: str):
    import transformers

    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[kind]
    # head_dim explicit: Qwen3's default (128) is not hidden / heads
    return cls(hidden_size=64, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
               intermediate_size=FFN, num_hidden_layers=LAYERS, vocab_size=VOCAB, max_position_embeddings=64,
               attn_implementation="eager", tie_word_embeddings=False)


def llama_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(llama_config(kind), attn_implementation="eager")
    with torch.no_grad():  # RMSNorm weights start at 1 and Qwen2's biases at 0: perturb everything
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


MODELS = {k: llama_model(k) for k in FAMILIES}


def inputs(seed: int = 0, batch_size: int = 3, seq: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4 :] = 0  # one right-padded row
    return ids, mask


def logits(model, ids, mask, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)


def group_heads(groups) -> list[int]:
    return [h for g in groups for h in range(g * GROUP, (g + 1) * GROUP)]


@st.composite
def group_plans(draw):
    heads, neurons = {}, {}
    for layer in range(LAYERS):
        heads[layer] = group_heads(draw(st.sets(st.integers(0, KV_HEADS - 1), max_size=KV_HEADS)))
        neurons[layer] = draw(st.sets(st.integers(0, FFN - 1), max_size=FFN))
    return PruningPlan.build(heads, neurons)


def test_spec_describes_the_decoder():
    a = adapter_for(MODELS["llama"])
    spec = a.spec
    assert spec.ffn_in == ("mlp.gate_proj", "mlp.up_proj") and spec.norm == "rmsnorm"
    assert spec.causal and spec.summary_token == "last" and spec.pad_token_from_eos
    assert not spec.takes_input("token_type_ids")
    assert a.layout() == Layout((HEADS,) * LAYERS, (FFN,) * LAYERS, 16, 64, group_size=GROUP, ffn_inputs=2)
    assert a.kv_heads(0) == KV_HEADS
    with pytest.raises(KeyError, match="use Adapter.modules"):
        a.module(0, "ffn_in")  # two modules: a caller must handle both
    assert [type(m).__name__ for m in a.modules(0, "ffn_in")] == ["Linear", "Linear"]


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5): the decoder classes differ there
@pytest.mark.parametrize("kind", FAMILIES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=group_plans())
def test_pruned_equals_masked(kind, plan):
    model = MODELS[kind]
    ids, mask = inputs()
    pruned = apply_plan(model, plan)
    diff = (logits(pruned, ids, mask).logits - logits(mask_plan(model, plan), ids, mask).logits).abs()
    assert diff.max().item() <= ATOL
    assert adapter_for(pruned).layout() == plan.kept_layout(adapter_for(model).layout())


@pytest.mark.parametrize("kind", FAMILIES)
def test_group_and_gated_channels_are_removed_together(kind):
    plan = PruningPlan.build(heads={0: group_heads([1])}, neurons={1: [0, 5, 95]})
    pruned = apply_plan(MODELS[kind], plan)
    a = adapter_for(pruned)
    # layer 0: one group left: 2 query heads, 1 key/value head
    assert [m.out_features for m in (a.module(0, "query"), a.module(0, "key"), a.module(0, "value"))] == [32, 16, 16]
    assert a.module(0, "attn_out").in_features == 32 and a.kv_heads(0) == 1 and a.group_size(0) == GROUP
    # layer 1: gate, up and down all lose the same 3 channels
    assert [m.out_features for m in a.modules(1, "ffn_in")] == [FFN - 3, FFN - 3]
    assert a.module(1, "ffn_out").in_features == FFN - 3
    ids, mask = inputs()
    assert (logits(pruned, ids, mask).logits - logits(MODELS[kind], ids, mask).logits).abs().max() > 1e-3


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5): the decoder classes differ there
@pytest.mark.parametrize("kind", FAMILIES)
def test_emptied_layer_passes_the_residual_and_keeps_one_map_per_layer(kind):
    """spec: an emptied attention/FFN of this family returns zeros, so a layer with
    neither is the identity; attention maps still come one per layer."""
    model = MODELS[kind]
    assert adapter_for(model).spec.empty_ffn_returns == "zeros"
    plan = PruningPlan.build(heads={1: range(HEADS)}, neurons={1: range(FFN)})
    pruned = apply_plan(model, plan)
    ids, mask = inputs()
    out = logits(pruned, ids, mask, output_hidden_states=True, output_attentions=True)
    seen = {}
    layer = adapter_for(pruned).layers[1]

    def before(mod, args, kwargs):
        seen["in"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def after(mod, args, kwargs, result):
        seen["out"] = result[0] if isinstance(result, tuple) else result

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True),
               layer.register_forward_hook(after, with_kwargs=True)]
    try:
        logits(pruned, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(seen["out"], seen["in"], atol=1e-6)  # [batch, seq, hidden]: the layer is the identity
    assert [tuple(t.shape[:2]) for t in out.attentions] == [(3, HEADS), (3, 0)]
    assert (out.logits - logits(mask_plan(model, plan), ids, mask).logits).abs().max() <= ATOL


@pytest.mark.smoke  # also under transformers 5 (make smoke-t5): the decoder classes differ there
@pytest.mark.parametrize("kind", FAMILIES)
def test_save_and_reload_at_per_layer_layout(kind, tmp_path):
    model = MODELS[kind]
    plan = PruningPlan.build(heads={0: group_heads([0, 1]), 1: group_heads([0])}, neurons={0: range(FFN), 1: [2, 7]})
    pruned = apply_plan(model, plan)
    save_model(pruned, tmp_path / "m")
    recorded = json.loads((tmp_path / "m" / "config.json").read_text())["compressor_layout"]
    assert recorded["heads_per_layer"] == [0, 2] and recorded["ffn_per_layer"] == [0, FFN - 2]
    assert recorded["group_size"] == GROUP and recorded["ffn_inputs"] == 2
    reloaded = load_model(str(tmp_path / "m"))
    assert adapter_for(reloaded).layout() == adapter_for(pruned).layout()
    ids, mask = inputs()
    assert (logits(reloaded, ids, mask).logits - logits(pruned, ids, mask).logits).abs().max() <= ATOL
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in pruned.parameters())


def test_plan_breaking_a_group_is_refused_before_any_change():
    model = llama_model("llama")
    with pytest.raises(PlanError, match="some but not all query heads of key/value group 0 in layer 1"):
        apply_plan(model, PruningPlan.build(heads={1: [0]}), inplace=True)
    assert adapter_for(model).layout().heads_per_layer == (HEADS,) * LAYERS


def test_plan_heads_takes_whole_groups_and_counts_groups_in_min_per_layer():
    from compressor.planning import check_floors, plan_heads
    from compressor.types import HeadScores

    layout = Layout((4, 4), (8, 8), 16, 64, group_size=2)
    # groups: layer 0 [1+1, 9+9], layer 1 [5+5, 0+8] -> lowest groups: (0, 0) = 2, (1, 1) = 8
    scores = HeadScores("x", ((1, 1, 9, 9), (5, 5, 0, 8)))
    chosen = plan_heads(scores, layout, HeadTarget(scorer="x", ratio=0.5, scope="global", min_per_layer=1))
    assert chosen == {0: [0, 1], 1: [2, 3]}
    # a floor of one group per layer: at most one of each layer's two groups goes
    chosen = plan_heads(scores, layout, HeadTarget(scorer="x", ratio=1.0, scope="global", min_per_layer=1))
    assert {k: len(v) for k, v in chosen.items()} == {0: 2, 1: 2}
    with pytest.raises(RecipeError, match="above layer 0's 2 head groups"):
        check_floors(layout, HeadTarget(scorer="x", ratio=0.5, min_per_layer=3))
    PruningPlan.build(chosen).validate(layout)


def test_magnitude_scores_decoder_units():
    from compressor.scorers import SCORERS
    from compressor.scorers.base import ScoringContext

    model = MODELS["llama"]
    a = adapter_for(model)
    scorer = SCORERS.get("magnitude")()
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    scores = scorer.finish()
    assert [len(v) for v in scores.heads.values] == [HEADS] * LAYERS
    assert [len(v) for v in scores.neurons.values] == [FFN] * LAYERS
    # neuron j: rows j of gate and up, column j of down
    mlp = model.model.layers[0].mlp
    want = (mlp.gate_proj.weight[5].pow(2).sum() + mlp.up_proj.weight[5].pow(2).sum()
            + mlp.down_proj.weight[:, 5].pow(2).sum()).sqrt().item()
    assert scores.neurons.values[0][5] == pytest.approx(want, rel=1e-5)
    attn = model.model.layers[0].self_attn
    d = 16
    kv = (attn.k_proj.weight[:d].pow(2).sum() + attn.v_proj.weight[:d].pow(2).sum()) / GROUP
    want = (attn.q_proj.weight[d : 2 * d].pow(2).sum() + kv + attn.o_proj.weight[:, d : 2 * d].pow(2).sum()).sqrt()
    assert scores.heads.values[0][1] == pytest.approx(want.item(), rel=1e-5)  # head 1 is in group 0


def test_latency_torch_runner_feeds_only_the_model_inputs():
    from compressor.evaluate.latency import random_batch, torch_runner

    out = torch_runner(MODELS["llama"], random_batch(VOCAB, 2, 5))()  # token_type_ids left out
    assert out.logits.shape == (2, 5, VOCAB)


def test_no_model_type_tests_outside_arch():
    """Architecture facts live in compressor/arch/ only."""
    root = Path(__file__).resolve().parents[2] / "compressor"
    pattern = re.compile(r"model_type\s*[=!]=|\"(bert|gpt2|roberta|llama|mistral|qwen2|qwen3|distilbert|electra"
                         r"|xlm-roberta|modernbert|phi3)\"")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if "arch" not in p.relative_to(root).parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_unsupported_architecture_names_the_supported_ones():
    from compressor.arch.base import spec_for
    from compressor.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="supported: bert, distilbert, electra, gpt2, llama, mistral, modernbert, phi3, qwen2, qwen3, roberta"):
        spec_for("albert")


def test_group_size_is_written_only_with_groups():
    assert "group_size" not in Layout((4,), (8,), 8, 32).to_json()
    d = Layout((4,), (8,), 8, 32, group_size=2).to_json()
    assert Layout.from_json(d).group_size == 2 and np.array_equal(Layout.from_json(d).heads_per_layer, (4,))


def test_flops_count_shared_key_values_and_the_gate():
    from compressor.metrics import encoder_flops_per_token

    d, dh, f, seq = 64, 16, FFN, 8
    layout = adapter_for(MODELS["llama"]).layout()
    w = HEADS * dh
    per_layer = 2 * d * (w + 2 * w // GROUP) + 2 * w * d + 4 * seq * w + 2 * 3 * d * f
    assert encoder_flops_per_token(layout, seq) == LAYERS * per_layer
    plain = Layout(layout.heads_per_layer, layout.ffn_per_layer, dh, d)  # BERT's formula unchanged
    assert encoder_flops_per_token(plain, seq) == LAYERS * (2 * d * 3 * w + 2 * w * d + 4 * seq * w + 4 * d * f)
