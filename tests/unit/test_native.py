"""The fused native head-distance kernel: same numbers as the PyTorch path and scipy,
built once into the cache, and a clean fallback when it cannot be built; the shared
stacked-heads layout it reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from compressor import native
from compressor.head_distances import TOKEN_METRICS, js_distance_sums, key_spans, query_weights, token_metric_means
from compressor.scorers.base import CaptureBatch

needs_kernel = pytest.mark.skipif(native.heads_library() is None, reason="no C compiler: the kernel cannot be built")


def _attention(b=4, n=7, s=11, seed=0, causal=False):
    """Padding on the right of sequence 1 and on the left of sequence 2 (GPT-2 style
    batches may be left-padded), so key spans start and end inside the row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, s - 4 :] = 0
    mask[2, :3] = 0
    logits = torch.randn(b, n, s, s, generator=g) * 3
    if causal:
        logits = logits.masked_fill(torch.ones(s, s).triu(1).bool(), -math.inf)
    logits = logits.masked_fill(mask[:, None, None, :] == 0, -math.inf)
    a = torch.nan_to_num(logits.softmax(-1)) * mask[:, None, :, None]  # fully masked rows -> 0
    return a, mask


def test_key_spans():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    assert key_spans(mask, 4, 4).tolist() == [[0, 3], [1, 3], [0, 0], [0, 4]]
    assert key_spans(None, 2, 5).tolist() == [[0, 5], [0, 5]]


@needs_kernel
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_equals_torch_path_and_scipy(causal, threads):
    a, mask = _attention(causal=causal)
    w = query_weights(mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the pair list is split over this many threads, unevenly at 3
    try:
        fast = js_distance_sums(a, w, mask, backend="native").double()
    finally:
        torch.set_num_threads(before)
    slow = js_distance_sums(a, w, backend="torch").double()
    assert torch.allclose(fast, slow, atol=2e-5), (fast - slow).abs().max()
    for b in range(a.shape[0]):
        real = mask[b].bool().numpy()
        for i, j in ((0, 1), (2, 6), (5, 3)):
            want = np.mean([jensenshannon(a[b, i, t].double()[real], a[b, j, t].double()[real], base=2)
                            for t in np.flatnonzero(real)])
            assert fast[b, i, j].item() == pytest.approx(want, abs=2e-5)


@needs_kernel
def test_native_skips_zero_weight_queries_and_keeps_identical_heads_at_zero():
    a, mask = _attention(n=3)
    a[:, 1] = a[:, 0]
    w = query_weights(mask)
    w[:, ::2] = 0  # e.g. a query sample: unsampled queries contribute nothing
    d = js_distance_sums(a, w, mask, backend="native")
    ref = js_distance_sums(a, w, backend="torch")
    # identical heads are float32 noise (~1e-4, see js_distance_sums) in either path
    assert torch.allclose(d[:, 2], ref[:, 2], atol=2e-5)
    assert (d[:, 0, 1] < 1e-3).all() and (d[:, 0, 2] > 0.1).all()
    assert (d.diagonal(dim1=1, dim2=2) == 0).all() and torch.equal(d, d.transpose(1, 2))


@needs_kernel
def test_library_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    assert native.heads_library() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary files left beside it
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_state", {})
    assert native.heads_library() is not None and built[0].stat().st_mtime_ns == stamp


def test_fallback_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(native, "_state", {})
    with pytest.warns(RuntimeWarning, match="native head-distance kernel unavailable"):
        assert native.heads_library() is None
    assert not list((tmp_path / "native").glob("*.so"))
    a, mask = _attention()
    w = query_weights(mask)
    assert torch.allclose(js_distance_sums(a, w, mask), js_distance_sums(a, w, backend="torch"))
    with pytest.raises(RuntimeError, match="native head-distance kernel is unavailable"):
        js_distance_sums(a, w, mask, backend="native")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    assert native.heads_library() is None
    with pytest.raises(ValueError, match="backend must be"):
        js_distance_sums(*_attention()[:1], torch.ones(4, 11), backend="cuda")


@needs_kernel
@pytest.mark.parametrize("causal,length,threads", [(False, 11, 2), (True, 11, 1), (False, 37, 3)])
def test_fused_token_metrics_equal_torch_path(causal, length, threads):
    # 7 heads (tiles of 4 padded), keys not a multiple of 16, 37 queries (several blocks),
    # 4 sequences over 1-3 threads
    a, mask = _attention(s=length, causal=causal)
    a[:, 4] = mask[:, None, :] * mask[:, :, None].float()  # uniform rows: no variance, r := 0
    a[:, 4] /= a[:, 4].sum(-1, keepdim=True).clamp_min(1e-12)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = token_metric_means(a, mask, TOKEN_METRICS, backend="native")
    finally:
        torch.set_num_threads(before)
    slow = token_metric_means(a, mask, TOKEN_METRICS, backend="torch")
    for m in TOKEN_METRICS:
        assert fast[m].shape == (4, 7, 7) and torch.equal(fast[m], fast[m].transpose(1, 2))
        assert torch.allclose(fast[m], slow[m], atol=2e-5), (m, (fast[m] - slow[m]).abs().max())
    # a subset gives the same numbers (metrics share panels but not results)
    part = token_metric_means(a, mask, ["bhattacharyya", "js"], backend="native")
    assert list(part) == ["bhattacharyya", "js"]
    assert torch.equal(part["bhattacharyya"], fast["bhattacharyya"]) and torch.equal(part["js"], fast["js"])


def test_heads_are_a_view_of_a_by_query_layout_reused_across_batches():
    g = torch.Generator().manual_seed(0)
    layers = (torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 0, 5, 5), torch.rand(2, 2, 5, 5, generator=g))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    workspace: dict = {}
    batch = CaptureBatch(torch.zeros(2, 5, dtype=torch.long), mask, torch.zeros(2, dtype=torch.long),
                         layers, None, workspace=workspace)
    h = batch.heads()
    assert torch.equal(h, torch.cat(layers, 1) * mask[:, None, :, None])
    assert h.transpose(1, 2).is_contiguous()  # memory is [batch, q, N, k]
    again = CaptureBatch(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long),
                         torch.zeros(2, dtype=torch.long), tuple(x.half() for x in layers), None, workspace=workspace)
    h2 = again.heads()
    assert h2.data_ptr() == h.data_ptr() and h2.dtype == torch.float32  # same storage, float32
    assert torch.allclose(h2, torch.cat(layers, 1), atol=1e-3)
