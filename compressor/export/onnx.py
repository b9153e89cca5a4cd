"""Export a (pruned) model to ONNX, check it against PyTorch, optimize and quantize it.

Exporter: compressor's own, ``torch.onnx.export`` with the TorchScript tracer
(``dynamo=False``), on the model *instance*, so the per-layer shapes our surgery made
are traced as they are. It lays the folder out as optimum's ``onnx_export_from_model``
does (the same file, input and output names, dynamic ``batch_size``/``sequence_length``
axes, config.json beside it), so optimum's ORTModel classes load it. optimum's exporter
(optimum-onnx) only installs with transformers < 4.58; measured with transformers
4.57.6, both exporters give graphs with the same node counts, the same parity and the
same fused Attention nodes for BERT, RoBERTa, a BERT classifier and GPT-2, so ours is
the default under every transformers, and ``exporter="optimum"`` (or ``"auto"``: optimum
when it imports) remains for comparison. A decoder with its LM head (GPT-2, the LLaMA
families) is exported with a key/value cache at per-layer head counts by default
(export/kv_cache.py; optimum builds past-key-value inputs from one global head count,
which a pruned model does not have); ``cache=False`` gives the plain ``text-generation``
logits graph. The cached graph is written with its shape arithmetic folded
(export/shape_fold.py: each decoding step pays per node, whatever the model's width).

Optimization: ONNX Runtime's transformer optimizer with ``num_heads=0``, which makes it
read each layer's head count from that layer's reshape constants, so pruned layers are
fused into ``Attention`` nodes at their own head counts (transformers 5 writes -1 there;
``explicit_head_counts`` puts the count back). ``fused_attention`` in export.json lists
what it fused per layer; a layer with no heads has no attention.
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
from ..compat import quiet_transformers, traceable_masks
from ..errors import CompressorError
from ..finite import check_finite

RAW, OPTIMIZED, QUANTIZED = "model.onnx", "model_optimized.onnx", "model_quantized.onnx"
DEFAULT_ATOL = 1e-4
QUANTIZE_CHOICES = ("int8",)
# optimum's default opset for these architectures (optimum 2.1), kept for our exporter
DEFAULT_OPSET = 18
OPTIMUM_EXPORTER, TORCH_EXPORTER = "optimum.onnx_export_from_model", "torch.onnx.export(dynamo=False)"
EXPORTER_CHOICES = ("torch", "optimum", "auto")


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
    # the graph takes and returns a key/value cache (export/kv_cache.py): one graph for
    # the prompt (a past of length 0) and every decoding step
    cache: bool = False
    cache_heads: list[int] = field(default_factory=list)  # key/value heads of each layer's cache entry
    # max |onnx - torch| of the logits over kv_cache.DECODE_STEPS decoding steps with the past, per file
    decode_parity: dict[str, float] = field(default_factory=dict)

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
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own types for a damaged graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompressorError(f"ONNX graph {path} cannot be loaded (corrupted or truncated?): {first}") from None


@torch.no_grad()
def compare(model: nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(largest |ONNX - PyTorch|, mean cosine of their output vectors) over the first
    output, at real (unpadded) tokens only: padded positions hold values no consumer
    reads, and exporters may differ there."""
    sess = _session(path)
    # a graph may take fewer inputs than the model: with every head removed nothing
    # reads the attention mask, and the exporter drops it (the mask still marks real tokens below)
    onnx_out = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
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


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def fused_attention_heads(path: Path) -> list[int]:
    """num_heads of each fused Attention node, in graph (= layer) order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in graph.node
        if n.op_type in ("Attention", "MultiHeadAttention", "GroupQueryAttention")
    ]
    return heads


class _NamedOutput(nn.Module):
    """Positional graph inputs -> the model's keyword inputs; returns the one output
    optimum's exporter would (``last_hidden_state`` or ``logits``)."""

    def __init__(self, model: nn.Module, input_names: list[str], output: str, forward_kwargs: dict) -> None:
        super().__init__()
        self.model, self.input_names, self.output, self.forward_kwargs = model, input_names, output, forward_kwargs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.input_names, inputs, strict=True)), **self.forward_kwargs, return_dict=True)
        return getattr(out, self.output)


@contextlib.contextmanager
def _eager_attention(model: nn.Module):
    """The eager attention implementation for the duration: its MatMul/Softmax pattern is
    what ONNX Runtime's optimizer fuses into Attention nodes (SDPA is traced as a
    different pattern)."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _export_torch_onnx(model: nn.Module, out_dir: Path, task: str, opset: int | None = None) -> None:
    """model.onnx with torch.onnx's TorchScript exporter, laid out as optimum's exporter
    lays it out: the same input names (the architecture's ``onnx_inputs``), output name
    (``last_hidden_state`` or ``logits``), dynamic ``batch_size``/``sequence_length``
    axes, and config.json (+ generation_config.json) beside it, so optimum's ORTModel
    classes load the folder. The per-layer shapes of a pruned model are traced as they are.

    TorchScript (``dynamo=False``), not torch 2.13's default dynamo exporter, which needs
    onnxscript and, measured on a pruned tiny BERT, took 12 s instead of 2 s and left
    every attention layer unfused by ONNX Runtime's optimizer."""
    adapter = adapter_for(model)
    input_names = list(adapter.spec.onnx_inputs)
    output = "last_hidden_state" if task == "feature-extraction" else "logits"
    # A padded dummy batch, so the traced graph keeps the general attention-mask path
    # (an all-ones mask may be skipped by transformers' mask builders).
    batch, seq = 2, 16
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.vocab_size), (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, seq // 2 :] = 0
    feeds = complete_feeds({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, input_names)
    args = tuple(torch.from_numpy(feeds[k]) for k in input_names)
    seq_axes = {0: "batch_size", 1: "sequence_length"}
    dynamic_axes = {k: seq_axes for k in input_names}
    dynamic_axes[output] = seq_axes if task != "text-classification" else {0: "batch_size"}
    wrapper = _NamedOutput(model, input_names, output, adapter.forward_kwargs()).eval()
    out_dir.mkdir(parents=True, exist_ok=True)  # as optimum's exporter does
    import warnings

    with _eager_attention(model), traceable_masks(), quiet_transformers(), warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about Python bools in transformers' mask code: those branches
        # are fixed for any padded batch, and parity checks the traced graph anyway.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(out_dir / RAW), input_names=input_names, output_names=[output],
            dynamic_axes=dynamic_axes, opset_version=opset or DEFAULT_OPSET, do_constant_folding=True,
            dynamo=False,
        )
    explicit_head_counts(out_dir / RAW)
    _save_configs(model, out_dir)


def _save_configs(model: nn.Module, out_dir: Path) -> None:
    """config.json (+ generation_config.json for a decoder) beside the graph, as optimum writes them."""
    with quiet_transformers():
        model.config.save_pretrained(out_dir)
        gen = getattr(model, "generation_config", None)
        if adapter_for(model).spec.causal and gen is not None:
            gen.save_pretrained(out_dir)


def _export_torch_onnx_cached(model: nn.Module, out_dir: Path, opset: int | None = None) -> list[str]:
    """model.onnx of a decoder with its key/value cache (export/kv_cache.py), with the
    eager attention (its pattern is what ONNX Runtime's optimizer knows) and the configs
    beside it; its shape arithmetic folded (export/shape_fold.py: a decoding step pays
    per node, whatever the model's width). Returns notes for export.json."""
    from .kv_cache import export_cached
    from .shape_fold import fold_shapes

    out_dir.mkdir(parents=True, exist_ok=True)
    with _eager_attention(model):
        export_cached(model, out_dir / RAW, opset or DEFAULT_OPSET)
    explicit_head_counts(out_dir / RAW)
    _save_configs(model, out_dir)
    with _quiet_loggers(*_SHAPE_LOGGERS):
        folded = fold_shapes(out_dir / RAW, out_dir / RAW)
    if folded is None:
        return ["shape arithmetic not folded: ONNX Runtime's symbolic shape inference failed on the graph"]
    return [f"shape arithmetic folded: {folded[0]} -> {folded[1]} computing nodes"]


def explicit_head_counts(path: Path) -> int:
    """Replace the ``-1`` head count in each layer's query/key/value reshape with the
    count itself; returns how many reshapes changed.

    transformers 5 splits heads with ``view(batch, seq, -1, head_dim)``, and ONNX
    Runtime's optimizer reads a layer's head count from that reshape's constants: with
    -1 there it fuses no Attention node unless given one global ``num_heads``, which a
    pruned model does not have. The count is the width of the projection feeding the
    reshape (its bias, or its weight's output axis) over head_dim, so the graph computes
    exactly what it did (-1 resolved to that same number).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        n = producer.get(name)
        if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
        return None

    def width(name: str) -> int | None:
        """Output features of the Add(bias) / MatMul(weight) that produced ``name``."""
        n = producer.get(name)
        if n is None or n.op_type not in ("Add", "MatMul"):
            return None
        for i in n.input:
            v = const(i)
            if v is not None and v.ndim in (1, 2):
                return int(v.shape[-1])
        return None

    changed = 0
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        concat = producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, head_dim, w = const(concat.input[2]), const(concat.input[3]), width(node.input[0])
        if heads is None or head_dim is None or heads.size != 1 or head_dim.size != 1 or w is None:
            continue
        d = int(head_dim.reshape(-1)[0])
        if int(heads.reshape(-1)[0]) != -1 or d <= 0 or w % d:
            continue
        name = f"{concat.name or concat.output[0]}/num_heads"
        graph.initializer.append(numpy_helper.from_array(np.array([w // d], dtype=np.int64), name))
        replaced.add(concat.input[2])
        concat.input[2] = name
        changed += 1
    if changed:
        # the -1 Constants no node reads any more (ORT would warn about each one on load)
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dangling = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in replaced - read]
        for n in dangling:
            graph.node.remove(n)
        onnx.save(model, str(path))
    return changed


def choose_exporter(requested: str = "torch") -> str:
    """``torch``: compressor's own exporter (the default: the same graphs as optimum's,
    under every transformers); ``optimum``: optimum's, an error where it is not
    installed; ``auto``: optimum's where it imports (transformers < 4.58), else ours."""
    from ..compat import optimum_exporter_available

    if requested not in EXPORTER_CHOICES:
        raise CompressorError(f"exporter must be one of {', '.join(EXPORTER_CHOICES)}; got {requested!r}")
    if requested == "optimum" and not optimum_exporter_available():
        raise CompressorError(
            "optimum's ONNX exporter is not available (optimum-onnx requires transformers<4.58); use exporter 'torch' or 'auto'"
        )
    if requested == "auto":
        return OPTIMUM_EXPORTER if optimum_exporter_available() else TORCH_EXPORTER
    return OPTIMUM_EXPORTER if requested == "optimum" else TORCH_EXPORTER


def _export_optimum(model: nn.Module, out_dir: Path, task: str, opset: int | None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    kwargs = {"opset": opset} if opset else {}
    # optimum and transformers log notices during tracing (e.g. an optional
    # deduplication check); what matters is checked by parity.
    loggers = [logging.getLogger(n) for n in ("transformers", "optimum")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        onnx_export_from_model(model, str(out_dir), task=task, do_validation=False, **kwargs)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def optimize(raw: Path, out: Path, model_type: str) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs a hidden-size notice per pruned layer; the result is checked
    # by fused_attention_heads and by parity instead.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    logging.getLogger("fusion_attention").setLevel(logging.ERROR)
    with _quiet_loggers(*_SHAPE_LOGGERS):
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
    with _quiet_loggers(*_SHAPE_LOGGERS):
        return _quantize_int8(src, out)


# ORT's shape inference logs under the module's own name (imported as a top-level module by
# the transformer optimizer, as onnxruntime.tools.* by the quantizer); its quantizer on the root logger
_SHAPE_LOGGERS = ("", "symbolic_shape_infer", "onnxruntime.tools.symbolic_shape_infer")


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Records below ERROR from these loggers dropped for the duration. ORT's quantizer
    warns on the root logger (a line per tensor whose type shape inference left open) and
    its shape inference per symbolic dimension it cannot compare (a cached graph's past +
    sequence lengths): the outcome is a note in export.json and the int8 figures, not
    stderr noise. A filter, not a level: the shape inference sets its logger's level itself."""
    loggers = [logging.getLogger(n) if n else logging.getLogger() for n in names]
    drop = logging.Filter()
    drop.filter = lambda record: record.levelno >= logging.ERROR
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def _quantize_int8(src: Path, out: Path) -> list[str]:
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
    exporter: str = "torch",
    cache: bool | None = None,
) -> ExportResult:
    """Write model.onnx (+ optimized, + int8) into ``out_dir`` (which must exist and be
    empty; callers write into a temporary folder and rename it). Raises ParityError
    when the fp32 graphs differ from PyTorch by more than ``atol``. ``exporter``: see
    ``choose_exporter``; export.json records which one wrote the graph. ``cache``: a
    graph with a key/value cache (export/kv_cache.py); None: with one for a decoder with
    its LM head, without one otherwise; True for any other model is an error saying why.
    A cached graph's parity covers the prompt and decoding steps with the past."""
    from .kv_cache import DECODE_STEPS, compare_cached, resolve_cache

    require_ort()
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise CompressorError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}; got {quantize!r}")
    if not atol >= 0 or atol == float("inf"):
        raise CompressorError(f"atol must be a finite number >= 0; got {atol!r}")
    adapter = adapter_for(model)
    task = infer_task(model)
    with_cache = resolve_cache(adapter, task, cache)
    used = choose_exporter(exporter)
    notes = []
    if with_cache and used == OPTIMUM_EXPORTER:
        # optimum builds cache inputs from one global head count, which a pruned decoder does not have
        if exporter == "auto":
            used = TORCH_EXPORTER
        elif cache:
            raise CompressorError("optimum's exporter builds cache inputs from one global head count, which a pruned "
                                  "decoder does not have; use exporter 'torch' or export without a cache")
        else:
            with_cache = False
            notes.append("optimum's exporter: exported without a key/value cache (use exporter 'torch' for one)")
    check_finite(model, "the model to export")
    model = model.eval()
    if used == OPTIMUM_EXPORTER:
        _export_optimum(model, out_dir, task, opset)
    elif with_cache:
        notes += _export_torch_onnx_cached(model, out_dir, opset)
    else:
        _export_torch_onnx(model, out_dir, task, opset)
    if tokenizer is not None and not (out_dir / "tokenizer_config.json").is_file():
        tokenizer.save_pretrained(out_dir)
    raw = out_dir / RAW
    if with_cache:
        feeds = validation_inputs(model, tokenizer, ["input_ids", "attention_mask"])

        def check(path: Path) -> tuple[float, float | None, float]:
            return compare_cached(model, _session(path), feeds["input_ids"], feeds["attention_mask"])
    else:
        graph_inputs = [i.name for i in _session(raw).get_inputs()]
        input_names = list(adapter.spec.onnx_inputs) + [n for n in graph_inputs if n not in adapter.spec.onnx_inputs]
        feeds = validation_inputs(model, tokenizer, input_names)

        def check(path: Path) -> tuple[float, float | None, float]:
            diff, cos = compare(model, path, feeds)
            return diff, None, cos

    result = ExportResult(
        task=task, exporter=used, files={"raw": RAW}, parity={}, atol=atol,
        heads_per_layer=list(adapter.layout().heads_per_layer), cache=with_cache,
        cache_heads=[h for h, _ in adapter.cache_shapes()] if with_cache else [], notes=notes,
    )

    def record(path: Path) -> float:
        diff, decode, cos = check(path)
        result.parity[path.name] = diff
        if decode is not None:
            result.decode_parity[path.name] = decode
        return cos

    record(raw)
    if with_cache and 0 in result.cache_heads:
        empty = [i for i, h in enumerate(result.cache_heads) if h == 0]
        result.notes.append(f"layers {empty} have no heads: their cache entries are [batch, 0, past, head_dim]")
    if adapter.spec.kv_cache is not None and task == "text-generation" and not with_cache and not notes:
        result.notes.append("exported without a key/value cache: each generated token recomputes the whole sequence")
    fusion = adapter.spec.ort_model_type  # the optimizer's name for this architecture's attention
    if optimize_graph and fusion is None:
        optimize_graph = False
        result.notes.append(f"no ONNX Runtime fusion is known for {adapter.spec.name}; the graph is not optimized")
    if optimize_graph:
        optimize(raw, out_dir / OPTIMIZED, fusion)
        result.files["optimized"] = OPTIMIZED
        record(out_dir / OPTIMIZED)
        # graph order is layer order; layers without heads have no attention to fuse
        fused = iter(fused_attention_heads(out_dir / OPTIMIZED))
        result.fused_attention = [next(fused, None) if n > 0 else None for n in result.heads_per_layer]
        missing = [i for i, (n, f) in enumerate(zip(result.heads_per_layer, result.fused_attention, strict=True))
                   if n > 0 and f != n]
        if missing:
            result.notes.append(f"attention not fused at the layer's head count in layers {missing}")
        if with_cache:  # what the fusions did to a cached graph (measured: GPT-2's LayerNorm/GELU, not attention)
            nodes = [_node_count(p) for p in (raw, out_dir / OPTIMIZED)]
            result.notes.append(f"cached graph through ONNX Runtime's '{fusion}' fusions: {nodes[0]} -> {nodes[1]} nodes")
    for what, figures in (("", result.parity), (f" over {DECODE_STEPS} decoding steps", result.decode_parity)):
        for name, diff in figures.items():
            if not diff <= atol:  # NaN differences fail too
                raise ParityError(f"ONNX parity failed for {name}{what}: max |onnx - torch| = {diff:.3g} "
                                  f"> atol {atol:g}")
    if quantize == "int8":
        src = out_dir / (OPTIMIZED if optimize_graph else RAW)
        result.notes += quantize_int8(src, out_dir / QUANTIZED)
        result.files["quantized"] = QUANTIZED
        # int8 cannot meet an fp32 tolerance; its difference is reported, and its
        # accuracy cost is what evaluation measures.
        result.quantized_cosine = record(out_dir / QUANTIZED)
    (out_dir / "export.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
