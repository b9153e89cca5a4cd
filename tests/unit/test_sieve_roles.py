from __future__ import annotations

import numpy as np
import torch

from compressor.arch import adapter_for
from compressor.capture import run_capture
from compressor.data.calibration import Batch
from compressor.scorers import SCORERS, ScoringContext
from compressor.scorers.base import CaptureBatch
from compressor.scorers.sieve_roles import POSITIONAL, positional_sieves, sieve_bias, syntactic_sieves
from tests.conftest import tiny_model, tiny_tokenizer

SPECIAL = {"cls": 2, "sep": 3}


def batch_of(b=6, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 20, (b, s), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 8:] = 0
    lengths = mask.sum(1)
    ids[torch.arange(b), lengths - 1] = 3
    return ids, mask


def test_uniform_attention_has_bias_one_for_every_sieve():
    ids, mask = batch_of()
    attn = mask[:, None, None, :].float().expand(6, 2, 12, 12) / mask.sum(1)[:, None, None, None]
    sieves = positional_sieves(ids, mask, torch.zeros_like(ids), SPECIAL, POSITIONAL)
    bias = sieve_bias(attn, sieves, mask)  # [batch, heads, sieves]
    np.testing.assert_allclose(bias.numpy(), 1.0, atol=1e-5)


def test_toy_heads_get_their_roles():
    ids, mask = batch_of()
    s = ids.shape[1]
    prev = torch.diag(torch.ones(s - 1), -1)
    prev[0, 0] = 1
    to_sep = torch.zeros(6, s, s)
    to_sep[torch.arange(6), :, mask.sum(1) - 1] = 1
    attn = torch.stack([prev.expand(6, s, s), to_sep], 1) * mask[:, None, :, None]  # [6, 2, q, k]
    model = tiny_model("bert")
    a = adapter_for(model)

    class Ctx:  # two "heads" in one layer
        layout = type("L", (), {"heads_per_layer": (2,)})()
        seed, tokenizer = 0, None

    scorer = SCORERS.get("sieve_roles")(sieves=list(POSITIONAL))
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    scorer.special = SPECIAL
    scorer.ctx = Ctx
    scorer.update(CaptureBatch(ids, mask, torch.zeros(6, dtype=torch.long), (attn,), None))
    heads = scorer.finish().heads
    roles = heads.extras["roles"]
    assert "prev" in roles["0.0"] and "next" not in roles["0.0"]
    # all mass in a 4-key local sieve gives bias L/4: 3 at L=12, not above tau=3
    assert "local" not in roles["0.0"]
    local = heads.extras["sieves"].index("local")
    assert abs(heads.extras["mean_bias"][0][local] - (5 * 12 / 4 + 8 / 4) / 6) < 0.2
    assert {"sep", "delimiter"} <= set(roles["0.1"]) and "cls" not in roles["0.1"]
    assert 1 <= heads.values[0][0] < 2 <= heads.values[0][1] < 3  # 1 role (prev); 2 roles (sep, delimiter)


def test_head_without_role_scores_lowest_on_a_real_capture(tiny_bert_dir):
    from transformers import AutoTokenizer

    model = tiny_model("bert")
    a = adapter_for(model)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    scorer = SCORERS.get("sieve_roles")(sieves=list(POSITIONAL))
    scorer.begin(ScoringContext(model, a, a.layout(), 0, tok))
    ids, mask = batch_of()
    run_capture(model, a, [Batch(ids, mask)], [scorer], progress=False)
    heads = scorer.finish().heads
    flat = np.concatenate(heads.values)
    n_roles = np.array([len(v) for v in heads.extras["roles"].values()])
    assert flat.shape == (12,) and (np.floor(flat) == n_roles).all()


def test_syntactic_sieves_from_a_parse(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    enc = tok(["the movie was good"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def fake_parser(texts):
        # "the movie was good": movie <-nsubj- was, good <-acomp- was, the <-det- movie
        return [([0, 4, 10, 14], [3, 9, 13, 18], ["det", "nsubj", "ROOT", "acomp"], [1, 2, 2, 2]) for _ in texts]

    syn, skipped = syntactic_sieves(ids, mask, tok, fake_parser, ["nsubj", "amod"])
    assert skipped == 0
    # word pieces: [CLS] the movie was good [SEP] -> movie (2) and was (3) are nsubj-related
    assert syn[0, 2, 3, 0] and syn[0, 3, 2, 0] and syn[0, :, :, 0].sum() == 2
    assert syn[0, :, :, 1].sum() == 0  # no amod


def test_missing_spacy_is_a_notice_not_an_error(monkeypatch):
    import compressor.scorers.sieve_roles as sr

    monkeypatch.setattr(sr, "spacy_parser", lambda: None)
    model = tiny_model("bert")
    a = adapter_for(model)
    scorer = SCORERS.get("sieve_roles")()
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    assert scorer.syntactic == [] and "pip install 'compressor[syntax]'" in scorer.notices[0]
    assert scorer.positional == list(POSITIONAL)
