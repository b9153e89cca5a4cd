"""Distances between attention heads, as batched reductions over one capture batch.

All heads of the model are stacked: A [batch, N, q, k], N = sum of heads over layers.
Each query row is a distribution over the real keys (padding keys hold 0).

Token-based (per query token, then averaged over a sequence's real query tokens), via
token_metric_means:
- cosine, correlation and Bhattacharyya are inner products over the key axis of rows
  scaled per row, i.e. a Gram matrix per sequence over the flattened (q, k) axis.
- Jensen-Shannon needs the entropy of each pair's mixture (p+q)/2, which does not
  factor: it is computed exactly over the upper triangle.
Both run on the native kernels of compressor.native when they build (one fused pass
each, no scaled copies of A) and otherwise on the PyTorch functions below, which
prepare rows in elementwise passes and use batched matmuls / cache-sized blocks.
Sentence-based (whole attention matrices of a sequence, real tokens only):
- distance correlation: double-centred row-distance matrices, then a Gram matrix.
- Procrustes disparity and SVCCA-regularized CCA: singular values of U_i^T U_j (scaled
  by the spectra for Procrustes), from one SVD per head (rank-truncated for speed).
Every function returns per-sequence sums [N, N] (or per-sequence values) so callers
can stream over batches.
"""

from __future__ import annotations

import math

import torch

from .native import gram_sums, heads_library, js_pair_sums, row_stats

from .scorers.specs import METRICS, SENTENCE_METRICS, TOKEN_METRICS  # noqa: F401  (re-exported)
_EPS = 1e-12
# A row whose centred squared norm is below this share of its squared norm counts as
# constant (Pearson r := 0): the centring cancels sum p^2 against ~1/L, and float32
# rounding of sum p^2 (~1e-7 relative) would otherwise decide r for uniform rows.
_FLAT = 1e-5


def keys_seen(mask: torch.Tensor, q: int, causal: bool = False) -> torch.Tensor:
    """[batch, q] float (>= 1): how many real keys each query sees: the sequence's L real
    tokens, or for a causal model the real tokens up to and including query i (i + 1
    under right padding; fewer under left padding)."""
    m = mask[:, :q].float()
    if not causal:
        return m.sum(1, keepdim=True).clamp_min(1).expand(-1, q)
    return m.cumsum(1).clamp_min(1)


def query_weights(mask: torch.Tensor) -> torch.Tensor:
    """[batch, q]: 1/n_real at real query tokens, 0 at padding: a per-sequence mean."""
    m = mask.float()
    return m / m.sum(1, keepdim=True).clamp_min(1)


def _mean_gram(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the mean over real queries of <x[b,i,q,:], x[b,j,q,:]>: [batch, N, N].

    One batched matmul over the flattened (q, k) axis. Padded query rows of ``x`` must
    be 0 (as in CaptureBatch.heads()), so the per-query averaging weight is the constant
    1/n of the sequence and is applied to the N x N result, not to every row."""
    flat = x.flatten(2)  # [batch, N, q*k]
    n = mask.sum(1).clamp_min(1).to(x.dtype)[:, None, None]  # [batch, 1, 1]
    return _mirror(flat @ flat.transpose(1, 2)) / n


def _mirror(g: torch.Tensor) -> torch.Tensor:
    """(G + G^T) / 2: exactly symmetric whatever order a BLAS kernel summed G[i, j] and
    G[j, i] in (they may round differently with threads or vector widths)."""
    return (g + g.transpose(-1, -2)) / 2


def cosine_similarity(a: torch.Tensor, mask: torch.Tensor, sumsq: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real query tokens of cos(p_i, p_j): [batch, N, N].

    a: [batch, N, q, k] with padded query rows 0. sumsq: sum_k p^2 per row
    ([batch, N, q]), shared with pearson_similarity."""
    sumsq = (a * a).sum(-1) if sumsq is None else sumsq
    return _mean_gram(a * sumsq.clamp_min(_EPS).rsqrt()[..., None], mask)  # a is shared: not in place


def pearson_similarity(a: torch.Tensor, mask: torch.Tensor, sumsq: torch.Tensor | None = None,
                       causal: bool = False) -> torch.Tensor:
    """Mean over real query tokens of Pearson r(p_i, p_j) over the real keys: [batch, N, N].

    Rows sum to 1 over the L real keys, so a row's mean is 1/L and its centred squared
    norm is sum p^2 - 1/L: no separate centring pass. A row with no variance (e.g. a
    single real key, uniform attention, or a padded query) has r defined as 0.
    ``causal``: the samples of query i are the keys it sees (i + 1 of them), not the
    future keys every head gives 0, which would make all heads look correlated."""
    sumsq = (a * a).sum(-1) if sumsq is None else sumsq
    inv_len = (1 / keys_seen(mask, a.shape[2], causal)).to(a.dtype)[:, None, :]  # [batch, 1, q]
    var = sumsq - inv_len  # [batch, N, q] centred squared norms
    scale = torch.where(var > _FLAT * sumsq, var.clamp_min(_EPS).rsqrt(), torch.zeros_like(var))
    centred = (a - inv_len[..., None]).mul_(scale[..., None])  # [batch, N, q, k]
    if not bool(mask.all()):
        centred.mul_(mask[:, None, None, :].to(a.dtype))  # padding keys are not samples
    if causal:  # nor are the keys after the query
        centred.mul_(torch.ones(a.shape[2], a.shape[3], dtype=a.dtype).tril())
    return _mean_gram(centred, mask)


def bhattacharyya_coefficient(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real query tokens of sum_k sqrt(p q): [batch, N, N] (a >= 0, softmax)."""
    return _mean_gram(a.sqrt(), mask)


def key_spans(key_mask: torch.Tensor | None, b: int, k: int) -> torch.Tensor:
    """[batch, 2]: per sequence, the smallest key range [first, last + 1) holding all its
    real keys (all keys when no mask is given). Keys outside it are padding."""
    if key_mask is None:
        return torch.tensor([[0, k]] * b, dtype=torch.int32)
    real = key_mask.bool()  # [batch, k]
    pos = torch.arange(k)
    first = torch.where(real, pos, k).min(1).values
    last = torch.where(real, pos + 1, 0).max(1).values
    return torch.stack([first.clamp_max(last), last], 1).to(torch.int32)


def js_distance_sums(
    a: torch.Tensor, w: torch.Tensor, key_mask: torch.Tensor | None = None, backend: str = "auto",
    block: int = 2**18,
) -> torch.Tensor:
    """sum_q w[b,q] * sqrt(JS(p_i(q), p_j(q))) for all pairs: [batch, N, N].

    a: [batch, N, q, k]; w: [batch, q] query weights (0 skips a query); key_mask:
    [batch, k], 1 at real keys (padding keys hold probability 0 in every row; knowing
    them only saves work).

    Exact, float32, upper triangle only. JS(p, q) = H((p+q)/2) - (H(p) + H(q))/2 in bits,
    in [0, 1]; its square root is a metric. With s = p + q,
    H((p+q)/2) = sum(s) / 2 - sum(s log2 s) / 2: one add, one log and one dot per element.
    In float32, JS has an absolute error near 1e-7, which the square root turns into
    about 3e-4 for identical heads: distances are resolved to ~1e-3 near 0.

    backend: "native" runs the fused C kernel (compressor.native), one pass per element
    with the work split over torch's thread count; "torch" the blocked PyTorch loop
    below (the one used on GPUs); "auto" the kernel for CPU tensors when it builds.
    Both agree to float32 rounding (tested).
    """
    b, n, q, k = a.shape
    lib = _native_library(a, backend)
    if lib is None:
        return _js_distance_sums_torch(a, w, block)
    ii, jj = torch.triu_indices(n, n, offset=1)
    sums = js_pair_sums(lib, a.float(), w, key_spans(key_mask, b, k), ii, jj)  # [pairs, batch]
    return _symmetric(sums.T.float(), ii, jj, n)


def _native_library(a: torch.Tensor, backend: str):
    """The native kernel library when ``backend`` and ``a`` call for it, else None."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
    if backend == "torch" or a.device.type != "cpu" or a.shape[1] < 2:
        return None
    lib = heads_library()
    if lib is None and backend == "native":
        raise RuntimeError("the native head-distance kernel is unavailable (see the warning above)")
    return lib


def token_metric_means(
    a: torch.Tensor, mask: torch.Tensor, metrics: tuple[str, ...] | list[str], backend: str = "auto",
    causal: bool = False,
) -> dict[str, torch.Tensor]:
    """Per sequence, the mean over real query tokens of each token metric between every
    pair of heads: {metric: [batch, N, N]}: the JS distance, or the cosine, Pearson or
    Bhattacharyya similarity.

    a: [batch, N, q, k] with padded query rows 0 (any strides); mask: [batch, q].
    The native path (compressor/native/heads_kernel.c) computes JS with a fused log
    kernel and the three others as register-tiled Gram matrices over the upper triangle
    whose per-row scalings (weight, 1 / norm, centring) and square roots are applied
    while a cache-sized block of queries is copied, so no scaled copy of ``a`` is ever
    made. The PyTorch path runs the per-metric functions above; both agree to float32
    rounding (tested).

    ``causal`` (decoders: each row is a distribution over the query's prefix): Pearson
    takes the keys the query sees as its samples. JS, cosine and Bhattacharyya need no
    change: keys that both rows give 0 add nothing to them.
    """
    bad = [m for m in metrics if m not in TOKEN_METRICS]
    if bad:
        raise ValueError(f"unknown token metrics {bad}; allowed: {', '.join(TOKEN_METRICS)}")
    lib = _native_library(a, backend)
    w = query_weights(mask)  # [batch, q]
    if lib is None:
        sumsq = None
        if {"cosine", "correlation"} & set(metrics):
            sumsq = torch.linalg.vector_norm(a, dim=-1).square()  # [batch, N, q] (no squared copy of a)
        torch_fns = {
            "js": lambda: js_distance_sums(a, w, mask, backend="torch"),
            "cosine": lambda: cosine_similarity(a, mask, sumsq),
            "correlation": lambda: pearson_similarity(a, mask, sumsq, causal),
            "bhattacharyya": lambda: bhattacharyya_coefficient(a, mask),
        }
        return {m: torch_fns[m]() for m in metrics}

    a = a.float()
    b, n, q, k = a.shape
    spans = key_spans(mask, b, k)
    # per-row scalars in the kernel's [N, batch, q] layout; each side of a Gram carries sqrt(w)
    root_w = w.sqrt()[None].expand(n, b, q)
    out: dict[str, torch.Tensor] = {}
    grams, scales, roots = [], [], []
    if {"cosine", "correlation"} & set(metrics):
        sumsq, mass = row_stats(lib, a, spans)  # [N, batch, q]
    if "cosine" in metrics:
        r = torch.where(sumsq > _EPS, sumsq.clamp_min(_EPS).rsqrt(), torch.zeros_like(sumsq))
        grams.append("cosine"), scales.append(root_w * r), roots.append(False)
    if "correlation" in metrics:
        # Pearson over the L real keys of rows with mass m: the centred squared norm is
        # sum p^2 - (2m - 1) / L and a centred dot is <x, y> - o_x - o_y, o = (2m - 1) / (2L);
        # causal: L is the i + 1 keys query i sees (the rows are 0 beyond them)
        length = keys_seen(mask, q, causal)[None]  # [1, batch, q] keys each query's row is spread over
        o = (2 * mass - 1) / (2 * length)
        var = sumsq - 2 * o
        c = torch.where(var > _FLAT * sumsq, var.clamp_min(_EPS).rsqrt(), torch.zeros_like(var))
        grams.append("correlation"), scales.append(root_w * c), roots.append(False)
    if "bhattacharyya" in metrics:
        grams.append("bhattacharyya"), scales.append(root_w), roots.append(True)
    if grams:
        for m, g in zip(grams, gram_sums(lib, a, spans, scales, roots)):
            out[m] = g.float()
        if "correlation" in out:
            # subtract sum_q w c_i c_j (o_i + o_j), as matrix products over q
            cb, wco = c.transpose(0, 1), (c * o * w[None]).transpose(0, 1)  # [batch, N, q]
            # one product and its transpose: exactly symmetric (two products may round apart)
            half = wco @ cb.transpose(1, 2)  # [batch, N, N]
            out["correlation"] -= (half + half.transpose(1, 2)).float()
    if "js" in metrics:
        out["js"] = js_distance_sums(a, w, mask, backend="native")
    return {m: out[m] for m in metrics}


def _js_distance_sums_torch(a: torch.Tensor, w: torch.Tensor, block: int) -> torch.Tensor:
    """The PyTorch path of js_distance_sums.

    The mixture term does not factor into matrix products, so it is computed block by
    block: one head against a block of heads over a block of query rows, sized to
    ``block`` elements so the add -> log -> dot chain stays in cache. Heads are laid out
    contiguously first, because gathering pairs (a[:, i] + a[:, j] with index tensors)
    measured 3.6x slower than adding contiguous slices.
    """
    b, n, q, k = a.shape
    out = a.new_zeros(b, n, n)
    if n < 2:
        return out
    rows = b * q
    # Zeros (padding) are floored once so log never sees 0: each floored term adds
    # about 1e-28 bits. 1e-30 is a normal float32, so log stays on its fast path.
    at = a.float().transpose(0, 1).reshape(n, rows, k).clamp_min(1e-30).contiguous()  # [N, rows, k]
    h = -torch.linalg.vecdot(at, at.log()) / math.log(2)  # [N, rows] entropies
    mass = at.sum(-1)  # [N, rows]: 1 up to rounding, and the rounding must cancel below
    ii, jj = torch.triu_indices(n, n, offset=1)
    hm = torch.empty(len(ii), rows)  # [pairs, rows] mixture entropies, pairs in triu order
    buf_sum, buf_log = torch.empty(block + k), torch.empty(block + k)
    per_block = max(1, block // k)  # rows of k keys per block
    half_inv_ln2 = 0.5 / math.log(2)
    first = 0  # index in triu order of pair (i, i + 1)
    for i in range(n - 1):
        nj = n - i - 1
        rb = max(1, min(rows, per_block // nj))
        jb = max(1, min(nj, per_block // rb))
        for j0 in range(i + 1, n, jb):
            j1 = min(n, j0 + jb)
            for r0 in range(0, rows, rb):
                r1 = min(rows, r0 + rb)
                shape = (j1 - j0, r1 - r0, k)
                size = shape[0] * shape[1] * k
                s = torch.add(at[j0:j1, r0:r1], at[i, r0:r1], out=buf_sum[:size].view(shape))  # [J, R, k]
                log_s = torch.log(s, out=buf_log[:size].view(shape))
                # H(m) = sum(m) - sum(s log2 s) / 2 with m = s / 2: using the actual masses
                # rather than 1 keeps identical heads at JS ~ 0 instead of rounding noise
                hm[first + j0 - i - 1 : first + j1 - i - 1, r0:r1] = (
                    0.5 * (mass[j0:j1, r0:r1] + mass[i, r0:r1]) - half_inv_ln2 * torch.linalg.vecdot(s, log_s)
                )
        first += nj
    js = hm - 0.5 * (h[ii] + h[jj])  # [pairs, rows]
    d = (js.clamp(0, 1).sqrt().view(-1, b, q) * w[None]).sum(-1)  # [pairs, batch]
    out[:, ii, jj] = d.T
    return out + out.transpose(1, 2)


def dcor_similarity(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distance correlation between every pair of heads' attention matrices, one value
    per sequence: [batch, N, N] in [0, 1]. Samples are the real query rows (points in
    R^k; padding keys are 0 in every row, so they add nothing to distances)."""
    m = mask.float()  # [batch, s]
    pair = m[:, None, :, None] * m[:, None, None, :]  # [batch, 1, s, s] real x real
    n = m.sum(1)[:, None, None, None].clamp_min(1)  # [batch, 1, 1, 1]
    d = torch.cdist(a, a) * pair  # [batch, N, s, s] row distances, real rows only
    row = d.sum(-1, keepdim=True) / n
    col = d.sum(-2, keepdim=True) / n
    tot = d.sum((-2, -1), keepdim=True) / n.square()
    dc = (d - row - col + tot) * pair  # double-centred over the real block
    flat = dc.flatten(2)  # [batch, N, s*s]
    cov = _mirror(flat @ flat.transpose(1, 2)) / n[:, :, :, 0].square()  # [batch, N, N] dCov^2
    var = cov.diagonal(dim1=1, dim2=2).clamp_min(0)  # [batch, N]
    denom = (var[:, :, None] * var[:, None, :]).sqrt()
    r2 = torch.where(denom > _EPS, cov / denom.clamp_min(_EPS), torch.zeros_like(cov))
    return r2.clamp(0, 1).sqrt()


def _spectra(a: torch.Tensor, mask: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence and head, X = U S V^T of the attention matrix over real tokens after
    centring columns (over real rows) and scaling to unit Frobenius norm.

    Padded rows stay 0 after masked centring and padded columns are 0, so the SVD of the
    padded matrix is that of the real block plus zero singular values.
    Returns u [batch, N, s, r], s [batch, N, r], truncated to ``rank`` components.
    """
    m = mask.float()[:, None, :, None]  # [batch, 1, s(q), 1]
    n = m.sum(2, keepdim=True).clamp_min(1)
    x = (a - (a * m).sum(2, keepdim=True) / n) * m
    x = x / x.flatten(2).norm(dim=-1).clamp_min(_EPS)[..., None, None]
    u, s, _ = torch.linalg.svd(x, full_matrices=False)  # u [batch, N, s, s], s [batch, N, s]
    r = min(rank, s.shape[-1])
    return u[..., :r], s[..., :r]


def _pair_singular_values(u: torch.Tensor, scale: torch.Tensor, max_elements: int = 2**24) -> tuple:
    """Singular values of diag(scale_i) U_i^T U_j diag(scale_j) for every pair i <= j.

    u [batch, N, s, r], scale [batch, N, r] -> (ii, jj, sv [batch, pairs, r])."""
    b, n, _, r = u.shape
    ii, jj = torch.triu_indices(n, n)
    chunk = max(1, max_elements // (b * r * r))
    parts = []
    for start in range(0, len(ii), chunk):
        i, j = ii[start : start + chunk], jj[start : start + chunk]
        m = scale[:, i, :, None] * (u[:, i].transpose(-1, -2) @ u[:, j]) * scale[:, j, None, :]  # [batch, c, r, r]
        parts.append(torch.linalg.svdvals(m))
    return ii, jj, torch.cat(parts, 1)


def _symmetric(values: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, n: int) -> torch.Tensor:
    out = values.new_zeros(values.shape[0], n, n)
    out[:, ii, jj] = values
    out[:, jj, ii] = values
    return out


def procrustes_disparity(a: torch.Tensor, mask: torch.Tensor, rank: int = 32) -> torch.Tensor:
    """scipy.spatial.procrustes' disparity, 1 - ||X_i^T X_j||_*^2 after standardizing
    each matrix: [batch, N, N] in [0, 1]. Exact when ``rank`` >= sequence length;
    otherwise each head keeps its top ``rank`` singular components."""
    u, s = _spectra(a, mask, rank)
    ii, jj, sv = _pair_singular_values(u, s)
    return _symmetric((1 - sv.sum(-1).square()).clamp(0, 1), ii, jj, a.shape[1])


def cca_similarity(a: torch.Tensor, mask: torch.Tensor, rank: int = 32, energy: float = 0.99) -> torch.Tensor:
    """Mean canonical correlation between heads' matrices, regularized as in SVCCA
    (Raghu et al., 2017): each matrix keeps its leading singular directions holding
    ``energy`` of its squared Frobenius norm, and the canonical correlations of two
    such subspaces are the singular values of U_i^T U_j. Their mean over the smaller
    subspace's size: [batch, N, N] in [0, 1], 1 for a matrix with itself.

    CCA saturates on very short sequences: with n real tokens the centred rows span at
    most n - 1 dimensions, and two subspaces filling that space correlate perfectly.
    (Ridge-regularized CCA instead gives a matrix with itself s^2 / (s^2 + reg) < 1,
    so its self-similarity would depend on the spectrum.)"""
    u, s = _spectra(a, mask, rank)
    e = s.square()
    before = e.cumsum(-1) - e  # energy of the stronger directions
    keep = (before < energy * e.sum(-1, keepdim=True)) & (s > 1e-6)  # [batch, N, r]
    ii, jj, sv = _pair_singular_values(u, keep.float())
    k = torch.minimum(keep.sum(-1)[:, ii], keep.sum(-1)[:, jj]).clamp_min(1)
    return _symmetric((sv.sum(-1) / k).clamp(0, 1), ii, jj, a.shape[1])
