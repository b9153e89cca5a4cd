"""What a recipe run measured: one typed result per stage, and the run's metrics.json.

``RunMetrics.to_dict()`` is metrics.json's content; ``RunMetrics.from_dict`` reads it
back, so the report and the CLI read typed fields instead of string keys. A metrics.json
written by an older compressor reads as long as it has the fields the report needs
(newer fields default to None: "not recorded"); one that lacks a needed field fails
with a one-line ``MetricsError`` naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CompressorError

# int8 graphs are evaluated one example per batch: dynamic quantization scales the
# activations of each batch (padding included), so batched int8 figures depend on the
# batch size and on which examples share a batch.
# perplexity windows of int8 graphs: the same reason, one window per batch
INT8_WINDOW_BATCHING = ("one window per batch: dynamic int8 scales activations per batch, so batched figures would "
                        "depend on the batch size")
INT8_BATCHING = ("one example per batch: dynamic int8 scales activations per batch (padding included), "
                 "so batched figures would depend on the batch size")


class MetricsError(CompressorError):
    """A metrics.json that cannot be read as a run's metrics."""


def _take(cls, d: Any, where: str, **nested):
    """cls(**d) for the dataclass ``cls``: required fields must be present, fields with
    defaults may be missing (an older run), unknown keys are ignored (a newer run).
    ``nested`` maps a field name to a function that builds its value from the raw one."""
    if not isinstance(d, dict):
        raise MetricsError(f"metrics.json field '{where}' must be a JSON object, got {type(d).__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = nested[f.name](v, f"{where}.{f.name}") if f.name in nested and v is not None else v
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MetricsError(f"metrics.json lacks '{where}.{f.name}' (written by an older compressor?); "
                               f"rerun the recipe to get a report")
    return cls(**kwargs)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class _Record:
    """A stage's record: read with ``_take`` (``WHERE`` names it in errors), written as
    its fields; records whose metrics.json layout differs override ``to_dict``."""

    WHERE = "record"

    @classmethod
    def from_dict(cls, d: Any, where: str | None = None):
        return _take(cls, d, where or cls.WHERE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SizeSummary(_Record):
    """A model's size and shape (models.model_summary + encoder FLOPs)."""

    WHERE = "size"

    architecture: str
    model_type: str
    parameters: int
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    encoder_flops_per_token: int
    head_dim: int | None = None
    hidden_size: int | None = None

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self))


@dataclass
class BudgetSummary(_Record):
    WHERE = "budget"

    asked: dict[str, float]
    achieved: dict[str, float]
    within_one_unit: bool
    split: str

@dataclass
class FinetuneSummary(_Record):
    """One fine-tuning stage: what it did (steps, loss) and how (config, data, teacher)."""

    WHERE = "finetune"

    steps: int
    examples_seen: int
    seconds: float
    final_loss: float
    distilled: bool
    diversity: float | None = None
    # recorded since the report states the fine-tuning details (None: an older run)
    task: str | None = None
    train_examples: int | None = None
    config: dict | None = None  # recipe.FinetuneConfig as a dict: lr, batch_size, max_steps, seed, distill ...
    teacher: str | None = None
    saved_as: str | None = None  # folder in the output holding this stage's model (base_model)


@dataclass
class EvalSummary(_Record):
    """One model scored on the task (evaluate.glue.EvalResult + how it was batched)."""

    WHERE = "evaluation"

    task: str
    split: str
    backend: str
    examples: int
    metrics: dict[str, float]
    main_metric: str
    model: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)
    main: float | None = None
    batch_size: int | None = None  # examples per batch (None: an older run)
    batching: str | None = None  # why batch_size differs from evaluate.batch_size, when it does


@dataclass
class PerplexitySummary(_Record):
    """One causal LM scored by perplexity on a text file (evaluate.perplexity.PerplexityResult
    + why its batching differs, when it does)."""

    WHERE = "perplexity"

    task: str
    source: str
    backend: str
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, nats
    tokens: int
    scored_tokens: int
    windows: int
    max_length: int
    stride: int
    batch_size: int
    model: str = ""
    file_tokens: int | None = None
    method: str = ""
    seconds: float | None = None
    batching: str | None = None


@dataclass
class ExportSummary(_Record):
    """export.onnx.ExportResult as recorded in metrics.json."""

    WHERE = "export"

    task: str
    files: dict[str, str]
    parity: dict[str, float]
    atol: float
    exporter: str = ""
    heads_per_layer: list[int] = field(default_factory=list)
    fused_attention: list[int | None] = field(default_factory=list)
    quantized_cosine: float | None = None
    notes: list[str] = field(default_factory=list)
    cache: bool = False  # the graph takes and returns a key/value cache (absent: an older run, without)
    cache_heads: list[int] = field(default_factory=list)
    decode_parity: dict[str, float] = field(default_factory=dict)  # per file, over decoding steps with the past

    @property
    def compared_output(self) -> str:
        """What parity compares: logits for a classifier, token embeddings otherwise."""
        return "logits" if self.task == "text-classification" else "output vectors (real tokens)"

    def is_quantized(self, file: str) -> bool:
        return self.files.get("quantized") == file or "quantized" in file


@dataclass
class LatencySummary(_Record):
    WHERE = "latency"

    batch: int
    seq: int
    runs: int
    models: dict[str, dict[str, float]]  # name -> {median_ms, p90_ms}

    @classmethod
    def from_dict(cls, d: Any, where: str | None = None) -> LatencySummary:
        where = where or cls.WHERE
        if not isinstance(d, dict):
            raise MetricsError(f"metrics.json field '{where}' must be a JSON object")
        models = {k: v for k, v in d.items() if isinstance(v, dict)}
        return _take(cls, {**{k: v for k, v in d.items() if not isinstance(v, dict)}, "models": models}, where)

    def to_dict(self) -> dict:
        # flat, as metrics.json has always had it: {"batch", "seq", "runs", "original": {...}, ...}
        return {"batch": self.batch, "seq": self.seq, "runs": self.runs, **self.models}


@dataclass
class ReconstructSummary(_Record):
    """reconstruct.ReconstructResult as recorded in metrics.json (layers as dicts)."""

    WHERE = "reconstruct"

    tokens: int
    ridge: float
    kinds: str
    seconds: float
    layers: list[dict]
    error: str = ""
    sequences: int | None = None

    def to_dict(self) -> dict:
        return {"error": self.error, "tokens": self.tokens, "sequences": self.sequences, "ridge": self.ridge,
                "kinds": self.kinds, "seconds": self.seconds, "layers": self.layers}


def _map(of):
    def build(d, where):
        if not isinstance(d, dict):
            raise MetricsError(f"metrics.json field '{where}' must be a JSON object")
        return {k: of.from_dict(v, f"{where}.{k}") for k, v in d.items()}

    return build


@dataclass
class RunMetrics:
    """metrics.json: the measured result of every stage of one recipe run."""

    recipe: str
    model: str
    flops_seq_len: int
    before: SizeSummary
    after: SizeSummary
    parameters_kept_share: float
    flops_kept_share: float
    heads_removed: int
    neurons_removed: int
    budget: BudgetSummary | None = None
    reconstruct: ReconstructSummary | None = None
    finetune: dict[str, FinetuneSummary] | None = None
    export: ExportSummary | None = None
    evaluation: dict[str, EvalSummary] | None = None
    latency: LatencySummary | None = None
    # task wikitext: perplexity of the original, the pruned model and its ONNX graphs
    perplexity: dict[str, PerplexitySummary] | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> RunMetrics:
        return _take(
            cls, d, "metrics",
            before=SizeSummary.from_dict, after=SizeSummary.from_dict, budget=BudgetSummary.from_dict,
            reconstruct=ReconstructSummary.from_dict, finetune=_map(FinetuneSummary), export=ExportSummary.from_dict,
            evaluation=_map(EvalSummary), latency=LatencySummary.from_dict, perplexity=_map(PerplexitySummary),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunMetrics:
        from .files import load_json

        p = Path(path)
        if not p.is_file():
            raise MetricsError(f"metrics file not found: {p}")
        return cls.from_dict(load_json(p, "metrics file", MetricsError))

    def to_dict(self) -> dict:
        out: dict = {
            "recipe": self.recipe, "model": self.model, "flops_seq_len": self.flops_seq_len,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "parameters_kept_share": self.parameters_kept_share, "flops_kept_share": self.flops_kept_share,
            "heads_removed": self.heads_removed, "neurons_removed": self.neurons_removed,
        }
        if self.budget is not None:
            out["budget"] = self.budget.to_dict()
        if self.reconstruct is not None:
            out["reconstruct"] = self.reconstruct.to_dict()
        if self.finetune:
            out["finetune"] = {k: v.to_dict() for k, v in self.finetune.items()}
        if self.export is not None:
            out["export"] = self.export.to_dict()
        if self.evaluation is not None:
            out["evaluation"] = {k: v.to_dict() for k, v in self.evaluation.items()}
        if self.latency is not None:
            out["latency"] = self.latency.to_dict()
        if self.perplexity is not None:
            out["perplexity"] = {k: v.to_dict() for k, v in self.perplexity.items()}
        out["stage_seconds"] = dict(self.stage_seconds)
        return out
