"""Native kernels, compiled on first use with the system's C compiler and loaded by ctypes.

One source so far (heads_kernel.c): the token-based distances between all pairs of
attention heads. Exact Jensen-Shannon with a fused, vectorized log (its pairwise mixture
entropy costs ~3x a forward pass in PyTorch, ~0.7x here), and cosine, Pearson and
Bhattacharyya as register-tiled Gram matrices that scale rows while copying cache-sized
panels instead of materializing scaled copies of the attention maps. Everything here is
optional: without a C compiler, or with COMPRESSOR_NATIVE=0, callers get None and use
their PyTorch path (same numbers, tested), with one warning. $CC picks the compiler.

The library is built once per source, compiler and CPU (it targets the host's vector
instructions) into ~/.cache/compressor/native (or $COMPRESSOR_CACHE/native), written
under a temporary name and renamed, so concurrent first uses cannot load half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("heads_kernel.c")
# Tried in order; the first that compiles wins (a compiler that rejects a flag falls
# through). -fopenmp-simd honours the kernel's `omp simd` reductions without linking an
# OpenMP runtime (torch brings its own, and two would oversubscribe the cores). 512-bit
# vectors measured 1.2x faster than gcc's 256-bit default on an AVX-512 Xeon.
_FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-fno-math-errno"],
    ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"],
    ["-O3", "-fopenmp-simd", "-fno-math-errno"],
)
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("COMPRESSOR_CACHE")
    return Path(root) / "native" if root else Path.home() / ".cache" / "compressor" / "native"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compile(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = _SOURCE.read_bytes()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                          platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
        target = cache_dir() / f"heads_kernel-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            run = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(_SOURCE)],
                                 capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{' '.join(flags)}: {run.stderr.strip().splitlines()[-1:] or run.returncode}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


def _load() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    lib = ctypes.CDLL(str(_compile(compiler)))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.row_entropies.argtypes = [p, i64, i64, i64, i64, i64, p, p, i64, i64, p]
    lib.row_entropies.restype = None
    lib.row_stats.argtypes = [p, i64, i64, i64, i64, i64, p, i64, i64, p, p]
    lib.row_stats.restype = None
    lib.js_pairs.argtypes = [p, i64, i64, i64, i64, i64, p, p, p, p, p, i64, i64, i64, p]
    lib.js_pairs.restype = None
    lib.gram_sums.argtypes = [p, i64, i64, i64, i64, i64, i64, p, i64, p, p, i64, i64, i64, p, p, p]
    lib.gram_sums.restype = None
    return lib


def heads_library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (disabled, or it could not be built: warned once)."""
    if os.environ.get("COMPRESSOR_NATIVE", "1") == "0":
        return None
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state["lib"] = None
                warnings.warn(f"native head-distance kernel unavailable ({err}); using the PyTorch "
                              "path (Jensen-Shannon about 3x slower)", RuntimeWarning, stacklevel=3)
        return _state["lib"]  # type: ignore[return-value]


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool, size = _state.get("pool"), _state.get("pool_size")
        if pool is None or size != workers:  # torch.set_num_threads changed it
            if pool is not None:
                pool.shutdown(wait=False)  # type: ignore[attr-defined]
            pool = _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="compressor-native")
            _state["pool_size"] = workers
        return pool  # type: ignore[return-value]


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    bounds = [t * total // parts for t in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _check(a: torch.Tensor) -> None:
    if a.dtype != torch.float32 or a.device.type != "cpu" or a.stride(-1) != 1:
        raise ValueError("the native kernels need float32 CPU attention maps with contiguous keys")


def row_stats(lib: ctypes.CDLL, a: torch.Tensor, key_span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norm and mass of every query row over its key span: two [N, batch, q] tensors."""
    _check(a)
    b, n, q, _ = a.shape
    sb, sh, sq, _ = a.stride()
    key_span = key_span.to(torch.int32).contiguous()
    sumsq, mass = torch.empty(n, b, q), torch.empty(n, b, q)
    workers = max(1, torch.get_num_threads())
    list(_pool(workers).map(lambda r: lib.row_stats(a.data_ptr(), sb, sh, sq, b, q, key_span.data_ptr(), r[0], r[1],
                                                    sumsq.data_ptr(), mass.data_ptr()), _split(n, workers)))
    return sumsq, mass


def js_pair_sums(lib: ctypes.CDLL, a: torch.Tensor, w: torch.Tensor, key_span: torch.Tensor, ii: torch.Tensor,
                 jj: torch.Tensor, query_block: int = 16) -> torch.Tensor:
    """sum_q w[b,q] * sqrt(JS(a[b,ii[p],q], a[b,jj[p],q])) per pair and sequence: [pairs, batch] float64.

    a: [batch, N, q, k] float32 on the CPU, keys contiguous, any other strides;
    w: [batch, q]; key_span: [batch, 2], the key range holding every real key;
    ii, jj: [pairs]. Entropies are computed here with the kernel's own log, so that
    identical heads cancel. The pairs are split evenly over torch's intra-op thread
    count; each Python thread runs the C loop with the GIL released.
    """
    _check(a)
    b, n, q, _ = a.shape
    sb, sh, sq, _ = a.stride()
    w, key_span = w.float().contiguous(), key_span.to(torch.int32).contiguous()
    ii, jj = ii.to(torch.int32).contiguous(), jj.to(torch.int32).contiguous()
    workers = max(1, torch.get_num_threads())
    pool = _pool(workers)
    h = torch.empty(n, b, q)  # [N, batch, q] row entropies, bits
    out = torch.zeros(len(ii), b, dtype=torch.float64)  # [pairs, batch]
    list(pool.map(lambda r: lib.row_entropies(a.data_ptr(), sb, sh, sq, b, q, key_span.data_ptr(), w.data_ptr(),
                                              r[0], r[1], h.data_ptr()), _split(n, workers)))
    list(pool.map(lambda r: lib.js_pairs(a.data_ptr(), sb, sh, sq, b, q, key_span.data_ptr(), w.data_ptr(),
                                         h.data_ptr(), ii.data_ptr(), jj.data_ptr(), r[0], r[1], query_block,
                                         out.data_ptr()), _split(len(ii), workers)))
    return out


def gram_sums(lib: ctypes.CDLL, a: torch.Tensor, key_span: torch.Tensor, scales: list[torch.Tensor],
              use_sqrt: list[bool], query_block: int = 16) -> list[torch.Tensor]:
    """Per metric m and sequence b, the Gram matrix of scaled rows (see heads_kernel.c):
    G[b,i,j] = sum_q s_m[b,i,q] s_m[b,j,q] <f(a[b,i,q]), f(a[b,j,q])>, f = sqrt where
    use_sqrt[m]: a list of [batch, N, N] float64, symmetric.

    a: [batch, N, q, k] float32 on the CPU, keys contiguous, any other strides;
    scales: [N, batch, q] each (0 skips a row). Sequences are split over torch's
    intra-op thread count, each thread with its own panel and Gram scratch.
    """
    _check(a)
    b, n, q, _ = a.shape
    sb, sh, sq, _ = a.stride()
    key_span = key_span.to(torch.int32).contiguous()
    per_row = [s.float().contiguous() for s in scales]  # [N, batch, q]
    outs = [torch.zeros(b, n, n, dtype=torch.float64) for _ in scales]
    nm = len(scales)
    scale_ptrs = (ctypes.c_void_p * nm)(*(t.data_ptr() for t in per_row))
    out_ptrs = (ctypes.c_void_p * nm)(*(t.data_ptr() for t in outs))
    flags = torch.tensor([int(x) for x in use_sqrt], dtype=torch.int32)
    npad = (n + 3) // 4 * 4
    kpad = (int((key_span[:, 1] - key_span[:, 0]).max().clamp_min(0)) + 15) // 16 * 16
    workers = max(1, min(torch.get_num_threads(), b))

    def run(r: tuple[int, int]) -> None:
        panel = torch.empty(npad * query_block * max(kpad, 16))
        g = torch.empty(nm * npad * npad)
        lib.gram_sums(a.data_ptr(), sb, sh, sq, b, n, q, key_span.data_ptr(), nm, scale_ptrs, flags.data_ptr(),
                      r[0], r[1], query_block, panel.data_ptr(), g.data_ptr(), out_ptrs)

    list(_pool(max(1, torch.get_num_threads())).map(run, _split(b, workers)))
    for g in outs:  # the kernel fills j >= i
        upper = g.triu()
        g.copy_(upper + upper.transpose(1, 2) - torch.diag_embed(upper.diagonal(dim1=1, dim2=2)))
    return outs
