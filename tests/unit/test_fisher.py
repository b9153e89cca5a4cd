"""fisher scorer: mask gradients against finite differences, scores = sum of squared
per-example gradients, weights untouched, label-free mode, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compressor.arch.base import adapter_for, is_conv1d
from compressor.capture import run_capture
from compressor.data.calibration import Batch, calibration_batches
from compressor.errors import RecipeError
from compressor.masking import final_hidden, mask_gradients, task_losses
from compressor.recipe import CalibrationConfig, parse_recipe
from compressor.scorers import SCORERS, ScoringContext
from tests.conftest import batch, tiny_config, tiny_model
from tests.unit.test_glue import write_glue

EPS = 1e-4


def classifier(kind: str, num_labels: int = 2, seed: int = 0):
    from transformers import BertForSequenceClassification, GPT2ForSequenceClassification

    cls = {"bert": BertForSequenceClassification, "gpt2": GPT2ForSequenceClassification}[kind]
    torch.manual_seed(seed)
    kw = {"num_labels": num_labels, **({"pad_token_id": 0} if kind == "gpt2" else {})}
    m = cls(tiny_config(kind, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval().double()


def data(kind: str, labels: torch.Tensor | None, seed: int = 0) -> Batch:
    ids, mask = batch(kind, seed=seed)
    ids = ids.masked_fill(mask == 0, 0)  # GPT-2's classifier finds the last token by the pad id
    return Batch(ids, mask, labels)


def scaled(model, layer: int, role: str, cols: torch.Tensor, m: float):
    """A copy with the inputs ``cols`` of ``role`` (attn_out / ffn_out) multiplied by m:
    the same mask, applied to the weights instead of by hooks (an independent path)."""
    c = copy.deepcopy(model)
    mod = adapter_for(c).module(layer, role)
    with torch.no_grad():
        if is_conv1d(mod):
            mod.weight[cols, :] *= m  # [in, out]
        else:
            mod.weight[:, cols] *= m  # [out, in]
    return c


def example_loss(model, b: Batch, e: int, loss) -> float:
    a = adapter_for(model)
    with torch.no_grad():
        out = model(input_ids=b.input_ids[e : e + 1], attention_mask=b.attention_mask[e : e + 1],
                    output_hidden_states=True, **a.forward_kwargs())
    return float(loss(out, e))


def fd_grads(model, b: Batch, loss, units):
    """[examples, len(units)] central differences of loss_e w.r.t. each unit's mask."""
    a = adapter_for(model)
    out = np.zeros((b.input_ids.shape[0], len(units)))
    for j, (kind, layer, i) in enumerate(units):
        if kind == "head":
            dh = a.head_dim(layer)
            cols, role = torch.arange(i * dh, (i + 1) * dh), "attn_out"
        else:
            cols, role = torch.tensor([i]), "ffn_out"
        up, down = scaled(model, layer, role, cols, 1 + EPS), scaled(model, layer, role, cols, 1 - EPS)
        for e in range(b.input_ids.shape[0]):
            out[e, j] = (example_loss(up, b, e, loss) - example_loss(down, b, e, loss)) / (2 * EPS)
    return out


def all_units(model, neurons=(0, 5, 36)):
    lay = adapter_for(model).layout()
    heads = [("head", l, h) for l in range(lay.num_layers) for h in range(lay.heads_per_layer[l])]
    return heads + [("neuron", l, j) for l in range(lay.num_layers) for j in neurons]


def pick(grads_h, grads_n, units):
    """[examples, len(units)] from mask_gradients' per-layer [1, batch, units] outputs."""
    return np.stack([(grads_h if k == "head" else grads_n)[l][0, :, i].numpy() for k, l, i in units], 1)


@pytest.mark.parametrize("kind,num_labels", [("bert", 2), ("gpt2", 3), ("bert", 1)])
def test_mask_gradient_equals_finite_difference_of_the_task_loss(kind, num_labels):
    model = classifier(kind, num_labels)
    y = torch.tensor([0.3, -1.2, 0.8]) if num_labels == 1 else torch.tensor([0, num_labels - 1, 1])
    b = data(kind, y)
    units = all_units(model)

    def loss(out, e):  # example e's task loss (0.5 * squared error for one output)
        return task_losses(out.logits, b.labels[e : e + 1])

    fd = fd_grads(model, b, loss, units)
    gh, gn = mask_gradients(model, adapter_for(model), b, lambda out, bb: [task_losses(out.logits, bb.labels)])
    got = pick(gh, gn, units)
    assert np.abs(fd).max() > 1e-4  # the check is not vacuous
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_fisher_score_is_the_sum_of_squared_per_example_gradients(kind):
    model = classifier(kind)
    batches = [data(kind, torch.tensor([0, 1, 1]), seed=0), data(kind, torch.tensor([1, 0, 0]), seed=1)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    a = adapter_for(model)
    scorer = SCORERS.get("fisher")()
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    run_capture(model, a, batches, [scorer], progress=False)
    res = scorer.finish()
    units = all_units(model)
    want = sum((fd_grads(model, b, lambda out, e, b=b: task_losses(out.logits, b.labels[e : e + 1]), units) ** 2).sum(0)
               for b in batches)
    got = np.array([res.heads.values[l][i] if k == "head" else res.neurons.values[l][i] for k, l, i in units])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-12)
    # the layer blocks hold sum_e g g^T: their diagonal is the score
    for layer, block in enumerate(res.heads.extras["_fisher_blocks"]):
        np.testing.assert_allclose(np.diag(block), res.heads.values[layer], rtol=1e-6)
    np.testing.assert_allclose(np.diag(res.neurons.extras["_fisher_blocks"][0]), res.neurons.values[0], rtol=1e-4)
    assert res.heads.extras["examples"] == 6
    # weights and their requires_grad flags are as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_label_free_probe_gradient_equals_finite_difference(kind):
    model = tiny_model(kind).double()
    b = data(kind, None)
    h0 = final_hidden(model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True))
    z = torch.randn(h0.shape, generator=torch.Generator().manual_seed(3), dtype=h0.dtype)
    z = z * b.attention_mask[:, :, None]
    units = all_units(model)
    fd = fd_grads(model, b, lambda out, e: (z[e : e + 1] * final_hidden(out)).sum(), units)
    gh, gn = mask_gradients(model, adapter_for(model), b, lambda out, bb: [(z * final_hidden(out)).sum()])
    np.testing.assert_allclose(pick(gh, gn, units), fd, rtol=1e-5, atol=1e-9)


def test_label_free_scores_estimate_the_output_jacobian_diagonal():
    """E[(J^T z)_i^2] = ||J_i||^2: with many probes the score approaches the exact value,
    computed here from finite differences of the final hidden states."""
    model = tiny_model("bert").double()
    b = data("bert", None)
    a = adapter_for(model)
    units = [("head", l, h) for l in range(3) for h in range(4)] + [("neuron", 1, j) for j in (0, 7, 20)]
    exact = np.zeros(len(units))
    for j, (kind, layer, i) in enumerate(units):
        dh = a.head_dim(layer)
        cols, role = (torch.arange(i * dh, (i + 1) * dh), "attn_out") if kind == "head" else (torch.tensor([i]), "ffn_out")
        hs = []
        for m in (1 + EPS, 1 - EPS):
            c = scaled(model, layer, role, cols, m)
            with torch.no_grad():
                hs.append(c(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state)
        jcol = (hs[0] - hs[1]) / (2 * EPS) * b.attention_mask[:, :, None]
        exact[j] = float(jcol.pow(2).sum())
    scorer = SCORERS.get("fisher")(label_free="output", probes=400, seed=1)
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    run_capture(model, a, [b], [scorer], progress=False)
    res = scorer.finish()
    got = np.array([res.heads.values[l][i] if k == "head" else res.neurons.values[l][i] for k, l, i in units])
    # 400 probes x 3 examples: relative standard error about sqrt(2 / 1200) = 4%
    np.testing.assert_allclose(got, exact, rtol=0.2)


def test_fisher_without_a_task_head_and_no_label_free_mode_is_one_line_error():
    model = tiny_model("bert")
    a = adapter_for(model)
    with pytest.raises(RecipeError, match="label_free: output"):
        SCORERS.get("fisher")().begin(ScoringContext(model, a, a.layout(), 0))


def test_fisher_needs_labelled_calibration_in_the_recipe():
    with pytest.raises(RecipeError, match=r"scorers\[0\].*labelled calibration.*random_tokens"):
        parse_recipe({"scorers": [{"name": "fisher"}]})
    with pytest.raises(RecipeError, match="test split has no labels"):
        parse_recipe({"scorers": ["fisher"], "calibration": {"source": "glue", "task": "sst2", "split": "test"}})
    # label-free needs no labels; glue train has them
    parse_recipe({"scorers": [{"name": "fisher", "params": {"label_free": "output"}}]})
    parse_recipe({"scorers": ["fisher"], "calibration": {"source": "glue", "task": "sst2"}})
    with pytest.raises(RecipeError, match="label_free"):
        parse_recipe({"scorers": [{"name": "fisher", "params": {"label_free": "logits"}}]})


def test_glue_calibration_batches_carry_the_labels_of_their_rows(tmp_path):
    from transformers import BertTokenizerFast

    from tests.conftest import tiny_tokenizer

    root = write_glue(tmp_path / "glue")
    folder = tmp_path / "tok"
    folder.mkdir()
    tok: BertTokenizerFast = tiny_tokenizer(folder)
    cfg = CalibrationConfig(source="glue", task="sst2", data_dir=str(root), num_sequences=40, batch_size=8)
    batches = calibration_batches(cfg, tok, tiny_config("bert"), 0)
    from compressor.data.glue import load_glue

    split = load_glue("sst2", str(root), "train")
    want = {tuple(tok(t[0])["input_ids"]): int(y) for t, y in zip(split.texts[:40], split.labels[:40])}
    seen = 0
    for b in batches:
        assert b.labels is not None and b.labels.dtype == torch.int64
        for row, y in zip(b.input_ids, b.labels):
            ids = tuple(row[: int((row != tok.pad_token_id).sum())].tolist())
            assert want[ids] == int(y)
            seen += 1
    assert seen == 40 and len({int(y) for b in batches for y in b.labels}) == 2
    # sources without labels are unchanged
    rnd = calibration_batches(CalibrationConfig(num_sequences=4, min_length=4, max_length=8), tok, tiny_config("bert"), 0)
    assert all(b.labels is None for b in rnd)
