"""Export a (pruned) model to ONNX, check it against PyTorch, optimize and quantize it.

Exporter: optimum's ``onnx_export_from_model``. It takes the model *instance*, so the
per-layer shapes our surgery made are traced as they are (``main_export`` would reload
from config.json with stock shapes and fail), and it writes config and tokenizer files
in the layout optimum's ORTModel classes load. One exception, measured with optimum
2.1 / optimum-onnx 0.1: GPT-2 *with* a KV cache cannot be exported after pruning,
because optimum builds the past-key-value inputs from the global ``n_head``; GPT-2 is
exported without the cache (``text-generation`` logits, or ``feature-extraction``).

Optimization: ONNX Runtime's transformer optimizer with ``num_heads=0``, which makes it
read each layer's head count from that layer's reshape constants, so pruned layers are
fused into ``Attention`` nodes at their own head counts. ``fused_attention`` in
export.json lists what it fused per layer; a layer with no heads has no attention.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..arch.base import adapter_for
from ..errors import CompressorError

RAW, OPTIMIZED, QUANTIZED = "model.onnx", "model_optimized.onnx", "model_quantized.onnx"
DEFAULT_ATOL = 1e-4
QUANTIZE_CHOICES = ("int8",)


class ParityError(CompressorError):
    """ONNX outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    task: str
    exporter: str
    files: dict[str, str]
    parity: dict[str, float]  # max |onnx - torch| per file
    atol: float
    heads_per_layer: list[int]
    fused_attention: list[int | None] = field(default_factory=list)  # per layer: num_heads fused, None if not
    quantized_cosine: float | None = None  # int8 vs PyTorch: mean cosine of output vectors (real tokens)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def infer_task(model: nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith(("LMHeadModel", "ForCausalLM")):
        return "text-generation"
    if name.endswith("Model"):
        return "feature-extraction"
    raise CompressorError(
        f"cannot export {name}: supported heads are the base model, *ForSequenceClassification and GPT-2's LM head"
    )


def validation_inputs(model: nn.Module, tokenizer, input_names: list[str]) -> dict[str, np.ndarray]:
    """A small padded batch of uneven lengths, so padding is exercised too."""
    if tokenizer is not None:
        if tokenizer.pad_token is None:  # GPT-2
            tokenizer.pad_token = tokenizer.eos_token
        texts = ["Pruning is worth nothing if the graph is not faster.", "A short one.", "Heads , neurons and layers"]
        enc = tokenizer(texts, padding=True, return_tensors="np")
        feeds = {k: enc[k].astype(np.int64) for k in input_names if k in enc}
    else:
        g = np.random.default_rng(0)
        ids = g.integers(0, model.config.vocab_size, size=(3, 12))
        mask = np.ones_like(ids)
        mask[1, 7:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask}
    return complete_feeds(feeds, input_names)


def complete_feeds(feeds: dict[str, np.ndarray], input_names: list[str]) -> dict[str, np.ndarray]:
    """The graph's inputs from tokenizer output: token types default to 0 and position
    ids count real tokens (left padding stays at 0)."""
    feeds = dict(feeds)
    for k in input_names:
        if k == "token_type_ids" and k not in feeds:
            feeds[k] = np.zeros_like(feeds["input_ids"])
        if k == "position_ids" and k not in feeds:
            mask = feeds["attention_mask"]
            feeds[k] = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    missing = [k for k in input_names if k not in feeds]
    if missing:
        raise CompressorError(f"the exported graph wants inputs {missing} that compressor cannot fill")
    return {k: feeds[k] for k in input_names}


def require_ort():
    try:
        import onnxruntime
    except ImportError:
        raise CompressorError(
            "ONNX Runtime is not installed: pip install 'compressor[onnx]' (or [gpu] on a CUDA machine; not both)"
        ) from None
    return onnxruntime


def _session(path: Path):
    ort = require_ort()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare(model: nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(largest |ONNX - PyTorch|, mean cosine of their output vectors) over the first
    output, at real (unpadded) tokens only: padded positions hold values no consumer
    reads, and exporters may differ there."""
    sess = _session(path)
    onnx_out = sess.run(None, feeds)[0]
    torch_in = {k: torch.from_numpy(v) for k, v in feeds.items()}
    out = model(**torch_in, **adapter_for(model).forward_kwargs())
    ref = (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).numpy()
    if onnx_out.shape != ref.shape:
        raise ParityError(f"ONNX output shape {onnx_out.shape} differs from PyTorch's {ref.shape}")
    if onnx_out.ndim == 3:  # [batch, seq, features]: keep real tokens
        real = feeds["attention_mask"].astype(bool)
        onnx_out, ref = onnx_out[real], ref[real]
    cos = (onnx_out * ref).sum(-1) / (np.linalg.norm(onnx_out, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
    return float(np.abs(onnx_out - ref).max()), float(cos.mean())


def fused_attention_heads(path: Path) -> list[int]:
    """num_heads of each fused Attention node, in graph (= layer) order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in graph.node
        if n.op_type in ("Attention", "MultiHeadAttention")
    ]
    return heads


def optimize(raw: Path, out: Path, model_type: str) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs a hidden-size notice per pruned layer; the result is checked
    # by fused_attention_heads and by parity instead.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    logging.getLogger("fusion_attention").setLevel(logging.ERROR)
    opt = optimize_model(str(raw), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
    opt.save_model_to_file(str(out))


@contextlib.contextmanager
def _chdir(path: str):
    """contextlib.chdir, which Python 3.10 lacks."""
    import os

    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_int8(src: Path, out: Path) -> list[str]:
    """Dynamic int8 weights. quant_pre_process (shape inference) is tried first and
    skipped if it fails, as it can with "Incomplete symbolic shape inference" or on
    RoBERTa's position ids ("unsupported broadcast")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    notes = []
    source = src
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out.with_name("preprocessed.onnx").resolve()
        # On failure, ORT's symbolic shape inference dumps sym_shape_infer_temp.onnx and a
        # <uuid>.data file into the working directory; give it a scratch one.
        with tempfile.TemporaryDirectory() as scratch, _chdir(scratch):
            quant_pre_process(str(Path(src).resolve()), str(pre), skip_symbolic_shape=False)
        source = pre
    except Exception as e:  # any failure here only costs the pre-processing
        notes.append(f"quant_pre_process skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    # Without shape inference some MatMul outputs have no recorded type; all weights
    # here are float32, which DefaultTensorType tells the quantizer.
    import onnx

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    if source != src:
        source.unlink(missing_ok=True)
    return notes


def export_model(
    model: nn.Module,
    tokenizer,
    out_dir: Path,
    optimize_graph: bool = True,
    quantize: str | None = None,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
) -> ExportResult:
    """Write model.onnx (+ optimized, + int8) into ``out_dir`` (which must exist and be
    empty; callers write into a temporary folder and rename it). Raises ParityError
    when the fp32 graphs differ from PyTorch by more than ``atol``."""
    from optimum.exporters.onnx import onnx_export_from_model

    require_ort()
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise CompressorError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}; got {quantize!r}")
    adapter = adapter_for(model)
    task = infer_task(model)
    model = model.eval()
    kwargs = {"opset": opset} if opset else {}
    # optimum and transformers log notices during tracing (e.g. an optional
    # deduplication check); what matters is checked below by parity.
    loggers = [logging.getLogger(n) for n in ("transformers", "optimum")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        onnx_export_from_model(model, str(out_dir), task=task, do_validation=False, **kwargs)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    if tokenizer is not None and not (out_dir / "tokenizer_config.json").is_file():
        tokenizer.save_pretrained(out_dir)
    raw = out_dir / RAW
    input_names = [i.name for i in _session(raw).get_inputs()]
    feeds = validation_inputs(model, tokenizer, input_names)

    result = ExportResult(
        task=task, exporter="optimum.onnx_export_from_model", files={"raw": RAW}, parity={}, atol=atol,
        heads_per_layer=list(adapter.layout().heads_per_layer),
    )
    result.parity[RAW] = compare(model, raw, feeds)[0]
    if optimize_graph:
        optimize(raw, out_dir / OPTIMIZED, "gpt2" if adapter.spec.causal else "bert")
        result.files["optimized"] = OPTIMIZED
        result.parity[OPTIMIZED] = compare(model, out_dir / OPTIMIZED, feeds)[0]
        # graph order is layer order; layers without heads have no attention to fuse
        fused = iter(fused_attention_heads(out_dir / OPTIMIZED))
        result.fused_attention = [next(fused, None) if n > 0 else None for n in result.heads_per_layer]
        missing = [i for i, (n, f) in enumerate(zip(result.heads_per_layer, result.fused_attention, strict=True))
                   if n > 0 and f != n]
        if missing:
            result.notes.append(f"attention not fused at the layer's head count in layers {missing}")
    for name, diff in result.parity.items():
        if diff > atol:
            raise ParityError(f"ONNX parity failed for {name}: max |onnx - torch| = {diff:.3g} > atol {atol:g}")
    if quantize == "int8":
        src = out_dir / (OPTIMIZED if optimize_graph else RAW)
        result.notes += quantize_int8(src, out_dir / QUANTIZED)
        result.files["quantized"] = QUANTIZED
        # int8 cannot meet an fp32 tolerance; its difference is reported, and its
        # accuracy cost is what evaluation measures.
        result.parity[QUANTIZED], result.quantized_cosine = compare(model, out_dir / QUANTIZED, feeds)
    (out_dir / "export.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
