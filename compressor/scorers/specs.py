"""What a recipe needs to know about each built-in scorer, without importing it.

A recipe is validated before any model work, and validation errors must answer at once
(`compress --recipe` with a typo), so this module imports neither torch nor the scorer
implementations: each ScorerSpec names the module that holds the scorer and carries
its parameter table, what it produces and needs, and any cross-field checks. The
scorer classes read these same objects (Scorer.__init_subclass__), so there is one
definition of each parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError
from ..schema import SEED_MAX, Field, check_mapping

# Parameter vocabularies, shared with the implementations.
TOKEN_METRICS = ("js", "cosine", "correlation", "bhattacharyya")
SENTENCE_METRICS = ("dcor", "procrustes", "cca")
METRICS = TOKEN_METRICS + SENTENCE_METRICS
TYPE_NAMES = ("vertical", "diagonal", "dense", "dense+vertical")
POSITIONAL_SIEVES = ("local", "prev", "next", "delimiter", "cls", "sep", "block")
SYNTACTIC_SIEVES = ("nsubj", "dobj", "amod", "advmod")
SIEVES = POSITIONAL_SIEVES + SYNTACTIC_SIEVES
STATISTICS = ("max_death", "mean_death", "median_death", "total_persistence", "count_above")


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    module: str  # imported only when the scorer runs
    produces: frozenset[str]  # subset of {"heads", "neurons"}
    needs: frozenset[str] = frozenset()  # what the capture pass must expose
    params: dict[str, Field] = field(default_factory=dict)
    # When a recipe leaves ``ratio`` out, it follows targets.heads.ratio.
    follows_head_ratio: bool = False
    check: Callable[[dict[str, Any], str], None] | None = None  # cross-field checks
    # True when head and neuron scores are on one scale (comparable across kinds and
    # layers), so a shared budget can rank them together (targets.budget, split: auto)
    shared_scale: bool = False
    # whether, with given (checked) params, the scorer needs labelled calibration
    labels: Callable[[dict[str, Any]], bool] | None = None

    def needs_labels(self, params: dict[str, Any]) -> bool:
        return bool(self.labels(params)) if self.labels is not None else False

    def check_params(self, data: Any, path: str) -> dict[str, Any]:
        p = check_mapping(data, self.params, path)
        if self.check is not None:
            self.check(p, path)
        return p


def _check_redundancy(p: dict, path: str) -> None:
    bad = [m for m in p["metrics"] if m not in METRICS]
    if bad or not p["metrics"] or len(set(p["metrics"])) != len(p["metrics"]):
        raise RecipeError(
            f"recipe field '{path}.metrics' must list distinct metrics from {', '.join(METRICS)}; got {p['metrics']!r}"
        )
    if p["cluster_on"] != "mean" and p["cluster_on"] not in p["metrics"]:
        raise RecipeError(
            f"recipe field '{path}.cluster_on' must be 'mean' or one of the listed metrics "
            f"({', '.join(p['metrics'])}); got {p['cluster_on']!r}"
        )


def _check_head_types(p: dict, path: str) -> None:
    order = p["prune_order"]
    if p["k"] == 4 and (not all(isinstance(t, str) for t in order) or sorted(order) != sorted(TYPE_NAMES)):
        raise RecipeError(
            f"recipe field '{path}.prune_order' must order all of {', '.join(TYPE_NAMES)}; got {p['prune_order']!r}"
        )


def _check_sieve_roles(p: dict, path: str) -> None:
    bad = [s for s in p["sieves"] if s not in SIEVES]
    if bad or not p["sieves"]:
        raise RecipeError(f"recipe field '{path}.sieves' must list sieves from {', '.join(SIEVES)}; got {p['sieves']!r}")


_BOTH = frozenset({"heads", "neurons"})
_HEADS = frozenset({"heads"})
_ATTN = frozenset({"attentions"})

SPECS: dict[str, ScorerSpec] = {s.name: s for s in (
    ScorerSpec("magnitude", "compressor.scorers.baseline", _BOTH),
    ScorerSpec("random", "compressor.scorers.baseline", _BOTH, params={
        "seed": Field("int", None, lo=0, hi=SEED_MAX, nullable=True, help="defaults to the recipe seed"),
    }),
    ScorerSpec("redundancy", "compressor.scorers.redundancy", _HEADS, _ATTN, params={
        "metrics": Field("list", list(TOKEN_METRICS), help=f"any of {', '.join(METRICS)}"),
        "cluster_on": Field("str", "mean", help="'mean' of the metrics, or one metric"),
        "ratio": Field("float", 0.5, lo=0.0, hi=1.0, help="share of heads to prune: clusters = ceil(N * (1 - ratio))"),
        "js_query_sample": Field("int", None, lo=1, nullable=True, help="JS on this many query positions per batch"),
        "sentence_sequences": Field("int", 32, lo=1, help="sequences used by dcor / procrustes / cca"),
        "svd_rank": Field("int", 32, lo=1, help="singular directions per head for procrustes / cca"),
    }, follows_head_ratio=True, check=_check_redundancy),
    ScorerSpec("head_types", "compressor.scorers.head_types", _HEADS, _ATTN, params={
        "k": Field("int", 4, lo=2, hi=32, help="K-means clusters (names need k=4)"),
        "prune_order": Field("list", list(TYPE_NAMES), help="types pruned first come first"),
        "stability_splits": Field("int", 10, lo=0, hi=1000, help="random 50% input splits for the stability check"),
        "tsne": Field("bool", True, help="t-SNE picture of the heads' features"),
    }, check=_check_head_types),
    ScorerSpec("sieve_roles", "compressor.scorers.sieve_roles", _HEADS, _ATTN, params={
        "tau": Field("float", 3.0, lo=0.0, help="bias threshold of the one-tailed test"),
        "test": Field("choice", "z", choices=("z", "t"),
                      help="z: the paper's one-tailed z-test; t: a one-tailed t-test (n - 1 degrees of freedom)"),
        "alpha": Field("float", 0.05, lo=0.0, hi=1.0, help="significance level"),
        "sieves": Field("list", list(SIEVES), help=f"any of {', '.join(SIEVES)}"),
    }, check=_check_sieve_roles),
    ScorerSpec("persistence", "compressor.scorers.persistence", frozenset({"neurons"}), frozenset({"ffn_summary"}),
               params={
        # The paper does not define its statistic of the death times precisely; see
        # benchmarks/persistence.py and the README for how the default was chosen.
        "statistic": Field("choice", "max_death", choices=STATISTICS),
        "radius": Field("float", 0.01, lo=0.0, help="count_above: bars longer than this count"),
    }),
    ScorerSpec("topology", "compressor.topology.heads", _HEADS, _ATTN, params={
        "max_dimension": Field("int", 1, lo=0, hi=2, help="homology up to H1 (H2 is slower)"),
    }),
    ScorerSpec("fisher", "compressor.scorers.fisher", _BOTH, frozenset({"gradients"}), params={
        "label_free": Field("choice", None, choices=("output", "lm"), nullable=True,
                            help="unset: the task loss from labels; output: Gauss-Newton diagonal of the final hidden "
                                 "states; lm: a causal LM's next-token loss on the calibration text"),
        "probes": Field("int", 1, lo=1, hi=1000, help="label_free: random probes per example (one backward each)"),
        "seed": Field("int", None, lo=0, hi=SEED_MAX, nullable=True, help="label_free probes; defaults to the recipe seed"),
        "blocks": Field("bool", True, help="keep per-layer Fisher matrices for the budget's mask rearrangement"),
    }, shared_scale=True, labels=lambda p: p.get("label_free") is None),
)}


def scorer_spec(name: str) -> ScorerSpec | None:
    """The spec of a built-in scorer, or of a plug-in already registered (a plug-in's
    module imports the scorer base, so asking the registry then costs nothing); None
    for an unknown name."""
    if name in SPECS:
        return SPECS[name]
    import sys

    base = sys.modules.get("compressor.scorers.base")
    if base is not None and name in base.SCORERS:
        return base.SCORERS.get(name).spec
    return None


def scorer_names() -> list[str]:
    import sys

    base = sys.modules.get("compressor.scorers.base")
    return sorted(set(SPECS) | set(base.SCORERS.names() if base is not None else ()))
