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

needs_kernel = pytest.mark.skipif(native.heads_library() is None,
                                  reason="no kernel: COMPRESSOR_NATIVE=0, or no C compiler to build it")
LEVELS = [name for name, _, _ in native.isa_levels()]


def f32_atol(terms: int) -> float:
    """Two float32 sums of ``terms`` products of values <= 1, summed in different orders
    (vector widths, tiles, threads), differ by at most ~terms * eps each: twice that."""
    return 2 * terms * torch.finfo(torch.float32).eps


@pytest.fixture(params=LEVELS)
def isa(request, monkeypatch):
    """Each instruction-set level the kernel is built for, where this CPU has it: the same
    binary a user's CPU of that level runs."""
    if request.param not in native.supported_isas():
        pytest.skip(f"this CPU lacks the {request.param} level (has {', '.join(native.supported_isas())})")
    monkeypatch.setenv("COMPRESSOR_NATIVE_ISA", request.param)
    if native.heads_library() is None:
        pytest.skip("no kernel: COMPRESSOR_NATIVE=0, or no C compiler to build it")
    return request.param


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_equals_torch_path_and_scipy(isa, causal, threads):
    a, mask = _attention(causal=causal)
    w = query_weights(mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the pair list is split over this many threads, unevenly at 3
    try:
        fast = js_distance_sums(a, w, mask, backend="native").double()
    finally:
        torch.set_num_threads(before)
    slow = js_distance_sums(a, w, backend="torch").double()
    # a distance sums sqrt(JS) over queries; JS sums 11 keys' terms: ~f32_atol(11 * 4)
    assert torch.allclose(fast, slow, atol=f32_atol(44)), (fast - slow).abs().max()
    assert torch.equal(fast, fast.transpose(1, 2)) and (fast.diagonal(dim1=1, dim2=2) == 0).all()
    for b in range(a.shape[0]):
        real = mask[b].bool().numpy()
        for i, j in ((0, 1), (2, 6), (5, 3)):
            want = np.mean([jensenshannon(a[b, i, t].double()[real], a[b, j, t].double()[real], base=2)
                            for t in np.flatnonzero(real)])
            assert fast[b, i, j].item() == pytest.approx(want, abs=f32_atol(44))


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
def test_library_is_built_once_into_a_private_verified_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    assert native.heads_library() is not None
    folder = tmp_path / "native"
    assert folder.stat().st_mode & 0o777 == 0o700
    built = sorted(folder.iterdir())
    # the library and its digest, nothing temporary left beside them; named by its level
    assert [p.suffix for p in built] == [".so", ".sha256"]
    assert f"-{native.selected_isa()}-" in built[0].name
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_state", {})
    assert native.heads_library() is not None and built[0].stat().st_mtime_ns == stamp
    # a file that does not match its digest is rebuilt, never loaded (unlinked first: the
    # loaded library is mapped, and writing into it in place would crash this process)
    built[0].unlink()
    built[0].write_bytes(b"not a library")
    monkeypatch.setattr(native, "_state", {})
    assert native.heads_library() is not None
    assert native._verified(built[0]) and built[0].read_bytes() != b"not a library"


def test_cache_writable_by_others_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESSOR_NATIVE", raising=False)
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    (tmp_path / "native").mkdir(mode=0o777)
    (tmp_path / "native").chmod(0o777)
    with pytest.warns(RuntimeWarning, match="writable by other users"):
        assert native.heads_library() is None
    assert not list((tmp_path / "native").iterdir())


def test_isa_levels_and_forcing(monkeypatch):
    have = native.supported_isas()
    assert have[-1] == "baseline" and set(have) <= set(LEVELS)
    assert [lv for lv in LEVELS if lv in have] == have  # best first
    monkeypatch.delenv("COMPRESSOR_NATIVE_ISA", raising=False)
    assert native.selected_isa() == have[0]
    monkeypatch.setenv("COMPRESSOR_NATIVE_ISA", "baseline")
    assert native.selected_isa() == "baseline"
    monkeypatch.setenv("COMPRESSOR_NATIVE_ISA", "sse9")
    with pytest.raises(RuntimeError, match="not a level"):
        native.selected_isa()
    # flags are fixed per level: no build depends on the machine it was made on
    assert not any("native" in f for _, flags, _ in native.isa_levels() for f in flags + native._COMMON)


def test_fallback_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESSOR_NATIVE", raising=False)
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


@pytest.mark.parametrize("causal,length,threads", [(False, 11, 2), (True, 11, 1), (False, 37, 3)])
def test_fused_token_metrics_equal_torch_path(isa, causal, length, threads):
    # 7 heads (tiles of 4 padded), keys not a multiple of 16, 37 queries (several blocks),
    # 4 sequences over 1-3 threads
    a, mask = _attention(s=length, causal=causal)
    a[:, 4] = mask[:, None, :] * mask[:, :, None].float()  # uniform rows: no variance, r := 0
    a[:, 4] /= a[:, 4].sum(-1, keepdim=True).clamp_min(1e-12)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = token_metric_means(a, mask, TOKEN_METRICS, backend="native")
        # a subset gives the same numbers (metrics share panels but not results)
        part = token_metric_means(a, mask, ["bhattacharyya", "js"], backend="native")
    finally:
        torch.set_num_threads(before)
    slow = token_metric_means(a, mask, TOKEN_METRICS, backend="torch")
    for m in TOKEN_METRICS:
        # symmetric by construction (one triangle mirrored), whatever the CPU and threads
        assert fast[m].shape == (4, 7, 7) and torch.equal(fast[m], fast[m].transpose(1, 2))
        assert torch.equal(slow[m], slow[m].transpose(1, 2))
        # Pearson's centring cancels sum p^2 against ~1/L: a few more roundings than a plain dot
        assert torch.allclose(fast[m], slow[m], atol=f32_atol(4 * length)), (m, (fast[m] - slow[m]).abs().max())
    assert list(part) == ["bhattacharyya", "js"]
    assert torch.equal(part["bhattacharyya"], fast["bhattacharyya"]) and torch.equal(part["js"], fast["js"])
    if causal:  # Pearson over each query's prefix (decoders): both paths agree too
        fast = token_metric_means(a, mask, ["correlation"], backend="native", causal=True)["correlation"]
        slow = token_metric_means(a, mask, ["correlation"], backend="torch", causal=True)["correlation"]
        assert torch.allclose(fast, slow, atol=f32_atol(4 * length)), (fast - slow).abs().max()


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
