"""Scoring a model on a GLUE task: a PyTorch model or an ONNX graph, same metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..arch.base import adapter_for
from ..data.glue import GlueSplit, GlueTask, eval_splits, glue_task, load_glue  # noqa: F401  (eval_splits re-exported)
from ..errors import CompressorError, ModelLoadError
from ..progress import bar
from .metrics import glue_metrics, predictions


def encode(tokenizer, texts: list[tuple[str, ...]], max_length: int, tensors: str = "pt"):
    """Tokenize one or two texts per example, padded to the longest in the list."""
    if tokenizer is None:
        raise CompressorError("the model folder has no tokenizer; GLUE evaluation and fine-tuning need one")
    if tokenizer.pad_token is None:  # GPT-2
        tokenizer.pad_token = tokenizer.eos_token
    first = [t[0] for t in texts]
    second = [t[1] for t in texts] if len(texts[0]) > 1 else None
    return tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors=tensors)


class TorchClassifier:
    backend = "pytorch"

    def __init__(self, model: nn.Module, tokenizer, name: str = "pytorch"):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @property
    def num_labels(self) -> int | None:
        from ..task_head import head_labels

        return head_labels(self.model)

    @torch.no_grad()
    def logits(self, texts: list[tuple[str, ...]], max_length: int) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        enc = encode(self.tokenizer, texts, max_length)
        out = self.model(**{k: v.to(device) for k, v in enc.items()}, **adapter_for(self.model).forward_kwargs())
        self.model.train(was_training)
        return out.logits.float().cpu().numpy()


class OnnxClassifier:
    """An ONNX graph written by ``compress export`` from a model with a classification head."""

    backend = "onnxruntime"

    def __init__(self, path: Path, tokenizer):
        from ..export.onnx import _session

        self.path, self.tokenizer, self.name = Path(path), tokenizer, Path(path).name
        self.session = _session(self.path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "logits" not in outputs or len(outputs["logits"].shape) != 2:
            raise CompressorError(
                f"{self.path} outputs {', '.join(outputs)}, not classification logits: it was exported from a "
                f"model without a classification head; fine-tune first, then export"
            )
        width = outputs["logits"].shape[1]
        self._num_labels = width if isinstance(width, int) else None

    @property
    def num_labels(self) -> int | None:
        return self._num_labels

    def logits(self, texts: list[tuple[str, ...]], max_length: int) -> np.ndarray:
        from ..export.onnx import complete_feeds

        enc = encode(self.tokenizer, texts, max_length, tensors="np")
        feeds = complete_feeds({k: enc[k].astype(np.int64) for k in self.inputs if k in enc}, self.inputs)
        return self.session.run(["logits"], feeds)[0]


@dataclass
class EvalResult:
    task: str
    split: str
    model: str
    backend: str
    examples: int
    metrics: dict[str, float]
    main_metric: str
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def main(self) -> float:
        return self.metrics[self.main_metric]

    def to_json(self) -> dict:
        return asdict(self)


def _check_width(runner, task: GlueTask) -> None:
    n = runner.num_labels
    if runner.backend == "pytorch":
        from ..task_head import check_head

        check_head(runner.model, task)
    elif n is not None and n != task.num_labels:
        raise CompressorError(f"{runner.path} has {n} output(s); task {task.name} needs {task.num_labels}")


def score_split(runner, data: GlueSplit, batch_size: int = 64, max_length: int = 128,
                progress: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one split and the logits [examples, labels] in the split's order."""
    if data.labels is None:
        raise CompressorError(f"{data.source} has no labels; choose a split that does (train or dev)")
    _check_width(runner, data.task)
    # Length-sorted batches pad less; the order is restored below.
    lengths = np.array([sum(len(t) for t in x) for x in data.texts])
    order = np.argsort(-lengths, kind="stable")
    chunks = []
    starts = range(0, len(order), batch_size)
    for s in bar(starts, progress, desc=f"{data.task.name} {data.split} ({runner.name})", leave=False):
        idx = order[s : s + batch_size]
        chunks.append(runner.logits([data.texts[i] for i in idx], max_length))
    logits = np.empty((len(order),) + chunks[0].shape[1:], dtype=np.float32)
    logits[order] = np.concatenate(chunks)
    return glue_metrics(data.task, predictions(data.task, logits), data.labels), logits


def score_splits(runner, splits: list[GlueSplit], batch_size: int = 64, max_length: int = 128,
                 progress: bool = False) -> EvalResult:
    """Metrics over one or more splits of a task; with several (MNLI), names get the
    split as suffix: accuracy_matched, accuracy_mismatched."""
    metrics: dict[str, float] = {}

    def suffix(sp: GlueSplit) -> str:
        return "" if len(splits) == 1 else "_" + sp.split.removeprefix("dev_")

    for sp in splits:
        m, _ = score_split(runner, sp, batch_size, max_length, progress)
        metrics.update({k + suffix(sp): v for k, v in m.items()})
    task = splits[0].task
    return EvalResult(task.name, "+".join(sp.split for sp in splits), getattr(runner, "name", ""), runner.backend,
                      sum(len(sp) for sp in splits), metrics, task.main_metric + suffix(splits[0]),
                      ", ".join(sp.source for sp in splits))


def evaluate_glue(runner, task_name: str, data_dir: str | None, split: str = "dev", batch_size: int = 64,
                  max_length: int = 128, limit: int | None = None, progress: bool = False) -> EvalResult:
    """Load a task's labelled split(s) and score a runner on them."""
    return score_splits(runner, eval_splits(task_name, data_dir, split, limit), batch_size, max_length, progress)


def onnx_config(folder: Path):
    """What an exported folder's config.json says about positions (model_type,
    max_position_embeddings, pad_token_id), read as plain JSON; None when unreadable (the
    graph itself then fails on overlong input)."""
    import json
    from types import SimpleNamespace

    try:
        d = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return SimpleNamespace(model_type=d["model_type"], pad_token_id=d.get("pad_token_id"),
                               max_position_embeddings=int(d.get("max_position_embeddings", d.get("n_positions"))))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def runner_max_length(runner, max_length: int | None, what: str = "max_length") -> int:
    """The evaluation length for a runner's model: ``max_length`` if the model has that
    many positions (an error naming both numbers otherwise); None: 128 or fewer. An ONNX
    graph's positions come from the config.json that export writes beside it."""
    from ..arch.base import check_max_length

    config = getattr(getattr(runner, "model", None), "config", None)
    if config is None and getattr(runner, "path", None) is not None:
        config = onnx_config(Path(runner.path).parent)
    if config is None:
        return 128 if max_length is None else max_length
    try:
        return check_max_length(config, max_length, what)
    except ModelLoadError:  # an architecture compressor does not know: keep the length asked for
        return 128 if max_length is None else max_length


def runner_for(path_or_name: str, attn_implementation: str | None = None):
    """A PyTorch runner for a model folder/name, or an ONNX runner for a .onnx file or a
    folder written by ``compress export`` (its model.onnx)."""
    from ..export.onnx import RAW
    from ..models import load_model, load_tokenizer

    p = Path(path_or_name).expanduser()
    onnx_file = p if p.suffix == ".onnx" else p / RAW if (p / RAW).is_file() else None
    if onnx_file is not None:
        if not onnx_file.is_file():
            raise CompressorError(f"ONNX file not found: {onnx_file}")
        return OnnxClassifier(onnx_file, load_tokenizer(str(onnx_file.parent)))
    model = load_model(path_or_name, attn_implementation=attn_implementation)
    return TorchClassifier(model, load_tokenizer(path_or_name), name=str(path_or_name))
