"""Calibration inputs: batches of (input_ids, attention_mask[, labels]), right-padded.

- random_tokens: random vocabulary ids wrapped in the model's special tokens, lengths
  uniform in [min_length, max_length]. Needs no data at all (zero-shot).
- text_file: one text per line, the first num_sequences non-empty lines (with
  skip_headings, WikiText's ``= Heading =`` lines are left out too). For a decoder this
  is the natural calibration: each line (a WikiText paragraph) is one sequence.
- glue: a GLUE task's texts from a local TSV folder or the hub, with their labels
  (class ids, or scores for STS-B) for scorers that need the task loss (fisher);
  the test split has none.

Sequences are sorted by length before batching so padding (wasted compute) is small.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CompressorError
from ..recipe import CalibrationConfig
from .glue import glue_texts, load_glue


@dataclass
class Batch:
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    labels: torch.Tensor | None = None  # [batch] int64 class ids or float32 scores; glue source only
    # [batch, seq] segment of each token (0 first sentence, 1 second), when the tokenizer
    # makes them (BERT-style) and the texts are sentence pairs; padded positions 0
    token_type_ids: torch.Tensor | None = None


def _special_ids(tokenizer, config) -> tuple[list[int], list[int], set[int]]:
    """(prefix, suffix, all special ids) that wrap one sequence for this model.

    Read off the tokenizer's own output for one word, with and without special tokens
    (transformers 5 dropped ``build_inputs_with_special_tokens`` from fast tokenizers)."""
    if tokenizer is not None:
        core = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        at = next((i for i in range(len(full) - len(core) + 1) if full[i : i + len(core)] == core), None)
        if not core or at is None:
            raise CompressorError(f"cannot tell which special tokens {type(tokenizer).__name__} adds around a sequence")
        return full[:at], full[at + len(core) :], set(tokenizer.all_special_ids)
    specials = {getattr(config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")} - {None}
    return [], [], specials


def _pad_id(tokenizer, config) -> int:
    """An id for padded positions. They are masked out, but still looked up in the
    embedding table, so the id must exist there (GPT-2 has no pad token at all)."""
    vocab = int(config.vocab_size)
    for src in (tokenizer, config):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(src, attr, None) if src is not None else None
            if v is not None and 0 <= int(v) < vocab:
                return int(v)
    return 0


def _batches(seqs: list[list[int]], batch_size: int, pad_id: int, labels: np.ndarray | None = None,
             types: list[list[int]] | None = None) -> list[Batch]:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [seqs[i] for i in rows]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        tt = None if types is None else torch.zeros((len(chunk), width), dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
            if tt is not None:
                tt[row, : len(s)] = torch.tensor(types[rows[row]], dtype=torch.long)
        y = None if labels is None else torch.from_numpy(labels[rows])
        out.append(Batch(ids, mask, y, tt))
    return out


def never_produced_ids(tokenizer) -> set[int]:
    """Ids a tokenizer never emits for text: its special tokens, and BERT's reserved
    ``[unusedN]`` slots (994 in bert-base-uncased's vocabulary; placeholders that no
    text maps to). Random-token calibration leaves them out so the sampled sequences
    hold only tokens that real text can contain."""
    import re

    out = set(tokenizer.all_special_ids)
    unused = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    out |= {i for t, i in vocab.items() if unused.match(t)}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out |= {i for i, t in added.items() if getattr(t, "special", False)}  # added control tokens
    return out


def random_token_sequences(cfg: CalibrationConfig, tokenizer, config, seed: int) -> list[list[int]]:
    prefix, suffix, specials = _special_ids(tokenizer, config)
    vocab = int(config.vocab_size) if tokenizer is None else min(len(tokenizer), int(config.vocab_size))
    if tokenizer is not None:
        specials = specials | never_produced_ids(tokenizer)
    candidates = np.setdiff1d(np.arange(vocab), np.array(sorted(specials), dtype=np.int64))
    rng = np.random.default_rng(seed)
    n_special = len(prefix) + len(suffix)
    lengths = rng.integers(max(cfg.min_length, n_special + 1), max(cfg.max_length, n_special + 1) + 1, cfg.num_sequences)
    return [prefix + candidates[rng.integers(0, len(candidates), int(n) - n_special)].tolist() + suffix for n in lengths]


def _encode_texts(texts: list[tuple[str, ...]], tokenizer, cfg: CalibrationConfig
                  ) -> tuple[list[list[int]], list[list[int]] | None]:
    """Ids per text, and token types per text when the texts are sentence pairs and the
    tokenizer makes them (None otherwise: one segment)."""
    if tokenizer is None:
        raise CompressorError(f"calibration source '{cfg.source}' needs a tokenizer, and the model folder has none")
    out, types = [], []
    for t in texts[: cfg.num_sequences]:
        enc = tokenizer(*t, truncation=True, max_length=cfg.max_length)
        out.append(list(enc["input_ids"]))
        types.append(list(enc["token_type_ids"]) if "token_type_ids" in enc else None)
    pairs = any(len(t) > 1 for t in texts[: cfg.num_sequences])
    return out, (types if pairs and types and all(x is not None for x in types) else None)


_HEADING = re.compile(r"(= )+\S.*?( =)+")


def is_heading(line: str) -> bool:
    """A WikiText section heading: ``= Title =``, ``= = Section = =`` (stripped): markup
    of 2-10 tokens, not running text."""
    return _HEADING.fullmatch(line) is not None


def fit_length(cfg: CalibrationConfig, config, what: str = "calibration max_length") -> CalibrationConfig:
    """The calibration with a max_length the model can take: an error naming both numbers
    when it asks for more positions than the model has; unset (None), 128 or the model's
    positions when fewer (min_length follows)."""
    from ..arch.base import check_max_length

    n = check_max_length(config, cfg.max_length, what)
    if n == cfg.max_length:
        return cfg
    return dataclasses.replace(cfg, max_length=n, min_length=min(cfg.min_length, n))


def calibration_batches(cfg: CalibrationConfig, tokenizer, config, seed: int) -> list[Batch]:
    # The entry points (recipe run, analyze, reconstruct) check max_length strictly with
    # fit_length before any work; here, where a config's default 128 meets a model with
    # fewer positions, sequences are kept within the positions instead of failing deep in the model.
    from ..arch.base import max_positions

    n = max_positions(config)
    if cfg.max_length is None or (n is not None and cfg.max_length > n):
        length = min(cfg.max_length or 128, n if n is not None else 128)
        cfg = dataclasses.replace(cfg, max_length=length, min_length=min(cfg.min_length, length))
    pad = _pad_id(tokenizer, config)
    labels = types = None
    if cfg.source == "random_tokens":
        seqs = random_token_sequences(cfg, tokenizer, config, seed)
    elif cfg.source == "text_file":
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise CompressorError(f"calibration text file not found: {path}")
        from ..files import read_text

        lines = [ln.strip() for ln in read_text(path, "calibration text file").splitlines()]
        texts = [(ln,) for ln in lines if ln and not (cfg.skip_headings and is_heading(ln))]
        if not texts:
            raise CompressorError(f"calibration text file {path} has no non-empty line"
                                  f"{' that is not a heading' if cfg.skip_headings else ''}")
        seqs, types = _encode_texts(texts, tokenizer, cfg)
    elif cfg.source == "glue":
        if cfg.split == "test":  # GLUE's test splits carry no labels
            seqs, types = _encode_texts(glue_texts(cfg.task, cfg.data_dir, cfg.split), tokenizer, cfg)
        else:
            split = load_glue(cfg.task, cfg.data_dir, cfg.split)
            seqs, types = _encode_texts(split.texts, tokenizer, cfg)
            labels = np.ascontiguousarray(split.labels[: len(seqs)])
    else:  # the recipe schema already limits the choices
        raise ValueError(cfg.source)
    return _batches(seqs, cfg.batch_size, pad, labels, types)
