"""reconstruct: the ridge least-squares refit of the output projections after surgery."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import PruningPlan, apply_plan, load_model, save_model
from compressor.arch import adapter_for
from compressor.cli import main
from compressor.data.calibration import Batch
from compressor.errors import CompressorError, RecipeError
from compressor.recipe import ReconstructConfig, load_recipe, parse_recipe
from compressor.reconstruct import reconstruct, required_tokens
from tests.conftest import tiny_model

KINDS = ["bert", "gpt2"]
MODELS = {k: tiny_model(k) for k in KINDS}


def calibration(seed: int = 0, n_batches: int = 4, rows: int = 8, seq: int = 12) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, 64, (rows, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq // 2 :] = 0  # padding must be left out of the fit and the errors
        out.append(Batch(ids, mask))
    return out


def run(pruned, original, batches, **cfg):
    return reconstruct(pruned, original, adapter_for(pruned), adapter_for(original), batches,
                       ReconstructConfig(**cfg), progress=False)


@torch.no_grad()
def layer_outputs(model, batches) -> list[torch.Tensor]:
    """Every layer's output on the real tokens, all batches: per layer [tokens, hidden]."""
    a = adapter_for(model)
    got: list[list[torch.Tensor]] = [[] for _ in a.layers]
    handles = []
    state = {}
    for i, layer in enumerate(a.layers):
        def hook(mod, args, out, i=i):
            got[i].append((out[0] if isinstance(out, tuple) else out)[state["mask"]])
        handles.append(layer.register_forward_hook(hook))
    forward_all(model, batches, state, handles)
    return [torch.cat(g) for g in got]


@torch.no_grad()
def forward_all(model, batches, state: dict, handles: list) -> None:
    """Run every batch (``state["mask"]``: its real tokens, for the hooks), then remove
    the hooks."""
    a = adapter_for(model)
    try:
        for b in batches:
            state["mask"] = b.attention_mask.bool()
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, **a.forward_kwargs())
    finally:
        for h in handles:
            h.remove()


def measured_errors(model, reference, batches) -> list[float]:
    """Layer output errors measured here, independently of reconstruct's own bookkeeping."""
    return [float((p.double() - u.double()).pow(2).sum() / u.double().pow(2).sum())
            for p, u in zip(layer_outputs(model, batches), layer_outputs(reference, batches), strict=True)]


@st.composite
def half_plans(draw):
    """About half of the heads and neurons of every layer, a whole layer's heads now and then."""
    heads, neurons = {}, {}
    for layer in range(3):
        n_heads = draw(st.sampled_from([1, 2, 2, 3, 4]))
        heads[layer] = draw(st.permutations(range(4)))[:n_heads]
        neurons[layer] = draw(st.permutations(range(37)))[: draw(st.integers(12, 30))]
    return PruningPlan.build(heads, neurons)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=half_plans(), seed=st.integers(0, 3))
def test_reconstruction_never_increases_layer_error(kind, plan, seed):
    original = MODELS[kind]
    batches = calibration(seed)
    pruned = apply_plan(original, plan)
    surgery = measured_errors(pruned, original, batches)
    res = run(pruned, original, batches, ridge=1e-3)
    after = measured_errors(pruned, original, batches)
    for lf, before_i, after_i in zip(res.layers, surgery, after, strict=True):
        assert lf.error_surgery == pytest.approx(before_i, rel=1e-4, abs=1e-9)
        assert lf.error_reconstructed == pytest.approx(after_i, rel=1e-4, abs=1e-9)
        assert after_i <= before_i * (1 + 1e-6) + 1e-12, (lf, before_i, after_i)
        for f in lf.fits:  # each refit kept only if it did not make the layer worse
            assert f.error_after <= f.error_before
    # the whole stack improves markedly, not just within rounding
    assert sum(after) < 0.7 * sum(surgery)


@pytest.mark.parametrize("kind", KINDS)
def test_ridge_zero_equals_direct_least_squares(kind):
    """Each kept refit is the closed-form least-squares fit of [x, 1] -> r_u - h_p, with x,
    h_p and r_u captured here by hooks written independently of the reconstruct code."""
    original = MODELS[kind]
    plan = PruningPlan.build(heads={0: [0, 1, 2, 3], 1: [1], 2: [0, 2]},
                             neurons={0: range(0, 37, 2), 1: range(37), 2: range(20)})
    pruned = apply_plan(original, plan)
    batches = calibration(1)
    res = run(pruned, original, batches, ridge=0.0)
    kept = {(lf.layer, f.kind) for lf in res.layers for f in lf.fits if f.kept}
    assert (0, "attention") in kept and (1, "ffn") in kept  # the all-removed cases are exercised

    def grab(model):
        """Per (layer, kind): projection input x, its residual input h and output y on real tokens."""
        a = adapter_for(model)
        got: dict = {}
        handles, state = [], {}

        def put(key, value):
            got.setdefault(key, []).append(value[state["mask"]])

        for i, layer in enumerate(a.layers):
            for kind_, role in (("attention", "attn_out"), ("ffn", "ffn_out")):
                proj = a.module(i, role)
                handles.append(proj.register_forward_pre_hook(lambda m, args, k=(i, kind_): put(k + ("x",), args[0])))
                handles.append(proj.register_forward_hook(lambda m, args, out, k=(i, kind_): put(k + ("y",), out)))
            if kind == "bert":  # BertSelfOutput / BertOutput take (states, residual input)
                for kind_, path in (("attention", "attention.output"), ("ffn", "output")):
                    handles.append(layer.get_submodule(path).register_forward_pre_hook(
                        lambda m, args, k=(i, kind_): put(k + ("h",), args[1])))
            else:  # GPT-2 block: the residual input of attention is the block's input, of the FFN ln_2's
                handles.append(layer.register_forward_pre_hook(lambda m, args, k=(i, "attention"): put(k + ("h",), args[0])))
                handles.append(layer.ln_2.register_forward_pre_hook(lambda m, args, k=(i, "ffn"): put(k + ("h",), args[0])))
        forward_all(model, batches, state, handles)
        return {k: torch.cat(v).double() for k, v in got.items()}

    p, u = grab(pruned), grab(original)
    checked = 0
    for layer, kind_ in sorted(kept):
        x = p[(layer, kind_, "x")]  # [tokens, in]
        target = u[(layer, kind_, "y")] + u[(layer, kind_, "h")] - p[(layer, kind_, "h")]  # r_u - h_p
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        direct = torch.linalg.lstsq(xa, target, driver="gelsd").solution  # [in+1, out]
        proj = adapter_for(pruned).module(layer, "attn_out" if kind_ == "attention" else "ffn_out")
        w = proj.weight.detach().double()
        fitted = torch.cat([w if kind == "gpt2" else w.t(), proj.bias.detach().double()[None]])
        assert fitted.shape == direct.shape
        rel = (fitted - direct).norm() / direct.norm()
        assert rel < 1e-4, (layer, kind_, float(rel))
        if x.shape[1] == 0:  # nothing left but the bias: it is the mean target
            assert torch.allclose(fitted[0], target.mean(0), atol=1e-5)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("kind", KINDS)
def test_empty_plan_leaves_outputs_unchanged(kind):
    original = MODELS[kind]
    pruned = apply_plan(original, PruningPlan())
    batches = calibration(2)
    res = run(pruned, original, batches)
    assert all(lf.error_surgery == 0 and lf.error_reconstructed < 1e-10 for lf in res.layers)
    for p, u in zip(layer_outputs(pruned, batches), layer_outputs(original, batches), strict=True):
        assert (p - u).abs().max() < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_removed_and_attention_only(kind):
    original = MODELS[kind]
    pruned = apply_plan(original, PruningPlan.build(heads={0: range(4), 1: range(4), 2: range(4)}))
    assert adapter_for(pruned).layout().heads_per_layer == (0, 0, 0)
    batches = calibration(3)
    before = measured_errors(pruned, original, batches)
    res = run(pruned, original, batches, kinds="attention")
    assert [f.kind for lf in res.layers for f in lf.fits] == ["attention"] * 3
    assert all(f.inputs == 0 for lf in res.layers for f in lf.fits)
    after = measured_errors(pruned, original, batches)
    assert all(a <= b * (1 + 1e-6) for a, b in zip(after, before, strict=True))
    assert after[0] < before[0]  # the bias alone already helps


def test_too_few_tokens_names_the_counts():
    original = MODELS["bert"]
    pruned = apply_plan(original, PruningPlan.build(neurons={0: [1]}))
    batches = [Batch(torch.randint(5, 64, (2, 9)), torch.ones(2, 9, dtype=torch.long))]  # 18 tokens
    assert required_tokens(adapter_for(pruned).layout(), ("attention", "ffn")) == 38  # 37 FFN inputs + bias
    state = {k: v.clone() for k, v in pruned.state_dict().items()}
    with pytest.raises(CompressorError, match="needs at least 38 calibration tokens .* the calibration has 18"):
        run(pruned, original, batches)
    assert all(torch.equal(state[k], v) for k, v in pruned.state_dict().items())  # nothing re-fit


def test_pruned_model_must_derive_from_reference():
    small = apply_plan(MODELS["bert"], PruningPlan.build(heads={1: [0]}))
    with pytest.raises(CompressorError, match="layer 1 of the pruned model has 4 heads, more than the reference's 3"):
        run(MODELS["bert"], small, calibration())
    shallow = copy.deepcopy(MODELS["bert"])
    shallow.encoder.layer = shallow.encoder.layer[:2]
    with pytest.raises(CompressorError, match="the pruned model has 3 layers, the reference 2; .*derive from"):
        run(small, shallow, calibration())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"reconstruct": {"ridge": -0.1}}, r"recipe field 'reconstruct.ridge' must be a number >= 0; got -0.1"),
        ({"reconstruct": {"rigde": 1}}, r"unknown recipe field 'reconstruct.rigde'; allowed: kinds, num_sequences, ridge"),
        ({"reconstruct": {"kinds": "heads"}}, r"'reconstruct.kinds' must be one of both, attention, ffn; got 'heads'"),
        ({"reconstruct": {"num_sequences": 0}}, r"'reconstruct.num_sequences' must be an integer in \[1, 1000000\]; got 0"),
        ({"reconstruct": [1]}, r"recipe field 'reconstruct' must be a mapping"),
    ],
)
def test_recipe_key_is_validated(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_recipe_key_defaults():
    assert parse_recipe({}).reconstruct is None
    r = parse_recipe({"reconstruct": {}}).reconstruct
    assert r == ReconstructConfig() and r.sublayers == ("attention", "ffn")
    r = parse_recipe({"reconstruct": {"ridge": "1e-2", "kinds": "ffn", "num_sequences": 64}}).reconstruct
    assert r.ridge == 0.01 and r.sublayers == ("ffn",) and r.num_sequences == 64


def test_shipped_recipe_is_valid():
    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "obce-50-reconstruct.yaml")
    assert r.reconstruct == ReconstructConfig() and r.neurons.percentile == 50
    assert r.calibration.source == "glue" and r.calibration.task == "sst2"


RECIPE = """
model: {model}
calibration: {{num_sequences: {n}, batch_size: 8, min_length: 4, max_length: 12}}
scorers: [magnitude]
targets:
  heads: {{scorer: magnitude, ratio: 0.5}}
  neurons: {{scorer: magnitude, ratio: 0.5}}
reconstruct: {{ridge: 0.001}}
"""


def test_recipe_with_reconstruct_end_to_end(tmp_path, tiny_bert_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=tiny_bert_dir, n=24))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(out), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    rec = m["reconstruct"]
    assert rec["tokens"] > 38 and len(rec["layers"]) == 3 and "reconstruct" in m["stage_seconds"]
    assert all(lf["error_reconstructed"] <= lf["error_surgery"] for lf in rec["layers"])
    assert 'id="reconstruct"' in (out / "report.html").read_text()
    # the saved model is the reconstructed one
    saved = load_model(str(out / "model"))
    original = load_model(str(tiny_bert_dir))
    cal = calibration(5)
    plain = apply_plan(original, PruningPlan.load(out / "plan.json"))
    assert measured_errors(saved, original, cal)[-1] < measured_errors(plain, original, cal)[-1]


def test_too_few_tokens_in_a_recipe_writes_nothing(tmp_path, tiny_bert_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=tiny_bert_dir, n=2))  # at most 24 tokens
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--recipe", str(recipe), "--output", str(out), "--quiet"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: reconstruct needs at least ")
    assert "calibration tokens" in lines[0] and not out.exists()


@pytest.fixture
def pruned_dir(tmp_path, tiny_bert_dir) -> Path:
    from compressor.models import load_tokenizer

    folder = tmp_path / "pruned"
    save_model(apply_plan(load_model(str(tiny_bert_dir)), PruningPlan.build(heads={0: [0, 1], 2: range(4)},
                                                                            neurons={1: range(20)})),
               folder, load_tokenizer(str(tiny_bert_dir)))
    return folder


def test_cli_reconstruct(tmp_path, tiny_bert_dir, pruned_dir):
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in pruned_dir.iterdir()}
    res = CliRunner().invoke(main, ["reconstruct", "--model", str(pruned_dir), "--reference", str(tiny_bert_dir),
                                    "--output", str(out), "--num-sequences", "40", "--max-length", "12", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "layer 2: output error" in res.output
    assert {p.name: p.read_bytes() for p in pruned_dir.iterdir()} == before  # input untouched
    rec = json.loads((out / "reconstruct.json").read_text())
    assert rec["reference"] == str(tiny_bert_dir) and len(rec["layers"]) == 3
    cal = calibration(6)
    original = load_model(str(tiny_bert_dir))
    err_new = measured_errors(load_model(str(out)), original, cal)
    err_old = measured_errors(load_model(str(pruned_dir)), original, cal)
    assert err_new[-1] < err_old[-1]  # held-out calibration: the refit generalizes
    assert adapter_for(load_model(str(out))).layout() == adapter_for(load_model(str(pruned_dir))).layout()


def test_cli_reconstruct_bad_inputs(tmp_path, tiny_bert_dir, pruned_dir):
    out = tmp_path / "out"
    cases = [
        (["--num-sequences", "2", "--max-length", "8"], "reconstruct needs at least 38 calibration tokens"),
        (["--reference", str(pruned_dir), "--model", str(tiny_bert_dir)], "more than the reference's"),
        (["--calibration-text", str(tmp_path / "none.txt")], "calibration text file not found"),
        (["--output", str(pruned_dir)], "overlaps the input model"),
    ]
    for extra, message in cases:
        args = ["reconstruct", "--model", str(pruned_dir), "--reference", str(tiny_bert_dir), "--output", str(out),
                "--quiet", *extra]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (extra, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (extra, res.output)
        assert not out.exists()
