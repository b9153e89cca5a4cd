"""Native kernels, compiled on first use with the system's C compiler and loaded by ctypes.

One source so far (heads_kernel.c): the token-based distances between all pairs of
attention heads. Exact Jensen-Shannon with a fused, vectorized log (its pairwise mixture
entropy costs ~3x a forward pass in PyTorch, ~0.7x here), and cosine, Pearson and
Bhattacharyya as register-tiled Gram matrices that scale rows while copying cache-sized
panels instead of materializing scaled copies of the attention maps. Everything here is
optional: without a C compiler, or with COMPRESSOR_NATIVE=0, callers get None and use
their PyTorch path (same numbers within float32 rounding, tested), with one warning.
$CC picks the compiler.

Portability: the library is never built for "this CPU" (-march=native). It is built for
one of a few fixed instruction-set levels (ISA_LEVELS: x86-64 baseline SSE2, AVX2 + FMA,
AVX-512), chosen at run time as the best level the CPU reports, so a cached binary runs
on any CPU of its level and what the tests checked on one machine is the same code on
another. COMPRESSOR_NATIVE_ISA=baseline|avx2|avx512 forces a level (the tests run every
level the CPU has); a forced level the CPU lacks is refused with a warning.

Cache: ~/.cache/compressor/native (or $COMPRESSOR_CACHE/native), created private (0700)
and used only when it is owned by this user and writable by no one else. A library is
named by a hash of the source, the compiler's version, the flags and the level; it is
written under a temporary name with a SHA-256 sidecar, renamed into place (concurrent
first uses cannot load half a file), and its digest is checked before every load: a
file that does not match is rebuilt, never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("heads_kernel.c")
# -fopenmp-simd honours the kernel's `omp simd` reductions without linking an OpenMP
# runtime (torch brings its own, and two would oversubscribe the cores).
_COMMON = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC"]
# Instruction-set levels, best first: (name, compiler flags, CPU flags it needs from
# /proc/cpuinfo). 512-bit vectors measured 1.2x faster than gcc's 256-bit default on an
# AVX-512 Xeon. Only the named extensions are enabled, so a level runs on every CPU that
# reports its flags (no -march, which would also tune for and assume one CPU model).
_X86_LEVELS = (
    ("avx512", ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma",
                "-mprefer-vector-width=512"], {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"}),
    ("avx2", ["-mavx2", "-mfma"], {"avx2", "fma"}),
    ("baseline", [], set()),
)
_OTHER_LEVELS = (("baseline", [], set()),)  # e.g. aarch64: NEON is part of the base ISA
_lock = threading.Lock()
_state: dict[str, object] = {}


def isa_levels() -> tuple[tuple[str, list[str], set[str]], ...]:
    return _X86_LEVELS if platform.machine().lower() in ("x86_64", "amd64") else _OTHER_LEVELS


def _cpu_flags() -> set[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def supported_isas() -> list[str]:
    """The levels this CPU can run, best first ("baseline" always)."""
    flags = _cpu_flags()
    if flags is None:  # no /proc/cpuinfo: ask torch's own dispatcher what it found
        cap = torch.backends.cpu.get_cpu_capability().upper()
        flags = {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"} if "AVX512" in cap else (
            {"avx2", "fma"} if "AVX2" in cap else set())
    return [name for name, _, need in isa_levels() if need <= flags]


def selected_isa() -> str:
    """The level used: COMPRESSOR_NATIVE_ISA when set (and supported), else the best one."""
    have = supported_isas()
    forced = os.environ.get("COMPRESSOR_NATIVE_ISA", "").strip().lower()
    if not forced:
        return have[0]
    known = [name for name, _, _ in isa_levels()]
    if forced not in known:
        raise RuntimeError(f"COMPRESSOR_NATIVE_ISA={forced!r} is not a level of this architecture "
                           f"({', '.join(known)})")
    if forced not in have:
        raise RuntimeError(f"COMPRESSOR_NATIVE_ISA={forced} needs CPU features this CPU lacks "
                           f"(it supports {', '.join(have)})")
    return forced


def cache_dir() -> Path:
    root = os.environ.get("COMPRESSOR_CACHE")
    return Path(root) / "native" if root else Path.home() / ".cache" / "compressor" / "native"


def _private_dir() -> Path:
    """The cache folder, created 0700; refused (RuntimeError) unless it is a real folder
    owned by this user that nobody else can write to."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"kernel cache {d} is not a folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise RuntimeError(f"kernel cache {d} belongs to another user")
    if st.st_mode & 0o022:
        raise RuntimeError(f"kernel cache {d} is writable by other users (chmod 700 it)")
    if st.st_mode & 0o077:  # e.g. made by an older version under the umask: ours, so make it private
        os.chmod(d, 0o700)
    return d


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(target: Path) -> bool:
    """True when ``target`` exists, is a plain file and matches its SHA-256 sidecar."""
    sidecar = target.with_name(target.name + ".sha256")
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return False
        return sidecar.read_text().strip() == _digest(target)
    except (OSError, UnicodeDecodeError):
        return False


def _compile(compiler: str, level: str) -> Path:
    flags = next(f for name, f, _ in isa_levels() if name == level)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = _SOURCE.read_bytes()
    all_flags = [*_COMMON, *flags]
    key = hashlib.sha256(b"\0".join([source, " ".join(all_flags).encode(), version.encode(),
                                      platform.machine().encode(), level.encode()])).hexdigest()[:16]
    folder = _private_dir()
    target = folder / f"heads_kernel-{level}-{key}.so"
    if _verified(target):
        return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        run = subprocess.run([compiler, *all_flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True,
                             timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"{compiler} {' '.join(all_flags)}: "
                               f"{(run.stderr.strip().splitlines() or [str(run.returncode)])[-1]}")
        digest = _digest(Path(tmp))
        side_fd, side_tmp = tempfile.mkstemp(suffix=".sha256", dir=folder)
        with os.fdopen(side_fd, "w") as f:
            f.write(digest + "\n")
        os.replace(side_tmp, target.with_name(target.name + ".sha256"))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not _verified(target):  # replaced concurrently by a different build: refuse it
        raise RuntimeError(f"kernel {target} does not match its digest")
    return target


def _load(level: str) -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    lib = ctypes.CDLL(str(_compile(compiler, level)))
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
    """The compiled kernel for the selected instruction-set level, or None (disabled, or
    it could not be built: warned once per level)."""
    if os.environ.get("COMPRESSOR_NATIVE", "1") == "0":
        return None
    with _lock:
        try:
            level = selected_isa()
        except RuntimeError as err:
            if "lib:bad-isa" not in _state:
                _state["lib:bad-isa"] = None
                warnings.warn(f"native head-distance kernel unavailable ({err}); using the PyTorch path",
                              RuntimeWarning, stacklevel=3)
            return None
        name = f"lib:{level}"
        if name not in _state:
            try:
                _state[name] = _load(level)
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state[name] = None
                warnings.warn(f"native head-distance kernel unavailable ({err}); using the PyTorch "
                              "path (Jensen-Shannon about 3x slower)", RuntimeWarning, stacklevel=3)
        return _state[name]  # type: ignore[return-value]


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
