"""Latency: PyTorch vs ONNX Runtime fp32 (optimized) vs ONNX Runtime int8.

Each measurement: ``warmup`` untimed calls, then ``runs`` timed calls on the same
random full-length batch; median and 90th percentile in milliseconds. Backends and
models are measured in the same process, one after another, so ratios compare like
with like.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..arch.base import adapter_for
from ..errors import CompressorError
from ..export.onnx import OPTIMIZED, QUANTIZED, RAW, require_ort


@dataclass
class Timing:
    model: str
    backend: str
    batch: int
    seq: int
    median_ms: float
    p90_ms: float
    runs: int

    def to_json(self) -> dict:
        return asdict(self)


# Untimed pause before each timed call. ONNX Runtime's and OpenMP's worker threads
# spin for a while after a call; without a pause the next runner shares the cores with
# them (measured here: PyTorch SDPA 28 ms alone, 67 ms right after an ORT call).
PAUSE_S = 0.05


def measure(
    runners: dict[str, Callable[[], object]], warmup: int, runs: int, pause_s: float = PAUSE_S
) -> dict[str, tuple[float, float]]:
    """Median and p90 (ms) of each runner, timed round-robin: one call of each per round.

    Interleaving matters on a shared or throttling machine: drift then hits every
    runner alike, so ratios between them stay meaningful.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            time.sleep(pause_s)
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: (float(np.median(v)), float(np.percentile(v, 90))) for k, v in times.items()}


def random_batch(vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab_size > 2000 else 1, vocab_size, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def torch_runner(model: nn.Module, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    adapter = adapter_for(model)
    # the feeds the architecture's forward takes (token_type_ids: BERT only)
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items() if adapter.spec.takes_input(k)}
    extra = adapter.forward_kwargs()

    @torch.inference_mode()
    def run():
        return model(**inputs, **extra)

    return run


def ort_session(path: Path, threads: int | None = None, spin: bool | None = None):
    """An ORT session for timing. ``threads``: intra-op threads (None: ORT's default, one
    per physical core). ``spin``: whether idle intra-op workers busy-wait for the next
    parallel section (None: ORT's default, on). On a CPU shared with other busy
    processes, spinning makes every operator pay a wait that does not shrink with its
    work, so a pruned graph (same operators, fewer FLOPs) gains less than its FLOPs
    (README, "Why latency lags FLOPs at low budgets")."""
    ort = require_ort()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise CompressorError(f"threads must be >= 1; got {threads}")
        opts.intra_op_num_threads = threads
    if spin is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # ONNX Runtime raises its own types for a damaged graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompressorError(f"ONNX graph {path} cannot be loaded (corrupted or truncated?): {first}") from None


def ort_runner(session, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """Runs the graph on ``feeds``; a graph with a key/value cache gets an empty past, so
    it times the same full-sequence forward as a graph without one."""
    from ..export.kv_cache import empty_past, graph_past_shapes

    names = [i.name for i in session.get_inputs()]
    shapes = graph_past_shapes(session)
    past = empty_past(shapes, feeds["input_ids"].shape[0]) if shapes else {}
    inputs = {}
    for n in names:
        if n in past:
            inputs[n] = past[n]
        elif n == "position_ids":
            inputs[n] = np.broadcast_to(np.arange(feeds["input_ids"].shape[1]), feeds["input_ids"].shape).copy()
        elif n in feeds:
            inputs[n] = feeds[n]
        else:
            raise CompressorError(f"the ONNX graph wants input '{n}', which the benchmark cannot fill")
    return lambda: session.run(None, inputs)


def onnx_files(onnx_dir: Path) -> dict[str, Path]:
    """Backends available in an export folder: ORT fp32 (optimized if present) and int8."""
    out = {}
    fp32 = onnx_dir / OPTIMIZED if (onnx_dir / OPTIMIZED).is_file() else onnx_dir / RAW
    if fp32.is_file():
        out["ort-fp32"] = fp32
    if (onnx_dir / QUANTIZED).is_file():
        out["ort-int8"] = onnx_dir / QUANTIZED
    if not out:
        raise CompressorError(f"no ONNX model in {onnx_dir} (expected {OPTIMIZED}, {RAW} or {QUANTIZED})")
    return out


@dataclass
class Subject:
    """One model to time: a PyTorch model and/or an export folder."""

    label: str
    model: nn.Module | None = None
    onnx_dir: Path | None = None
    torch_backend: str = "pytorch"


def benchmark(
    subjects: list[Subject],
    shapes: Iterable[tuple[int, int]],
    runs: int = 20,
    warmup: int = 3,
    progress: Callable[[str], None] | None = None,
    threads: int | None = None,
    spin: bool | None = None,
) -> list[Timing]:
    """Time every subject x backend at every (batch, seq), interleaved per shape.
    ``threads`` and ``spin`` set the ORT sessions (see ``ort_session``)."""
    sessions = {
        (s.label, name): ort_session(path, threads, spin)
        for s in subjects
        if s.onnx_dir is not None
        for name, path in onnx_files(s.onnx_dir).items()
    }
    vocab = _vocab_size(subjects[0])
    rows: list[Timing] = []
    for batch, seq in shapes:
        feeds = random_batch(vocab, batch, seq)
        runners: dict[tuple[str, str], Callable[[], object]] = {}
        for s in subjects:
            if s.model is not None:
                runners[(s.label, s.torch_backend)] = torch_runner(s.model, feeds)
            for (label, name), sess in sessions.items():
                if label == s.label:
                    runners[(label, name)] = ort_runner(sess, feeds)
        for (label, backend), (med, p90) in measure(runners, warmup, runs).items():
            rows.append(Timing(label, backend, batch, seq, med, p90, runs))
            if progress:
                progress(f"{label:>14s} {backend:>14s} batch {batch:>2d} x {seq:>3d}: "
                         f"median {med:8.2f} ms  p90 {p90:8.2f} ms")
    return rows


def _vocab_size(subject: Subject) -> int:
    if subject.model is not None:
        return int(subject.model.config.vocab_size)
    from ..files import load_json

    config = load_json(subject.onnx_dir / "config.json", "model config")
    if not isinstance(config, dict) or not isinstance(config.get("vocab_size"), int):
        raise CompressorError(f"model config {subject.onnx_dir / 'config.json'} has no integer vocab_size")
    return int(config["vocab_size"])
