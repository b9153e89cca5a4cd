"""Scores + targets -> PruningPlan. Pure: no model, no weights, no data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .arch.base import Layout
from .errors import RecipeError
from .metrics import FLOPS_SEQ_LEN
from .recipe import BudgetTarget, HeadTarget, NeuronTarget
from .types import HeadScores, NeuronScores, PruningPlan


def removal_count(units: int, ratio: float) -> int:
    """How many of ``units`` a ``ratio`` removes: round(ratio * units), half to even (Python's
    round). The one rounding rule for ratios: the planner's targets use it, and so does
    any scorer that needs the count ahead of planning (redundancy's cluster count is
    units - removal_count), so a scorer's chosen survivors are exactly the ones kept."""
    return int(round(ratio * units))


def _lowest_first(scores: list[np.ndarray]) -> np.ndarray:
    """(layer, index) pairs of all units, lowest score first; ties broken by position."""
    layer = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)]).astype(int)
    index = np.concatenate([np.arange(len(s)) for s in scores]).astype(int)
    value = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    order = np.lexsort((index, layer, value))
    return np.stack([layer[order], index[order]], 1)


def _lowest(values: np.ndarray, k: int) -> list[int]:
    """The k lowest-valued indices of one layer, sorted (ties by position)."""
    return sorted(np.lexsort((np.arange(len(values)), np.asarray(values, dtype=np.float64)))[:k].tolist())


def _take_lowest(scores: list[np.ndarray], counts: list[int]) -> dict[int, list[int]]:
    """Layer -> its counts[layer] lowest units (layers with none left out)."""
    return {i: _lowest(s, k) for i, (s, k) in enumerate(zip(scores, counts, strict=True)) if k > 0}


def _take_global(scores: list[np.ndarray], total: int, floor: int) -> dict[int, list[int]]:
    """Remove the ``total`` lowest units model-wide while every layer keeps >= floor."""
    room = [max(len(s) - floor, 0) for s in scores]
    out: dict[int, list[int]] = {}
    taken = 0
    for layer, index in _lowest_first(scores):
        if taken == total:
            break
        if room[layer] > 0:
            room[layer] -= 1
            out.setdefault(int(layer), []).append(int(index))
            taken += 1
    return {k: sorted(v) for k, v in out.items()}


def plan_heads(scores: HeadScores, layout: Layout, target: HeadTarget) -> dict[int, list[int]]:
    values = [np.asarray(v, dtype=np.float64) for v in scores.values]
    _check_shapes("head", [len(v) for v in values], list(layout.heads_per_layer), scores.scorer)
    g = layout.group_size
    if g > 1:
        # Grouped-query attention: whole key/value groups are planned, each scored by the
        # sum of its query heads' scores; ratio and min_per_layer count groups.
        grouped = [v.reshape(-1, g).sum(1) for v in values]  # [groups] per layer
        glayout = dataclasses.replace(layout, heads_per_layer=layout.groups_per_layer, group_size=1)
        chosen = _plan_units(grouped, glayout, target)
        return {layer: [h for grp in gs for h in range(grp * g, (grp + 1) * g)] for layer, gs in chosen.items()}
    return _plan_units(values, layout, target)


def _plan_units(values: list[np.ndarray], layout: Layout, target: HeadTarget) -> dict[int, list[int]]:
    if target.scope == "per_layer":
        counts = [min(removal_count(n, target.ratio), max(n - target.min_per_layer, 0)) for n in layout.heads_per_layer]
        return _take_lowest(values, counts)
    total = removal_count(sum(layout.heads_per_layer), target.ratio)
    return _take_global(values, total, target.min_per_layer)


def plan_neurons(scores: NeuronScores, layout: Layout, target: NeuronTarget) -> dict[int, list[int]]:
    values = [np.asarray(v, dtype=np.float64) for v in scores.values]
    _check_shapes("neuron", [len(v) for v in values], list(layout.ffn_per_layer), scores.scorer)
    floor = target.min_per_layer
    if target.ratio is not None:
        if target.scope == "per_layer":
            counts = [min(removal_count(len(v), target.ratio), max(len(v) - floor, 0)) for v in values]
            return _take_lowest(values, counts)
        return _take_global(values, removal_count(sum(map(len, values)), target.ratio), floor)
    # percentile: remove every unit strictly below the p-th percentile (of its layer, or
    # of the whole model), so ties at the threshold are kept, never split arbitrarily.
    if target.scope == "per_layer":
        counts = [
            min(int((v < np.percentile(v, target.percentile)).sum()), max(len(v) - floor, 0)) if len(v) else 0
            for v in values
        ]
        return _take_lowest(values, counts)
    everything = np.concatenate(values)
    threshold = np.percentile(everything, target.percentile) if len(everything) else 0.0
    return _take_global(values, int((everything < threshold).sum()), floor)


def check_floors(layout: Layout, heads: HeadTarget | None = None, neurons: NeuronTarget | None = None,
                 budget: BudgetTarget | None = None) -> None:
    """A per-layer floor above a layer's size cannot be kept: one line naming the field,
    the layer and the most the model allows. Layers already emptied (0 units) are not
    counted: no floor applies to what is gone. Pure, so the pipeline runs it before any work."""
    checks = []
    # with head groups the head floors count key/value groups (plan_heads and plan_budget keep whole groups)
    grouped = layout.group_size > 1
    head_units = layout.groups_per_layer if grouped else layout.heads_per_layer
    head_kind = "head groups" if grouped else "heads"
    if heads is not None:
        checks.append(("targets.heads.min_per_layer", heads.min_per_layer, head_units, head_kind))
    if neurons is not None:
        checks.append(("targets.neurons.min_per_layer", neurons.min_per_layer, layout.ffn_per_layer, "neurons"))
    if budget is not None:
        checks.append(("targets.budget.min_heads_per_layer (or min_per_layer)", budget.min_heads_per_layer,
                       head_units, head_kind))
        checks.append(("targets.budget.min_neurons_per_layer (or min_per_layer)", budget.min_neurons_per_layer,
                       layout.ffn_per_layer, "neurons"))
    for name, floor, sizes, kind in checks:
        live = [(i, n) for i, n in enumerate(sizes) if n > 0]
        over = [(i, n) for i, n in live if floor > n]
        if over:
            i, n = over[0]
            raise RecipeError(f"recipe field '{name}' is {floor}, above layer {i}'s {n} {kind}; "
                              f"this model allows at most {min(n for _, n in live)}")


def _check_shapes(kind: str, got: list[int], want: list[int], scorer: str) -> None:
    if got != want:
        raise RecipeError(f"scorer '{scorer}' returned {kind} scores of sizes {got}, the model has {want}")


def make_plan(
    layout: Layout,
    head_scores: HeadScores | None,
    neuron_scores: NeuronScores | None,
    heads: HeadTarget | None,
    neurons: NeuronTarget | None,
    source: dict,
) -> PruningPlan:
    h = plan_heads(head_scores, layout, heads) if heads is not None else {}
    n = plan_neurons(neuron_scores, layout, neurons) if neurons is not None else {}
    src = dict(source)
    if heads is not None:
        src["heads"] = {"scorer": heads.scorer, **{k: v for k, v in heads.__dict__.items() if k != "scorer"}}
        if head_scores is not None and "ratio" in head_scores.extras:
            # scores chosen for a share of heads pruned (redundancy's clusters): record it
            # beside the target's, so a plan made from scores for another ratio shows it
            src["heads"]["scores_ratio"] = head_scores.extras["ratio"]
    if neurons is not None:
        src["neurons"] = {"scorer": neurons.scorer, **{k: v for k, v in neurons.__dict__.items() if k != "scorer"}}
    return PruningPlan.build(h, n, src)


# --- one budget for heads and neurons (targets.budget) ---------------------------------
#
# Every unit a plan removes is costed by what it carries (Layout.unit_costs, in
# compressor/arch): an attention unit is a head with its own k/v, or with grouped-query
# attention a whole key/value group (G query heads with their key and value head: the
# budget, like targets.heads, never splits a group); an FFN unit is a channel (its row of
# each input projection, gate and up when gated, and its column of the out projection).
# FLOPs per token are the terms of metrics.encoder_flops_per_token (seq 128); parameters
# the weights and biases a unit owns. A layout has one hidden size, head size and group
# size, so all attention units cost the same, as do all channels; the share kept is the
# kept cost over the cost of every unit: the transformer layers only (embeddings, norms
# and a decoder's LM head are outside the budget, as in metrics.json's flops_kept_share).

Evaluate = Callable[[dict[int, list[int]], dict[int, list[int]]], float]


def unit_costs(layout: Layout, kind: str, seq_len: int = FLOPS_SEQ_LEN, bias: bool = True,
               ffn_bias: bool | None = None) -> tuple[int, int]:
    """(cost of one attention unit, cost of one neuron) in FLOPs per token or parameters.
    The attention unit is a head, or with head groups a key/value group of
    ``layout.group_size`` query heads. ``bias``: the q/k/v projections carry biases;
    ``ffn_bias``: the FFN input projections do (None: same as ``bias``)."""
    return layout.unit_costs(kind, seq_len, bias, bias if ffn_bias is None else ffn_bias)


def _units_cost(layout: Layout, ch: int, cn: int) -> int:
    """Cost of a layout's attention units (key/value groups) and neurons."""
    return ch * sum(layout.groups_per_layer) + cn * sum(layout.ffn_per_layer)


def budget_shares(layout: Layout, kept: Layout, bias: bool = True, ffn_bias: bool | None = None) -> dict[str, float]:
    """Share of encoder FLOPs per token and of head/neuron parameters ``kept`` keeps."""
    out = {}
    for kind in ("flops", "params"):
        ch, cn = unit_costs(layout, kind, bias=bias, ffn_bias=ffn_bias)
        full = _units_cost(layout, ch, cn)
        out[kind] = _units_cost(kept, ch, cn) / full if full else 1.0
    return out


def _floors(sizes: tuple[int, ...], floor: int) -> np.ndarray:
    return np.minimum(np.asarray(sizes, dtype=np.int64), floor)


def check_budget(layout: Layout, target: BudgetTarget, bias: bool = True, ffn_bias: bool | None = None) -> None:
    """A budget below what the per-layer floors keep is impossible: one line naming the
    smallest achievable share. With head groups the head floor counts key/value groups
    (as targets.heads.min_per_layer does). Pure, so the pipeline runs it before any work."""
    ch, cn = unit_costs(layout, target.kind, bias=bias, ffn_bias=ffn_bias)
    full = _units_cost(layout, ch, cn)
    fh = int(_floors(layout.groups_per_layer, target.min_heads_per_layer).sum())
    fn = int(_floors(layout.ffn_per_layer, target.min_neurons_per_layer).sum())
    least = (ch * fh + cn * fn) / full
    if target.share < least:
        heads = "head group(s)" if layout.group_size > 1 else "head(s)"
        raise RecipeError(
            f"recipe field 'targets.budget.{target.kind}' is {target.share:g}, but keeping "
            f"{target.min_heads_per_layer} {heads} and {target.min_neurons_per_layer} neuron(s) per layer "
            f"(min_per_layer) keeps {least:.4f} of the {target.kind}; the smallest achievable budget is {least:.4f}"
        )


def _keep_order(values: list[np.ndarray], floors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Order in which units are kept as their number grows: first each layer's ``floors``
    highest (forced), then all others by value, highest first; ties by position.

    Returns (layer, index) arrays in that order and the number of forced units; keeping
    k >= forced units means keeping the first k."""
    layer = np.concatenate([np.full(len(v), i) for i, v in enumerate(values)]).astype(np.int64)
    index = np.concatenate([np.arange(len(v)) for v in values]).astype(np.int64)
    value = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]) if values else np.zeros(0)
    # rank within the layer, highest first: forced when rank < floor
    by_layer = np.lexsort((index, -value, layer))
    rank = np.empty(len(value), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([len(v) for v in values])])[:-1].astype(np.int64)
    rank[by_layer] = np.arange(len(value)) - np.repeat(starts, [len(v) for v in values])
    forced = rank < floors[layer]
    order = np.lexsort((index, layer, -value, ~forced))
    return layer[order], index[order], int(forced.sum())


def _removed(layer: np.ndarray, index: np.ndarray, kept: int, sizes: tuple[int, ...]) -> dict[int, list[int]]:
    """Layer -> removed indices when the first ``kept`` of an order stay."""
    out: dict[int, list[int]] = {}
    for lay, i in zip(layer[kept:].tolist(), index[kept:].tolist(), strict=True):
        out.setdefault(lay, []).append(i)
    return {k: sorted(v) for k, v in sorted(out.items())}


def _neurons_for(budget: float, kh: np.ndarray, ch: int, cn: int, total_n: int) -> np.ndarray:
    """Neurons that fit next to kh heads (an array of head counts); may be negative."""
    room = budget - kh * ch
    return np.minimum(np.floor(room / cn + 1e-9).astype(np.int64), total_n)


def _head_counts(budget: float, ch: int, cn: int, forced_h: int, forced_n: int, total_h: int, total_n: int) -> np.ndarray:
    """Head counts worth trying: each with the neurons that fill the rest of the budget,
    the floors met, and no budget left that could hold one more unit of either kind."""
    kh = np.arange(forced_h, total_h + 1)
    kn = _neurons_for(budget, kh, ch, cn, total_n)
    left = budget - kh * ch - kn * cn
    ok = (kn >= forced_n) & ((kn < total_n) | (kh == total_h) | (left < ch))
    return kh[ok]


def rearrange_layer(fisher: np.ndarray, diag: np.ndarray, remove: int) -> tuple[list[int], float, float]:
    """Kwon et al.'s Fisher-based mask rearrangement within one layer.

    ``fisher``: the layer's [n, n] matrix sum_e g_e g_e^T of mask gradients; removing
    the set R costs about 1/2 * 1_R^T F 1_R (the block-diagonal quadratic estimate, with
    the interactions between the layer's units). Start from the ``remove`` lowest
    diagonal entries; take the others in increasing order: add one to R, then drop from
    R the unit whose absence leaves the smallest estimate (possibly the one just added).
    Each step never increases the estimate. Returns (removed indices, estimate before,
    after), the estimates as 1/2 * 1_R^T F 1_R."""
    n = len(diag)
    order = np.lexsort((np.arange(n), diag)).tolist()
    if remove <= 0 or remove >= n:
        chosen = sorted(order[:max(remove, 0)])
        est = 0.5 * float(fisher[np.ix_(chosen, chosen)].sum()) if chosen else 0.0
        return chosen, est, est
    f = np.asarray(fisher, dtype=np.float64)
    inside = np.zeros(n, dtype=bool)
    inside[order[:remove]] = True
    s = f[:, inside].sum(1)  # [n] s_k = sum_{i in R} F_ki
    before = 0.5 * float(s[inside].sum())
    fd = np.diag(f)
    for j in order[remove:]:
        inside[j] = True
        s += f[:, j]
        members = np.flatnonzero(inside)
        # 1_{R-k}^T F 1_{R-k} = 1_R^T F 1_R - 2 s_k + F_kk; lowest index wins ties
        k = int(members[np.argmin(fd[members] - 2 * s[members])])
        inside[k] = False
        s -= f[:, k]
    after = 0.5 * float(s[inside].sum())
    return np.flatnonzero(inside).tolist(), before, after


def plan_budget(
    layout: Layout,
    head_scores: HeadScores,
    neuron_scores: NeuronScores,
    target: BudgetTarget,
    evaluate: Evaluate | None = None,
    bias: bool = True,
    source: dict | None = None,
    ffn_bias: bool | None = None,
) -> PruningPlan:
    """Heads and neurons to remove so at most ``target.share`` of the cost stays.

    ``importance`` (one-scale scorers, fisher): Kwon et al.'s search. For every number of
    heads kept, keep the highest-scoring heads and fill the rest of the budget with the
    highest-scoring neurons; pick the count with the highest kept score (the lowest
    removed Fisher, the estimated loss increase), then rearrange each layer's units with
    its Fisher matrix when the scores carry them (``extras["_fisher_blocks"]``).
    ``measure`` (any scorer): a few head counts (splits of the budget between the
    kinds), each kind ranked model-wide (``global``) and/or by share of each layer
    (``per_layer``: a unit's rank within its layer over the layer's size), every
    candidate scored by ``evaluate(removed heads, removed neurons)`` (calibration loss,
    lower is better); the best is kept. How it was chosen goes into plan.source.

    With head groups (``layout.group_size`` G > 1) the attention units are key/value
    groups: a group scores the sum of its query heads' scores (as in ``plan_heads``),
    costs ``unit_costs``' group price, and the head floors count groups; the Fisher
    matrix of a layer's groups is its heads' summed in G x G blocks (removing a set of
    groups removes the union of their heads, so 1_R^T F 1_R is unchanged). ``evaluate``
    and the plan see query heads."""
    hv = [np.asarray(v, dtype=np.float64) for v in head_scores.values]
    nv = [np.asarray(v, dtype=np.float64) for v in neuron_scores.values]
    _check_shapes("head", [len(v) for v in hv], list(layout.heads_per_layer), head_scores.scorer)
    _check_shapes("neuron", [len(v) for v in nv], list(layout.ffn_per_layer), neuron_scores.scorer)
    check_budget(layout, target, bias, ffn_bias)
    ch, cn = unit_costs(layout, target.kind, bias=bias, ffn_bias=ffn_bias)
    g = layout.group_size
    # From here on heads_per_layer counts attention units (key/value groups; heads when G = 1).
    units = dataclasses.replace(layout, heads_per_layer=layout.groups_per_layer, group_size=1)
    hv = [v.reshape(-1, g).sum(1) for v in hv]  # per layer [groups]
    if evaluate is not None and g > 1:
        by_heads = evaluate

        def evaluate(heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> float:
            return by_heads(_heads_of_groups(heads, g), neurons)  # the loss masks query heads
    total_h, total_n = sum(units.heads_per_layer), sum(units.ffn_per_layer)
    full = ch * total_h + cn * total_n
    budget = target.share * full
    fh_l = _floors(units.heads_per_layer, target.min_heads_per_layer)
    fn_l = _floors(units.ffn_per_layer, target.min_neurons_per_layer)
    info: dict = {
        "asked": {target.kind: target.share},
        "head_scorer": target.head_scorer, "neuron_scorer": target.neuron_scorer,
        "min_heads_per_layer": target.min_heads_per_layer, "min_neurons_per_layer": target.min_neurons_per_layer,
        # "head": the cost of one attention unit, a key/value group of query_heads_per_unit query heads
        "unit_cost": {"head": ch, "neuron": cn, "unit": target.kind, "query_heads_per_unit": g},
        "split": target.split,
    }

    if target.split == "importance":
        lh, ih, forced_h = _keep_order(hv, fh_l)
        ln, in_, forced_n = _keep_order(nv, fn_l)
        kh = _head_counts(budget, ch, cn, forced_h, forced_n, total_h, total_n)
        kn = _neurons_for(budget, kh, ch, cn, total_n)
        cum_h = np.concatenate([[0.0], np.cumsum(np.concatenate(hv)[_flat(lh, ih, units.heads_per_layer)])])
        cum_n = np.concatenate([[0.0], np.cumsum(np.concatenate(nv)[_flat(ln, in_, units.ffn_per_layer)])])
        kept_score = cum_h[kh] + cum_n[kn]
        best = int(np.lexsort((kh * ch + kn * cn, kept_score))[-1])  # highest score, then most budget used
        kh_best, kn_best = int(kh[best]), int(kn[best])
        heads = _removed(lh, ih, kh_best, units.heads_per_layer)
        neurons = _removed(ln, in_, kn_best, units.ffn_per_layer)
        info["search"] = {
            "method": "Kwon et al. 2022: for every head count, best heads + best neurons filling the budget",
            "heads_kept": kh_best * g, "neurons_kept": kn_best, "head_counts_tried": len(kh),
            "kept_score": float(kept_score[best]), "removed_score": float(cum_h[-1] + cum_n[-1] - kept_score[best]),
        }
        if g > 1:
            info["search"]["head_groups_kept"] = kh_best
        blocks_h = head_scores.extras.get("_fisher_blocks")
        blocks_n = neuron_scores.extras.get("_fisher_blocks")
        if target.rearrange and blocks_h is not None and blocks_n is not None:
            heads, rh = _rearrange(heads, hv, [_group_block(b, g) for b in blocks_h])
            neurons, rn = _rearrange(neurons, nv, blocks_n)
            info["rearrangement"] = {"heads": rh, "neurons": rn}
    else:
        if evaluate is None:
            raise ValueError("a measured split needs an evaluate callback")
        heads, neurons, info["candidates"], info["chosen"], probes = _measured_split(
            units, hv, nv, fh_l, fn_l, budget, ch, cn, target, evaluate)
        if g > 1:  # candidates count query heads, as everywhere else in plan.json
            for c in info["candidates"]:
                c["head_groups_kept"], c["heads_kept"] = c["heads_kept"], c["heads_kept"] * g
        if probes is not None:
            info["probes"] = probes  # with head groups, "removed" counts groups

    heads = _heads_of_groups(heads, g)
    plan = PruningPlan.build(heads, neurons)
    kept = plan.kept_layout(layout)
    kept_cost = _units_cost(kept, ch, cn)
    info["achieved"] = {**budget_shares(layout, kept, bias, ffn_bias), "heads_kept": sum(kept.heads_per_layer),
                        "neurons_kept": sum(kept.ffn_per_layer)}
    info["budget_cost"] = budget
    info["kept_cost"] = kept_cost
    info["within_one_unit"] = bool(kept_cost <= budget + 1e-6 and budget - kept_cost < max(ch, cn))
    src = dict(source or {})
    src["budget"] = info
    return PruningPlan.build(heads, neurons, src)


def _heads_of_groups(groups: dict[int, list[int]], g: int) -> dict[int, list[int]]:
    """Layer -> removed key/value groups as layer -> their query heads (g*G .. g*G+G-1)."""
    if g == 1:
        return groups
    return {layer: [h for grp in sorted(gs) for h in range(grp * g, (grp + 1) * g)] for layer, gs in groups.items()}


def _group_block(block, g: int) -> np.ndarray:
    """A layer's [heads, heads] Fisher matrix as [groups, groups]: sums of its G x G blocks."""
    b = np.asarray(block, dtype=np.float64)
    n = b.shape[0] // g
    return b.reshape(n, g, n, g).sum(axis=(1, 3))


def _flat(layer: np.ndarray, index: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)
    return starts[layer] + index


def _rearrange(removed: dict[int, list[int]], values: list[np.ndarray], blocks) -> tuple[dict[int, list[int]], dict]:
    out, before, after, moved = {}, 0.0, 0.0, 0
    for layer, v in enumerate(values):
        r = removed.get(layer, [])
        new, b, a = rearrange_layer(np.asarray(blocks[layer]), v, len(r))
        before, after = before + b, after + a
        moved += len(set(new) - set(r))
        if new:
            out[layer] = new
    return out, {"estimate_before": before, "estimate_after": after, "units_swapped": moved}


def _per_layer_rank(values: list[np.ndarray]) -> list[np.ndarray]:
    """A unit's rank within its layer over the layer's size, in (0, 1]: ranking these
    model-wide removes about the same share of every layer."""
    out = []
    for v in values:
        rank = np.empty(len(v))
        rank[np.lexsort((np.arange(len(v)), v))] = np.arange(1, len(v) + 1)
        out.append(rank / max(len(v), 1))
    return out


def _measured_split(layout, hv, nv, fh_l, fn_l, budget, ch, cn, target, evaluate):
    total_h, total_n = sum(layout.heads_per_layer), sum(layout.ffn_per_layer)
    kh_all = _head_counts(budget, ch, cn, int(fh_l.sum()), int(fn_l.sum()), total_h, total_n)
    pick = np.unique(np.round(np.linspace(0, len(kh_all) - 1, min(target.candidates, len(kh_all)))).astype(int))
    counts = kh_all[pick]
    # allocated is not part of search: its lower calibration loss did not survive
    # reconstruct on SST-2 (README, "Accuracy at a compute budget"), so it is asked for
    scopes = ("global", "per_layer") if target.scope == "search" else (target.scope,)
    tried: list[dict] = []
    best = None

    def consider(entry: dict, heads, neurons) -> None:
        nonlocal best
        entry["loss"] = float(evaluate(heads, neurons))
        tried.append(entry)
        if best is None or entry["loss"] < best[0]:
            best = (entry["loss"], len(tried) - 1, heads, neurons)

    probes = None
    for scope in scopes:
        if scope == "allocated":
            probes = _probe_layers(layout, hv, nv, fh_l, fn_l, evaluate)
            for exponent in ALLOCATION_EXPONENTS:
                heads, neurons = _allocate(layout, hv, nv, fh_l, fn_l, budget, ch, cn, probes, exponent)
                kh = total_h - sum(len(v) for v in heads.values())
                kn = total_n - sum(len(v) for v in neurons.values())
                consider({"scope": scope, "exponent": exponent, "heads_kept": kh, "neurons_kept": kn,
                          "head_share_of_budget": kh * ch / max(budget, 1e-30)}, heads, neurons)
            continue
        h_vals = hv if scope == "global" else _per_layer_rank(hv)
        n_vals = nv if scope == "global" else _per_layer_rank(nv)
        lh, ih, _ = _keep_order(h_vals, fh_l)
        ln, in_, _ = _keep_order(n_vals, fn_l)
        for kh in counts.tolist():
            kn = int(_neurons_for(budget, np.array([kh]), ch, cn, total_n)[0])
            heads = _removed(lh, ih, kh, layout.heads_per_layer)
            neurons = _removed(ln, in_, kn, layout.ffn_per_layer)
            consider({"scope": scope, "heads_kept": kh, "neurons_kept": kn,
                      "head_share_of_budget": kh * ch / max(budget, 1e-30)}, heads, neurons)
    _, chosen, heads, neurons = best
    return heads, neurons, tried, chosen, probes


# The allocated scope models the loss added by removing the m lowest-ranked units of
# a (layer, kind) group as s * (m / m_probe)^a, s measured at one probe; a = 2 (the
# second-order shape of a loss at a minimum) and 3 are each tried, and the calibration
# loss picks among them like among the other candidates. Not a = 1: a linear model
# makes every unit of a group cost the same, so the greedy empties whole groups
# (measured on SST-2 at 0.6 with magnitude: heads of layers 1 and 4 and FFN of layers 3
# and 5 removed entirely, a calibration loss 0.005 lower than the best per_layer split,
# but 82.11 dev accuracy after reconstruct against 83.72).
ALLOCATION_EXPONENTS = (2.0, 3.0)
PROBE_SHARE = 0.5


def _probe_layers(layout, hv, nv, fh_l, fn_l, evaluate) -> dict:
    """Measured sensitivity of every (layer, kind): the calibration loss with the
    scorer's lowest PROBE_SHARE of that layer's removable units masked, minus the loss
    of the unpruned model. One evaluation per group plus one."""
    base = float(evaluate({}, {}))
    out: dict = {"base_loss": base, "share": PROBE_SHARE, "heads": [], "neurons": []}
    for kind, values, floors in (("heads", hv, fh_l), ("neurons", nv, fn_l)):
        for layer, v in enumerate(values):
            removable = len(v) - int(floors[layer])
            m = int(round(PROBE_SHARE * removable)) if removable > 1 else removable
            if m <= 0:
                out[kind].append({"removed": 0, "loss_added": 0.0})
                continue
            idx = {layer: _lowest(v, m)}
            loss = float(evaluate(idx, {}) if kind == "heads" else evaluate({}, idx))
            out[kind].append({"removed": m, "loss_added": loss - base})
    return out


def _allocate(layout, hv, nv, fh_l, fn_l, budget, ch, cn, probes, exponent):
    """Units to remove so the kept cost fits the budget at the least modelled loss.

    Each group's modelled loss s (m / m_probe)^a is convex in m for a >= 1, so taking
    removals in increasing order of marginal loss per unit of cost saved is optimal for
    the model (a greedy exchange argument); within a group the scorer's order decides
    which units. Neurons taken last are given back while the budget still holds them."""
    groups = []  # (kind, layer, cost, removable, m_probe, s)
    for kind, values, floors, cost in (("heads", hv, fh_l, ch), ("neurons", nv, fn_l, cn)):
        for layer, v in enumerate(values):
            p = probes[kind][layer]
            groups.append((kind, layer, cost, len(v) - int(floors[layer]), p["removed"], p["loss_added"]))
    scale = max([abs(g[5]) for g in groups] + [1e-12])
    marg, gid, cost_of = [], [], []
    for g, (_, _, cost, removable, mp, s) in enumerate(groups):
        if removable <= 0:
            continue
        m = np.arange(1, removable + 1, dtype=np.float64)
        # a group whose probe did not raise the loss still costs a little per unit, so
        # units are not taken from it in arbitrary order against the others
        s = max(s, 1e-6 * scale)
        mp = max(mp, 1)
        marg.append(s * ((m / mp) ** exponent - ((m - 1) / mp) ** exponent) / cost)
        gid.append(np.full(removable, g))
        cost_of.append(np.full(removable, cost, dtype=np.float64))
    full = ch * sum(layout.heads_per_layer) + cn * sum(layout.ffn_per_layer)
    need = full - budget
    take = np.zeros(len(groups), dtype=np.int64)  # units removed per group
    if marg and need > 1e-9:
        marg_a, gid_a, cost_a = np.concatenate(marg), np.concatenate(gid), np.concatenate(cost_of)
        order = np.lexsort((gid_a, marg_a))  # within a group marginals rise, so this takes prefixes
        saved = np.cumsum(cost_a[order])
        k = int(min(np.searchsorted(saved, need - 1e-9) + 1, len(order)))
        slack = saved[k - 1] - need
        chosen = order[:k]
        keep_back = np.zeros(k, dtype=bool)
        # give back the last-taken neurons while the budget still holds them
        for j in range(k - 1, -1, -1):
            if groups[gid_a[chosen[j]]][0] != "neurons":
                continue
            if slack < cn - 1e-9:
                break
            keep_back[j] = True
            slack -= cn
        take = np.bincount(gid_a[chosen[~keep_back]], minlength=len(groups))
    # groups are the layers' heads, then the layers' neurons, in order
    return _take_lowest(hv, take[:len(hv)].tolist()), _take_lowest(nv, take[len(hv):].tolist())
