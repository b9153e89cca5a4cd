"""Head distances against direct per-pair computations, and the metric properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import procrustes
from scipy.spatial.distance import jensenshannon

from compressor.head_distances import (
    bhattacharyya_coefficient, cca_similarity, cosine_similarity, dcor_similarity, js_distance_sums,
    pearson_similarity, procrustes_disparity, query_weights,
)


def random_attention(b=3, n=5, s=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    for row, length in ((1, 5), (2, 3)):  # padded rows, where the batch has them
        if row < b:
            mask[row, length:] = 0
    logits = torch.randn(b, n, s, s, generator=g) * 2
    logits = logits.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    a = logits.softmax(-1) * mask[:, None, :, None]  # padding queries are 0 rows
    return a.double().float(), mask


def per_token(fn, a, mask):
    """Direct: mean over real query tokens of fn(p, q), per sequence, for every pair."""
    b, n = a.shape[:2]
    out = np.zeros((b, n, n))
    for s in range(b):
        L = int(mask[s].sum())
        for i in range(n):
            for j in range(n):
                out[s, i, j] = np.mean([fn(a[s, i, q, :L].numpy().astype(np.float64),
                                           a[s, j, q, :L].numpy().astype(np.float64)) for q in range(L)])
    return out


def test_token_metrics_equal_direct_computation():
    a, mask = random_attention()
    w = query_weights(mask)
    js = js_distance_sums(a, w, block=64).numpy()  # tiny blocks: every edge of the blocking
    np.testing.assert_allclose(js, per_token(lambda p, q: jensenshannon(p, q, base=2), a, mask), atol=2e-5)
    cos = cosine_similarity(a, mask).numpy()
    np.testing.assert_allclose(cos, per_token(lambda p, q: p @ q / np.linalg.norm(p) / np.linalg.norm(q), a, mask), atol=1e-5)
    r = pearson_similarity(a, mask).numpy()
    np.testing.assert_allclose(r, per_token(lambda p, q: np.corrcoef(p, q)[0, 1], a, mask), atol=1e-5)
    bc = bhattacharyya_coefficient(a, mask).numpy()
    np.testing.assert_allclose(bc, per_token(lambda p, q: np.sqrt(p * q).sum(), a, mask), atol=1e-5)


def dcor_direct(x, y):
    def centred(z):
        d = np.linalg.norm(z[:, None] - z[None], axis=-1)
        return d - d.mean(0) - d.mean(1)[:, None] + d.mean()
    A, B = centred(x), centred(y)
    return np.sqrt((A * B).mean() / np.sqrt((A * A).mean() * (B * B).mean()))


def test_sentence_metrics_equal_direct_computation():
    a, mask = random_attention(n=4, s=6)
    dc = dcor_similarity(a, mask).numpy()
    pr = procrustes_disparity(a, mask, rank=64).numpy()
    for s in range(a.shape[0]):
        L = int(mask[s].sum())
        for i in range(4):
            for j in range(4):
                x, y = a[s, i, :L, :L].double().numpy(), a[s, j, :L, :L].double().numpy()
                assert dc[s, i, j] == pytest.approx(dcor_direct(x, y), abs=1e-4)
                if L > 2:  # scipy needs matrices with some spread
                    assert pr[s, i, j] == pytest.approx(procrustes(x, y)[2], abs=1e-4)


def test_cca_bounds_and_identity():
    a, mask = random_attention(n=4, s=6)
    c = cca_similarity(a, mask, rank=64)
    assert ((c >= 0) & (c <= 1)).all() and torch.allclose(c, c.transpose(1, 2))
    assert (c[0, 0, 1:] < 1 - 1e-3).all()  # full-length sequence: different heads differ
    assert torch.allclose(c.diagonal(dim1=1, dim2=2), torch.ones(3, 4), atol=1e-5)  # a matrix with itself


@pytest.mark.parametrize("seed", range(3))
def test_js_distance_is_a_metric(seed):
    a, mask = random_attention(b=1, n=8, s=9, seed=seed)
    d = js_distance_sums(a, query_weights(mask))[0].double()
    assert torch.allclose(d, d.T) and (d.diagonal() == 0).all() and (d >= 0).all() and (d <= 1).all()
    tri = d[:, None, :] <= d[:, :, None] + d[None, :, :] + 1e-6  # d(i,k) <= d(i,j) + d(j,k)
    assert tri.all()
