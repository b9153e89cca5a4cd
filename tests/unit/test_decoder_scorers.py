"""Decoder semantics of the scorers, on tiny random LLaMA (grouped-query attention) and
GPT-2: attention rows are causal (a distribution over the query's prefix), padding keys
and queries are excluded, the summary token is the last real token under right padding,
the causal adaptations (sieve_roles, Pearson) hold, and every registered scorer runs and
gives finite scores of the layout's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.arch import adapter_for
from compressor.capture import run_capture, summary_positions
from compressor.data.calibration import Batch
from compressor.errors import RecipeError
from compressor.head_distances import token_metric_means
from compressor.scorers import SCORERS, ScoringContext
from compressor.scorers.base import CaptureBatch
from compressor.scorers.head_types import distance_features, key_categories
from compressor.scorers.sieve_roles import POSITIONAL, causal_keys, positional_sieves, sieve_bias
from compressor.scorers.specs import SPECS
from tests.decoders import decoder, padded_batch
from tests.unit import test_capture

KINDS = ["llama", "gpt2"]
MODELS = {k: decoder(k) for k in KINDS}


class Recorder(test_capture.Recorder):
    def update(self, batch):
        super().update(batch)
        batch.heads_copy = batch.heads().clone()  # the shared buffer is reused by the next batch


def capture(model, batches):
    return test_capture.capture(model, batches, Recorder())


@pytest.mark.parametrize("kind", KINDS)
def test_attention_rows_are_causal_and_padding_is_excluded(kind):
    model = MODELS[kind]
    ids, mask = padded_batch()
    [b] = capture(model, [Batch(ids, mask)])
    s = ids.shape[1]
    for a in b.attentions:  # [batch, heads, q, k]
        assert a.shape[-2:] == (s, s)
        upper = torch.ones(s, s, dtype=torch.bool).triu(1)
        assert a[..., upper].abs().max() == 0  # no query sees a later key
        assert a[1, :, :, s - 4 :].abs().max() == 0  # padded keys get no attention
        real_rows = a[1, :, : s - 4].sum(-1)  # [heads, real q]: distributions over the prefix
        torch.testing.assert_close(real_rows, torch.ones_like(real_rows), atol=1e-5, rtol=0)
    heads = b.heads_copy  # [batch, N, q, k]: padded query rows zeroed for every scorer
    assert heads[1, :, s - 4 :].abs().max() == 0 and heads[1, :, : s - 4].sum(-1).min() > 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_summary_is_the_last_real_token_under_right_padding(kind):
    model = MODELS[kind]
    a = adapter_for(model)
    ids, mask = padded_batch()
    assert summary_positions(a, mask).tolist() == [10, 6, 10]
    [b] = capture(model, [Batch(ids, mask)])
    # the padded row's summary activation is that of the same tokens unpadded, alone
    seen = {}
    h = a.module(1, "ffn_out").register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        model(input_ids=ids[1:2, :7], attention_mask=mask[1:2, :7], **a.forward_kwargs())
    h.remove()
    torch.testing.assert_close(b.ffn_summary[1][1], seen["x"][0, 6], atol=1e-5, rtol=0)
    assert b.ffn_summary[1].shape == (3, a.ffn_size(1))


def _alone_vs_padded(kind):
    """Attention of the padded row 1 in its batch, and of its real tokens run alone."""
    model = MODELS[kind]
    ids, mask = padded_batch()
    [padded] = capture(model, [Batch(ids, mask)])
    [alone] = capture(model, [Batch(ids[1:2, :7], mask[1:2, :7])])
    return ids, mask, padded.heads_copy, alone.heads_copy


@pytest.mark.parametrize("kind", KINDS)
def test_per_sequence_statistics_ignore_padding(kind):
    """head_types features, sieve biases and every token metric of the padded sequence
    equal those of its real tokens run alone: padding keys and queries count nowhere."""
    ids, mask, padded, alone = _alone_vs_padded(kind)
    special = {"cls": int(ids[1, 0]), "sep": -1, "comma": -1, "period": -1}
    f_pad = distance_features(padded, key_categories(ids, mask, special), mask)[1]
    f_one = distance_features(alone, key_categories(ids[1:2, :7], mask[1:2, :7], special), mask[1:2, :7])[0]
    torch.testing.assert_close(f_pad, f_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(f_pad.sum(-1), torch.ones(f_pad.shape[0]), atol=1e-5, rtol=0)

    types = torch.zeros_like(ids)
    names = [n for n in POSITIONAL if n != "next"]
    sv = positional_sieves(ids, mask, types, {"cls": int(ids[1, 0]), "sep": -1}, names) & causal_keys(11, 11)[..., None]
    sv1 = positional_sieves(ids[1:2, :7], mask[1:2, :7], types[1:2, :7], {"cls": int(ids[1, 0]), "sep": -1}, names)
    sv1 &= causal_keys(7, 7)[..., None]
    b_pad = sieve_bias(padded, sv, mask, causal=True)[1]
    b_one = sieve_bias(alone, sv1, mask[1:2, :7], causal=True)[0]
    torch.testing.assert_close(b_pad, b_one, atol=1e-4, rtol=1e-4, equal_nan=True)

    metrics = ["js", "cosine", "correlation", "bhattacharyya"]
    for backend in ("torch", "auto"):
        m_pad = token_metric_means(padded, mask, metrics, backend=backend, causal=True)
        m_one = token_metric_means(alone, mask[1:2, :7], metrics, backend=backend, causal=True)
        for m in metrics:
            # the tiny models attend almost uniformly: Pearson's centring cancels sum p^2
            # against ~1/L, so float32 rounding reaches ~5e-4 there
            tol = 2e-3 if m == "correlation" else 2e-4
            torch.testing.assert_close(m_pad[m][1], m_one[m][0], atol=tol, rtol=0, msg=f"{m} ({backend})")


def test_uniform_causal_attention_has_sieve_bias_one():
    """The causal baseline: uniform attention over the prefix is bias 1 in every sieve."""
    ids, mask = padded_batch()
    s = ids.shape[1]
    vis = causal_keys(s, s)[None] & mask.bool()[:, None, :]  # [batch, q, k]
    attn = (vis.float() / vis.sum(-1, keepdim=True).clamp_min(1))[:, None].expand(3, 2, s, s)
    names = [n for n in POSITIONAL if n != "next"]
    sv = positional_sieves(ids, mask, torch.zeros_like(ids), {"cls": int(ids[0, 0]), "sep": -1}, names)
    bias = sieve_bias(attn, sv & causal_keys(s, s)[..., None], mask, causal=True)  # [batch, heads, sieves]
    seen = ~torch.isnan(bias)
    assert seen.sum() > 0
    np.testing.assert_allclose(bias[seen].numpy(), 1.0, atol=1e-5)
    # the bidirectional baseline (mean over all L keys) would call a causal uniform head biased
    wrong = sieve_bias(attn, sv & causal_keys(s, s)[..., None], mask, causal=False)
    assert np.nanmax(wrong[:, :, names.index("prev")].numpy()) > 1.5


def causal_maps(mask: torch.Tensor, heads: int = 3, seed: int = 0) -> torch.Tensor:
    """Sharp random causal attention [batch, heads, q, k]: rows over each query's real
    prefix, padded query rows 0 (as CaptureBatch.heads() gives them)."""
    b, s = mask.shape
    g = torch.Generator().manual_seed(seed)
    vis = causal_keys(s, s)[None, None] & mask.bool()[:, None, None, :]  # [batch, 1, q, k]
    logits = (torch.randn(b, heads, s, s, generator=g) * 3).masked_fill(~vis, float("-inf"))
    return torch.softmax(logits, -1) * mask[:, None, :, None]


def test_causal_pearson_is_correlation_over_each_querys_prefix():
    """Brute force: per real query, numpy's Pearson r of two heads' rows over the keys
    that query sees (r := 0 when a row is constant there), averaged over real queries."""
    _, mask = padded_batch()
    a = causal_maps(mask)  # [batch, 3 heads, q, k]
    want = np.zeros((3, 3, 3))
    for b in range(3):
        n = int(mask[b].sum())
        for i in range(3):
            for j in range(3):
                rs = []
                for q in range(n):
                    x, y = a[b, i, q, : q + 1].double().numpy(), a[b, j, q, : q + 1].double().numpy()
                    flat = x.std() < 1e-6 or y.std() < 1e-6
                    rs.append(0.0 if flat else np.corrcoef(x, y)[0, 1])
                want[b, i, j] = np.mean(rs)
    for backend in ("torch", "auto"):
        got = token_metric_means(a, mask, ["correlation"], backend=backend, causal=True)["correlation"]
        np.testing.assert_allclose(got.numpy(), want, atol=2e-3, err_msg=backend)
    # without the causal samples, every pair looks correlated through their shared zeros
    plain = token_metric_means(a, mask, ["correlation"], backend="torch")["correlation"]
    off = ~torch.eye(3, dtype=torch.bool)
    assert (plain - torch.from_numpy(want).float())[:, off].min() > 0.05


def run_scorer(kind: str, name: str, params: dict, batches, tokenizer=None):
    model = MODELS[kind]
    a = adapter_for(model)
    s = SCORERS.get(name)(**params)
    s.begin(ScoringContext(model, a, a.layout(), 0, tokenizer))
    if s.needs:
        run_capture(model, a, batches, [s], progress=False)
    return s.finish(), a.layout()


SCORER_PARAMS = {
    "head_types": {"tsne": False, "stability_splits": 2},
    "magnitude": {},
    "persistence": {},
    "random": {},
    "redundancy": {"metrics": ["js", "cosine", "correlation", "bhattacharyya", "dcor"], "ratio": 0.5},
    "sieve_roles": {"sieves": list(POSITIONAL)},
    "topology": {},
    "fisher": {"label_free": "output"},
    "fisher-lm": {"label_free": "lm"},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(SCORER_PARAMS))
def test_every_scorer_runs_on_decoders(kind, name):
    batches = [Batch(*padded_batch(seed)) for seed in range(3)]
    scorer = name.split("-")[0]
    res, layout = run_scorer(kind, scorer, SCORER_PARAMS[name], batches)
    parts = [p for p in (res.heads, res.neurons) if p is not None]
    assert parts
    for p in parts:
        want = layout.heads_per_layer if p is res.heads else layout.ffn_per_layer
        assert [len(v) for v in p.values] == list(want)
        assert np.isfinite(np.concatenate([np.asarray(v, dtype=float) for v in p.values])).all()
    assert set(SCORER_PARAMS) >= set(SPECS)  # every built-in scorer is covered


def test_sieve_roles_drop_next_on_decoders_and_refuse_it_alone():
    batches = [Batch(*padded_batch())]
    res, _ = run_scorer("llama", "sieve_roles", {"sieves": list(POSITIONAL)}, batches)
    assert "next" not in res.heads.extras["sieves"] and "local" in res.heads.extras["sieves"]
    assert any("next" in n for n in res.heads.extras["notices"])
    with pytest.raises(RecipeError, match="lists only 'next', and a causal model's query never sees the next token"):
        run_scorer("gpt2", "sieve_roles", {"sieves": ["next"]}, batches)


def test_previous_token_head_holds_the_prev_role_on_a_decoder():
    """A toy causal head attending to the previous token gets 'prev' (and 'local'), not
    'next'; a uniform causal head gets no role."""
    from compressor.scorers.sieve_roles import SieveRolesScorer

    model = MODELS["llama"]
    a = adapter_for(model)
    ids = torch.randint(5, 60, (8, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    s = ids.shape[1]
    prev = torch.diag(torch.ones(s - 1), -1)
    prev[0, 0] = 1
    uniform = causal_keys(s, s).float() / torch.arange(1, s + 1)[:, None]
    attn = torch.stack([prev, uniform])[None].expand(8, 2, s, s).contiguous()
    scorer = SieveRolesScorer(sieves=list(POSITIONAL))
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    cb = CaptureBatch(ids, mask, summary_positions(a, mask), (attn,), None)
    scorer.update(cb)
    bias = scorer._bias[0].mean(0)  # [heads, sieves]
    names = scorer.positional
    assert "next" not in names
    assert bias[0, names.index("prev")] > 5 and bias[0, names.index("local")] > 2
    seen = ~torch.isnan(bias[1])  # cls / sep / delimiter: no such token without a tokenizer
    assert {names[i] for i in torch.nonzero(seen).flatten().tolist()} >= {"local", "prev", "block"}
    np.testing.assert_allclose(bias[1][seen].numpy(), 1.0, atol=1e-5)


def test_fisher_lm_is_the_squared_gradient_of_the_next_token_loss():
    """label_free: lm on one unpadded sequence: the head and neuron scores are the squared
    mask gradients of transformers' own causal LM loss (mean NLL x predicted tokens;
    transformers computes it in float32, hence the tolerance)."""
    from compressor.masking import unit_masks

    model = MODELS["llama"].double()
    try:
        a = adapter_for(model)
        ids = torch.randint(4, 64, (1, 9), generator=torch.Generator().manual_seed(3))
        res, layout = run_scorer("llama", "fisher", {"label_free": "lm"}, [Batch(ids, torch.ones_like(ids))])
        hm = [torch.ones(1, n, dtype=torch.float64, requires_grad=True) for n in layout.heads_per_layer]
        nm = [torch.ones(1, f, dtype=torch.float64, requires_grad=True) for f in layout.ffn_per_layer]
        with unit_masks(a, hm, nm):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss * (ids.shape[1] - 1)
        grads = torch.autograd.grad(loss, hm + nm)
        for layer in range(layout.num_layers):
            np.testing.assert_allclose(res.heads.values[layer], grads[layer][0].pow(2).numpy(), rtol=1e-4, atol=1e-12)
            np.testing.assert_allclose(res.neurons.values[layer], grads[layout.num_layers + layer][0].pow(2).numpy(),
                                       rtol=1e-4, atol=1e-12)
        assert res.heads.extras["loss"].startswith("lm")
    finally:
        model.float()


def test_fisher_lm_refuses_an_encoder():
    from tests.conftest import tiny_model

    m = tiny_model("bert")
    a = adapter_for(m)
    s = SCORERS.get("fisher")(label_free="lm")
    with pytest.raises(RecipeError, match="label_free: lm needs a causal language model; BertModel .* is an encoder"):
        s.begin(ScoringContext(m, a, a.layout(), 0))
