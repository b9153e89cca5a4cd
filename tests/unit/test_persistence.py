"""OBCE persistence: closed form == gudhi, statistics on hand-made data, the scorer."""

from __future__ import annotations

import gudhi
import numpy as np
import pytest
import torch

from compressor.topology.line_h0 import STATISTICS, death_statistic, line_h0_deaths


def gudhi_h0_deaths(points: np.ndarray) -> np.ndarray:
    rips = gudhi.RipsComplex(points=points.reshape(-1, 1).astype(np.float64), max_edge_length=np.inf)
    st = rips.create_simplex_tree(max_dimension=1)
    bars = st.persistence()  # default: bars of persistence <= 0 are left out
    return np.sort([d for dim, (b, d) in bars if dim == 0 and np.isfinite(d)])


def data(kind: str, rng) -> np.ndarray:
    if kind == "normal":
        return rng.normal(size=(60, 8))
    if kind == "heavy":
        return rng.standard_cauchy(size=(60, 8))
    if kind == "duplicates":
        return rng.integers(0, 5, size=(60, 8)).astype(np.float64)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["normal", "heavy", "duplicates"])
def test_closed_form_equals_gudhi(kind):
    x = data(kind, np.random.default_rng(1))
    ours = line_h0_deaths(torch.tensor(x, dtype=torch.float64), sort=True)  # [columns, points-1]
    for col in range(x.shape[1]):
        ref = gudhi_h0_deaths(x[:, col])
        mine = ours[col][ours[col] > 0]
        np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-12)
    if kind == "duplicates":
        assert (ours == 0).sum() > 0  # zero-length bars exist and are dropped like gudhi's


def test_statistics_on_hand_made_points():
    # one neuron with points 0, 1, 1, 4, 10: gaps 1, 0, 3, 6 -> positive deaths 1, 3, 6
    x = torch.tensor([[0.0], [1.0], [1.0], [4.0], [10.0]])
    d = line_h0_deaths(x)
    assert d.tolist() == [[1.0, 0.0, 3.0, 6.0]]  # gaps in point order
    assert line_h0_deaths(x, sort=True).tolist() == [[0.0, 1.0, 3.0, 6.0]]
    expect = {"max_death": 6.0, "mean_death": 10 / 3, "median_death": 3.0, "total_persistence": 10.0}
    for stat, value in expect.items():
        assert death_statistic(d, stat)[0] == pytest.approx(value)
    assert death_statistic(d, "count_above", radius=2.0)[0] == 2
    # even number of positive bars: median is the mean of the middle two
    d2 = line_h0_deaths(torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]]))  # gaps 1, 2, 4, 8
    assert death_statistic(d2, "median_death")[0] == pytest.approx(3.0)


@pytest.mark.parametrize("stat", STATISTICS)
def test_constant_neuron_scores_lowest(stat):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(50, 5)))
    x[:, 2] = 0.7  # constant
    scores = death_statistic(line_h0_deaths(x), stat, radius=0.001)
    assert scores[2] == 0
    assert scores.argmin() == 2 and (scores[[0, 1, 3, 4]] > 0).all()


def test_persistence_scorer_on_tiny_model():
    from compressor.arch import adapter_for
    from compressor.capture import run_capture
    from compressor.data.calibration import calibration_batches
    from compressor.recipe import CalibrationConfig
    from compressor.scorers import SCORERS, ScoringContext
    from tests.conftest import tiny_model

    model = tiny_model("bert")
    a = adapter_for(model)
    scorer = SCORERS.get("persistence")(statistic="total_persistence")
    scorer.begin(ScoringContext(model, a, a.layout(), 0))
    cfg = CalibrationConfig(num_sequences=40, batch_size=16, min_length=4, max_length=12)
    run_capture(model, a, calibration_batches(cfg, None, model.config, 0), [scorer], progress=False)
    res = scorer.finish().neurons
    assert [len(v) for v in res.values] == [37, 37, 37]
    assert res.extras["inputs"] == 40
    assert all((v >= 0).all() and (v > 0).any() for v in res.values)
