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
    # all mass inside the local sieve (the token and 2 neighbours each side: 5 keys inside
    # the sequence, 3 or 4 at its ends) gives bias L/|sieve|: 2.77 on average at L=12
    assert "local" not in roles["0.0"]
    local = heads.extras["sieves"].index("local")

    def local_bias(n):  # mean over queries of n / (keys within 2 of the query)
        return np.mean([n / (min(q + 2, n - 1) - max(q - 2, 0) + 1) for q in range(n)])

    assert abs(heads.extras["mean_bias"][0][local] - (5 * local_bias(12) + local_bias(8)) / 6) < 1e-3
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


def test_segments_from_token_types_or_separators():
    from compressor.scorers.sieve_roles import segments

    # [CLS] a b [SEP] c d [SEP] pad ; RoBERTa-like <s> a </s> </s> c </s> pad pad
    ids = torch.tensor([[2, 7, 8, 3, 9, 10, 3, 0], [2, 7, 3, 3, 9, 3, 0, 0]])
    mask = (torch.arange(8) < torch.tensor([[7], [6]])).long()
    derived = segments(ids, mask, None, sep_id=3)
    assert derived[0, :7].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert derived[1, :6].tolist() == [0, 0, 0, 0, 1, 1]  # a doubled separator ends one segment
    given = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0]] * 2)
    assert segments(ids, mask, given, sep_id=3) is given


def test_block_sieve_sees_the_two_sentences_of_a_pair():
    ids = torch.tensor([[2, 7, 8, 3, 9, 10, 11, 3]])
    mask = torch.ones_like(ids)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    # a head that attends uniformly within its own sentence: bias L / |segment| = 2
    same = (types[0][:, None] == types[0][None, :]).float()
    attn = (same / same.sum(1, keepdim=True))[None, None]  # [1, 1, q, k]
    block = positional_sieves(ids, mask, types, SPECIAL, ["block"])
    assert block[0, :, :, 0].sum() == 32  # 2 segments of 4 tokens: 16 + 16 pairs
    bias = sieve_bias(attn, block, mask)
    assert abs(bias.item() - 2.0) < 1e-5
    one = positional_sieves(ids, mask, torch.zeros_like(ids), SPECIAL, ["block"])
    assert abs(sieve_bias(attn, one, mask).item() - 1.0) < 1e-5  # one segment: degenerate, as before


def test_local_sieve_is_the_token_and_two_neighbours_each_side():
    ids, mask = batch_of(s=12)
    local = positional_sieves(ids, mask, torch.zeros_like(ids), SPECIAL, ["local"])[0, :, :, 0]
    assert local[5].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    assert local.sum(1).tolist() == [3, 4] + [5] * 8 + [4, 3]


def test_syntactic_sieves_on_a_sentence_pair(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    enc = tok(["the movie was good"], ["the plot was bad"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]  # [CLS] 4 words [SEP] 4 words [SEP]
    seen = []

    def fake_parser(texts):  # "the X was Y": X <-nsubj- was, Y <-amod- X (fake labels)
        seen.extend(texts)
        return [([0, 4, 4 + len(t.split()[1]) + 1, len(t) - len(t.split()[3])],
                 [3, 4 + len(t.split()[1]), 0, len(t)], ["det", "nsubj", "ROOT", "amod"], [1, 2, 2, 1])
                for t in texts]

    syn, skipped = syntactic_sieves(ids, mask, tok, fake_parser, ["nsubj", "amod"])
    assert skipped == 0 and seen == ["the movie was good", "the plot was bad"]  # parsed one sentence at a time
    # nsubj: movie (2) - was (3) in the first sentence, plot (7) - was (8) in the second
    assert sorted(map(tuple, syn[0, :, :, 0].nonzero().tolist())) == [(2, 3), (3, 2), (7, 8), (8, 7)]
    assert syn[0, :, :, 1].sum() == 4 and syn[0, 2, 4, 1] and syn[0, 7, 9, 1]
    assert not syn[0, :6, 6:].any()  # nothing crosses the sentences


def test_z_test_is_the_default_and_t_is_more_conservative():
    from scipy.stats import ttest_1samp

    from compressor.scorers.sieve_roles import one_tailed_test

    rng = np.random.default_rng(0)
    bias = rng.normal(3.4, 1.0, size=(12, 4, 2))
    bias[:3, 0, 1] = np.nan  # a sieve some sequences never saw
    mean, pz = one_tailed_test(bias, 3.0, "z")
    _, pt = one_tailed_test(bias, 3.0, "t")
    ref = ttest_1samp(bias, 3.0, axis=0, alternative="greater", nan_policy="omit").pvalue
    np.testing.assert_allclose(pt, np.asarray(ref), rtol=1e-6)
    above = pt < 0.5  # mean above tau: normal tails are thinner than Student's at 11 (or 8) degrees of freedom
    assert above.sum() >= 6 and (pz[above] < pt[above]).all() and (pz[~above] > pt[~above]).all()
    np.testing.assert_allclose(mean, np.nanmean(bias, 0), rtol=1e-9)
    assert SCORERS.get("sieve_roles")().p["test"] == "z"
