from __future__ import annotations

import numpy as np
import torch

from compressor.scorers.head_types import FEATURES, distance_features, key_categories, name_clusters

SPECIAL = {"cls": 2, "sep": 3, "comma": 10, "period": 11}


def toy(seq=16):
    ids = torch.tensor([[2] + [20] * 6 + [10] + [20] * 6 + [11, 3]])  # [CLS] ... , ... . [SEP]
    mask = torch.ones_like(ids)
    s = ids.shape[1]
    diag = torch.eye(s)  # attends to itself
    vert = torch.zeros(s, s)
    vert[:, -1] = 1  # everything on [SEP]
    dense = torch.ones(s, s) / s
    prev = torch.diag(torch.ones(s - 1), -1)
    prev[0, 0] = 1
    return ids, mask, torch.stack([diag, vert, dense, prev])[None]  # [1, 4, s, s]


def test_features_sum_to_one_and_land_in_the_expected_category():
    ids, mask, attn = toy()
    cats = key_categories(ids, mask, SPECIAL)
    f = distance_features(attn, cats, mask)[0]  # [4, 21]
    assert torch.allclose(f.sum(-1), torch.ones(4))
    assert f[0, FEATURES.index("self")] == 1  # diagonal head
    assert f[1, FEATURES.index("sep")] > 0.9  # vertical head (the [SEP] query itself counts as self)
    assert f[3, FEATURES.index("window1")] > 0.6  # previous token: distance 1, window width L/16 = 1
    assert (f[2, 5:] > 0).sum() >= 8  # dense spreads over many windows


def test_padding_is_ignored():
    ids, mask, attn = toy()
    pad_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad_attn = torch.nn.functional.pad(attn, (0, 4, 0, 4))
    a = distance_features(attn, key_categories(ids, mask, SPECIAL), mask)
    b = distance_features(pad_attn, key_categories(pad_ids, pad_mask, SPECIAL), pad_mask)
    torch.testing.assert_close(a, b)


def test_cluster_names_follow_profiles():
    c = np.zeros((4, 21))
    c[0, 1] = 0.9                 # [SEP]
    c[1, 4] = 0.8                 # self
    c[2, 6:] = 0.06               # spread far
    c[3, 0] = 0.4
    c[3, 8:] = 0.04               # mix
    assert name_clusters(c) == ["vertical", "diagonal", "dense", "dense+vertical"]


def test_stability_reports_the_share_stable_in_every_refit():
    """Guan et al.'s figure (type unchanged in all refits) next to the mean per-refit agreement:
    well-separated heads are stable; a head halfway between two clusters flips in some refits."""
    from compressor.scorers.head_types import stability

    rng = np.random.default_rng(0)
    centres = np.eye(3) * 4  # 3 types, far apart
    labels = np.repeat(np.arange(3), 6)  # 18 heads
    per_seq = centres[labels][None] + rng.normal(0, 0.3, (40, 18, 3))  # [sequences, heads, features]
    clean = stability(per_seq, labels, 3, 6, seed=0)
    assert clean["stable_share"] == 1.0 and clean["mean"] == 1.0
    # head 0 on the fence between types 0 and 1: each half of the inputs pulls it one way
    per_seq[:, 0] = np.where(rng.random((40, 1)) < 0.5, centres[0], centres[1]) + rng.normal(0, 0.3, (40, 3))
    fenced = stability(per_seq, labels, 3, 12, seed=0)
    assert fenced["stable_share"] <= 17 / 18 < fenced["mean"] < 1.0
    assert fenced["min"] <= fenced["mean"] and fenced["splits"] == 12
