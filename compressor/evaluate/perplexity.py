"""Perplexity of a causal language model on a plain-text file (WikiText-2's test.txt).

Method (Hugging Face's "Perplexity of fixed-length models" guide, sliding window):

- The whole file is one token stream: its text as the file has it (lines, blank lines
  and WikiText's ``= Heading =`` lines included, newlines as the tokenizer treats them),
  tokenized once without special tokens, after the tokens the tokenizer puts before a
  text (LLaMA's BOS, the MiniLM tokenizer's [CLS]; none for GPT-2), which come once, at
  the start of the stream. ``limit`` keeps the first N tokens of that stream.
- Windows of ``max_length`` tokens start every ``stride`` tokens (the last one ends at
  the end of the stream). In each window only the tokens not scored by an earlier window
  are scored, each from everything before it in the window, so every token but the first
  of the stream is predicted exactly once, with at least ``max_length - stride`` tokens
  of context (fewer only in the first window). ``stride == max_length`` gives
  non-overlapping windows (each window's first token is then not scored).
- Perplexity = exp(total negative log-likelihood / scored tokens): the token-weighted
  mean NLL, in nats, over every scored token (not a mean of per-window means).

Windows of one batch have the same length (the shorter last window gets a batch of its
own), so no window is padded. The model sees ``attention_mask`` of ones and no KV cache (an ONNX graph with one gets an empty past).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CompressorError
from ..recipe import PERPLEXITY_TASKS, is_perplexity_task  # re-exported; defined torch-free there

METHOD = "sliding window (Hugging Face perplexity guide): every token after the first scored once"
DEFAULT_MAX_LENGTH = 1024  # or the model's positions when fewer
DEFAULT_BATCH = 4  # windows per forward pass: logits are windows x max_length x vocabulary floats


@dataclass
class PerplexityResult:
    """What ``perplexity`` measured; ``to_json`` is what metrics.json and ``--json`` hold."""

    task: str  # "wikitext"
    source: str  # the text file
    model: str
    backend: str  # "pytorch" | "onnxruntime"
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, nats
    tokens: int  # tokens of the evaluated stream (after limit)
    file_tokens: int  # tokens of the whole file
    scored_tokens: int  # predictions counted: tokens - 1 with overlapping windows
    windows: int
    max_length: int
    stride: int
    batch_size: int
    method: str = METHOD
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# -- input --------------------------------------------------------------------------------


def read_text_file(path: str | Path, what: str = "text file") -> str:
    """The file's text (UTF-8); one line naming the file when it is missing, not UTF-8
    or holds no text at all."""
    from ..files import read_text

    p = Path(path).expanduser()
    text = read_text(p, what)
    if not text.strip():
        raise CompressorError(f"{what} {p} has no text (it is empty or only whitespace)")
    return text


def token_stream(text: str, tokenizer, source: str = "text") -> tuple[torch.Tensor, int]:
    """(ids [tokens] int64, prefix length): the tokenizer's leading special tokens once,
    then the text tokenized as one string without special tokens."""
    from ..compat import quiet_transformers
    from ..data.calibration import _special_ids

    if tokenizer is None:
        raise CompressorError("the model folder has no tokenizer; perplexity on a text file needs one")
    prefix, _suffix, _ = _special_ids(tokenizer, None)
    with quiet_transformers():  # "sequence longer than the model's maximum": expected, windows follow
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise CompressorError(f"{source} gives no tokens with this tokenizer")
    return torch.tensor(prefix + ids, dtype=torch.long), len(prefix)


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of every window over a stream of n tokens,
    positions in the stream; the window's tokens [first, end) are scored."""
    if not 1 <= stride <= max_length:
        raise CompressorError(f"stride must be between 1 and max_length ({max_length}); got {stride}")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        first = max(prev_end, begin + 1)  # a window's first token has nothing before it to predict it
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


def resolve_lengths(config, max_length: int | None, stride: int | None, what: str = "--max-length",
                    stride_what: str = "--stride") -> tuple[int, int]:
    """(max_length, stride): max_length the model has positions for (unset: the model's
    positions, at most 1024), stride at most max_length (unset: max_length // 2)."""
    from ..arch.base import check_max_length

    n = check_max_length(config, max_length, what, default=DEFAULT_MAX_LENGTH) if config is not None else (
        max_length or DEFAULT_MAX_LENGTH)
    if n < 2:
        raise CompressorError(f"{what} must be at least 2 tokens for a prediction; got {n}")
    s = max(1, n // 2) if stride is None else stride
    if not 1 <= s <= n:
        raise CompressorError(f"{stride_what} is {s}, above the window length {n}; use 1..{n}")
    return n, s


# -- models -------------------------------------------------------------------------------


class TorchLM:
    """A PyTorch causal LM: logits [batch, seq, vocab] for whole windows, no KV cache."""

    backend = "pytorch"

    def __init__(self, model: nn.Module, name: str = "pytorch") -> None:
        from ..task_head import check_causal_lm

        check_causal_lm(model)
        self.model, self.name = model, name

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        from ..arch.base import adapter_for

        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            out = self.model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids, device=device),
                             **adapter_for(self.model).forward_kwargs())
        finally:
            self.model.train(was_training)
        return out.logits


class OnnxLM:
    """An ONNX graph written by ``compress export`` from a causal LM (``text-generation``:
    logits [batch, seq, vocab]), fed whole windows. A graph with a KV cache (the default
    export of a decoder) gets a zero-length past per layer, as its prompt step does; any
    other unknown input is one line."""

    backend = "onnxruntime"
    FEEDS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        from ..export.onnx import _session

        self.path = Path(path)
        self.name = name or self.path.name
        self.session = _session(self.path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "logits" not in outputs or len(outputs["logits"].shape) != 3:
            raise CompressorError(
                f"{self.path} outputs {', '.join(outputs)}, not next-token logits [batch, seq, vocab]: it was not "
                f"exported from a causal language model, and perplexity needs one")
        from ..export.kv_cache import graph_past_shapes, past_names

        self.past = graph_past_shapes(self.session)  # [(kv heads, head_dim)] per layer, or None
        cache_inputs = set(past_names(len(self.past))) if self.past else set()
        other = [i for i in self.inputs if i not in self.FEEDS and i not in cache_inputs]
        if other:
            raise CompressorError(f"{self.path} takes inputs {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}"
                                  f" (a KV cache?); perplexity feeds whole windows to a graph taking only "
                                  f"{', '.join(self.FEEDS[:3])}")

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        from ..export.onnx import complete_feeds

        x = ids.numpy().astype(np.int64)
        feeds = complete_feeds({"input_ids": x, "attention_mask": np.ones_like(x)},
                               [i for i in self.inputs if i in self.FEEDS])
        if self.past:
            from ..export.kv_cache import empty_past

            feeds.update(empty_past(self.past, x.shape[0]))  # [batch, heads, 0, head_dim] each
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


def lm_runner_for(path_or_name: str, attn_implementation: str | None = None):
    """(runner, tokenizer, config) for a model folder/name (PyTorch) or a .onnx file / a
    folder written by ``compress export`` (ONNX Runtime); config is None when an ONNX
    folder's config.json cannot be read."""
    from ..export.onnx import RAW
    from ..models import load_model, load_tokenizer
    from .glue import onnx_config

    p = Path(path_or_name).expanduser()
    onnx_file = p if p.suffix == ".onnx" else p / RAW if (p / RAW).is_file() else None
    if onnx_file is not None:
        if not onnx_file.is_file():
            raise CompressorError(f"ONNX file not found: {onnx_file}")
        config = onnx_config(onnx_file.parent)
        if config is not None:
            from ..arch.base import spec_for
            from ..errors import ModelLoadError

            try:
                causal = spec_for(config.model_type).causal
            except ModelLoadError:
                causal = True  # an architecture compressor does not know: the graph's outputs decide
            if not causal:
                raise CompressorError(f"{onnx_file} was exported from a {config.model_type} model, an encoder: "
                                      "perplexity needs a causal language model (next-token predictions)")
        return OnnxLM(onnx_file), load_tokenizer(str(onnx_file.parent)), config
    model = load_model(path_or_name, attn_implementation=attn_implementation)
    return TorchLM(model, name=str(path_or_name)), load_tokenizer(path_or_name), model.config


# -- the measurement -----------------------------------------------------------------------


def perplexity(runner, ids: torch.Tensor, max_length: int, stride: int, batch_size: int = DEFAULT_BATCH,
               limit: int | None = None, source: str = "", task: str = "wikitext",
               progress: bool = False) -> PerplexityResult:
    """Sliding-window perplexity of ``runner`` (TorchLM / OnnxLM) on the token stream
    ``ids`` [tokens] (see the module docstring)."""
    from ..progress import bar

    start = time.perf_counter()
    file_tokens = int(ids.numel())
    if limit is not None:
        ids = ids[:limit]
    n = int(ids.numel())
    if n < 2:
        raise CompressorError(f"{source or 'the text'} has {n} token(s) to evaluate; perplexity needs at least 2")
    spans = windows(n, max_length, stride)
    # consecutive windows of equal length share a batch: no padding anywhere
    batches: list[list[tuple[int, int, int]]] = []
    for w in spans:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][1] - batches[-1][0][0] == w[1] - w[0]:
            batches[-1].append(w)
        else:
            batches.append([w])
    total = 0.0  # float64 sum of NLLs
    count = 0
    for group in bar(batches, progress, desc=f"{task} ({getattr(runner, 'name', runner.backend)})", unit="batch",
                     leave=False):
        x = torch.stack([ids[b:e] for b, e, _ in group])  # [windows, length]
        length = x.shape[1]
        # scored[w, j]: token j of window w is scored, predicted by the logits at j - 1
        pos = torch.arange(length)[None, :]  # [1, length]
        first = torch.tensor([f - b for b, _, f in group])[:, None]  # [windows, 1]
        scored = pos >= first  # [windows, length]
        logits = runner.logits(x)  # [windows, length, vocab]
        pred = logits[:, :-1][scored[:, 1:].to(logits.device)].float()  # [scored, vocab]
        target = x[:, 1:][scored[:, 1:]].to(pred.device)  # [scored]
        total += float(F.cross_entropy(pred, target, reduction="sum").double())
        count += int(target.numel())
    nll = total / count
    if not math.isfinite(nll):
        raise CompressorError(f"the model's negative log-likelihood on {source or 'the text'} is not finite ({nll}); "
                              "its logits hold NaN or infinite values")
    return PerplexityResult(
        task=task, source=str(source), model=getattr(runner, "name", ""), backend=runner.backend,
        perplexity=math.exp(nll) if nll < 700 else float("inf"), nll=nll, tokens=n, file_tokens=file_tokens,
        scored_tokens=count, windows=len(spans), max_length=max_length, stride=stride, batch_size=batch_size,
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "PERPLEXITY_TASKS",
    "OnnxLM",
    "PerplexityResult",
    "TorchLM",
    "is_perplexity_task",
    "lm_runner_for",
    "perplexity",
    "read_text_file",
    "resolve_lengths",
    "token_stream",
    "windows",
]
