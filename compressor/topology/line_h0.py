"""Zero-dimensional persistence of points on a line, in closed form.

For the Vietoris-Rips filtration of points x_1..x_N on the real line (filtration value
of an edge = its length, as in gudhi's RipsComplex), every point is born at 0 and
components merge exactly along the minimum spanning tree, which on a line is the chain
of sorted neighbours. So the N-1 finite death times are the consecutive gaps of the
sorted values, plus one infinite bar. Sorting every column at once gives all neurons'
diagrams in one vectorized O(N log N) step instead of N-1 union-find steps per neuron.

Duplicate values give zero-length bars [0, 0]; gudhi's ``persistence()`` drops bars
of persistence <= 0 by default, so the statistics here ignore them too.

numpy's sort is used rather than torch's: on this CPU it is ~8x faster for rows of
1,000 floats (SIMD quicksort), which is what puts a BERT-base layer set under 0.5 s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..scorers.specs import STATISTICS  # noqa: F401  (the statistics a recipe may name)


def line_h0_deaths(x: torch.Tensor | np.ndarray, sort: bool = False) -> np.ndarray:
    """Finite H0 death times of each column's points.

    x: [points, columns] -> [columns, points - 1]: the gaps between neighbours in sorted
    order (ascending per row if ``sort``); zero entries are zero-length bars.
    """
    x = torch.as_tensor(x).detach().cpu()
    xt = x.t().contiguous().numpy()  # torch's transposing copy is ~5x numpy's here
    values = np.sort(xt, axis=1)  # [columns, points]: sort along the contiguous axis
    gaps = np.diff(values, axis=1)  # [columns, points - 1]
    return np.sort(gaps, axis=1) if sort else gaps


def death_statistic(deaths: np.ndarray, statistic: str, radius: float = 0.0) -> np.ndarray:
    """Summarize each row of death times ([columns, bars], any order) into one number.

    Zero-length bars are ignored; a column with no positive bar (a constant neuron)
    scores 0 under every statistic, the lowest possible. Sums are taken in float64.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; one of {STATISTICS}")
    cols, bars = deaths.shape
    if bars == 0:
        return np.zeros(cols)
    if statistic == "max_death":
        return deaths.max(1).astype(np.float64)
    if statistic == "total_persistence":
        return deaths.sum(1, dtype=np.float64)
    if statistic == "count_above":
        return (deaths > radius).sum(1).astype(np.float64)
    count = (deaths > 0).sum(1)  # [columns] positive bars
    if statistic == "mean_death":
        return deaths.sum(1, dtype=np.float64) / np.maximum(count, 1)
    # median of the positive bars, which sit at the end of each ascending row
    ordered = np.sort(deaths, axis=1).astype(np.float64)
    first = bars - count
    lo = np.clip(first + (count - 1) // 2, 0, bars - 1)
    hi = np.clip(first + count // 2, 0, bars - 1)
    rows = np.arange(cols)
    med = (ordered[rows, lo] + ordered[rows, hi]) / 2
    return np.where(count > 0, med, 0.0)


def layer_scores(layers: Sequence[torch.Tensor | np.ndarray], statistic: str, radius: float = 0.0) -> list[np.ndarray]:
    """``death_statistic(line_h0_deaths(x))`` for every layer's [points, neurons] array.

    Layers run in parallel threads: numpy's sort releases the GIL, so on 2 cores this
    nearly halves the wall time.
    """
    workers = max(1, min(len(layers), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda x: death_statistic(line_h0_deaths(x), statistic, radius), layers))
