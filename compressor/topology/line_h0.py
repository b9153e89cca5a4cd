"""Zero-dimensional persistence of points on a line, in closed form.

For the Vietoris-Rips filtration of points x_1..x_N on the real line (filtration value
of an edge = its length, as in gudhi's RipsComplex), every point is born at 0 and
components merge exactly along the minimum spanning tree, which on a line is the chain
of sorted neighbours. So the N-1 finite death times are the consecutive gaps of the
sorted values, plus one infinite bar. Sorting every column at once gives all neurons'
diagrams in one O(N log N) tensor op instead of N-1 union-find steps per neuron.

Duplicate values give zero-length bars [0, 0]; gudhi's ``persistence()`` drops bars
of persistence <= 0 by default, so the statistics here ignore them too.
"""

from __future__ import annotations

import torch

STATISTICS = ("max_death", "mean_death", "median_death", "total_persistence", "count_above")


def line_h0_deaths(x: torch.Tensor) -> torch.Tensor:
    """Finite H0 death times, ascending, of each column's points.

    x: [points, columns] -> [columns, points - 1]; zero entries are zero-length bars.
    """
    xt = x.t().contiguous()  # [columns, points]: sort along the contiguous axis
    values, _ = torch.sort(xt, dim=1)
    gaps = values[:, 1:] - values[:, :-1]  # [columns, points - 1]
    return torch.sort(gaps, dim=1).values


def death_statistic(deaths: torch.Tensor, statistic: str, radius: float = 0.0) -> torch.Tensor:
    """Summarize each row of ascending death times ([columns, bars]) into one number.

    Zero-length bars are ignored; a column with no positive bar (a constant neuron)
    scores 0 under every statistic, the lowest possible.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; one of {STATISTICS}")
    deaths = deaths.double()  # [columns, bars]
    cols, bars = deaths.shape
    if bars == 0:
        return deaths.new_zeros(cols)
    positive = deaths > 0
    count = positive.sum(1)  # [columns]
    if statistic == "max_death":
        return deaths[:, -1].clamp_min(0)
    if statistic == "total_persistence":
        return deaths.sum(1)
    if statistic == "count_above":
        return (deaths > radius).sum(1).double()
    if statistic == "mean_death":
        return deaths.sum(1) / count.clamp_min(1)
    # median of the positive bars, which sit at the end of each ascending row
    first = bars - count  # index of the first positive bar
    lo = (first + (count - 1) // 2).clamp(0, bars - 1)
    hi = (first + count // 2).clamp(0, bars - 1)
    med = (deaths.gather(1, lo[:, None]) + deaths.gather(1, hi[:, None])).squeeze(1) / 2
    return torch.where(count > 0, med, torch.zeros_like(med))
