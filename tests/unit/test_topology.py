"""The sqrt-JS head metric D, persistence of heads, compress analyze, and the run report."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import gudhi
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial.distance import jensenshannon, pdist, squareform

from compressor.cli import main
from compressor.topology.heads import (
    Diagrams,
    compare_diagrams,
    h0_clusters,
    h0_deaths,
    h0_scores,
    h1_loops,
    head_metric_sums,
    rips_persistence,
)


def _attention(b=2, n=5, q=7, seed=0, causal=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, q, q, generator=g) * 2
    if causal:
        logits = logits.masked_fill(torch.ones(q, q).triu(1).bool(), -math.inf)
    mask = torch.ones(b, q)
    mask[1, q - 2 :] = 0
    # as in a real model: padding keys get no attention, padded query rows are zero
    a = logits.masked_fill(mask[:, None, None, :] == 0, -math.inf).softmax(-1)  # [batch, N, q, k]
    return a * mask[:, None, :, None], mask


@pytest.mark.parametrize("causal", [False, True])
def test_metric_is_the_sum_of_js_distances(causal):
    a, mask = _attention(causal=causal)
    d = head_metric_sums(a, mask).double().numpy()
    direct = np.zeros_like(d)
    for b in range(a.shape[0]):
        for t in range(a.shape[2]):
            if not mask[b, t]:
                continue
            keys = t + 1 if causal else a.shape[3]  # a causal row is a distribution over its prefix
            for i in range(a.shape[1]):
                for j in range(a.shape[1]):
                    if i != j:
                        direct[i, j] += jensenshannon(a[b, i, t, :keys].double(), a[b, j, t, :keys].double(), base=2)
    np.testing.assert_allclose(d, direct, atol=5e-4 * mask.sum().item())


@pytest.mark.parametrize("seed", range(4))
def test_metric_axioms(seed):
    a, mask = _attention(b=3, n=8, q=9, seed=seed)
    a[:, 5] = a[:, 2]  # two identical heads
    d = head_metric_sums(a, mask).double().numpy()
    tokens = mask.sum().item()
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and (d >= 0).all()
    assert d[2, 5] < 1e-3 * tokens  # identity, up to float32 rounding of JS (~3e-4 per token)
    assert d[2, 5] < 0.05 * np.delete(d[2], [2, 5]).min()
    # triangle inequality, all triples at once: d[i, k] <= d[i, j] + d[j, k]
    assert (d[:, None, :] <= d[:, :, None] + d[None, :, :] + 1e-3).all()


def test_h0_closed_form_and_ripser_match_gudhi():
    rng = np.random.default_rng(0)
    d = squareform(pdist(rng.normal(size=(40, 5))))
    ours = rips_persistence(d, max_dimension=1)
    st = gudhi.RipsComplex(distance_matrix=d).create_simplex_tree(max_dimension=2)
    st.compute_persistence()
    for dim in (0, 1):
        ref = np.asarray(st.persistence_intervals_in_dimension(dim)).reshape(-1, 2)
        np.testing.assert_allclose(np.sort(ours.pairs[dim], 0), np.sort(ref, 0))
    np.testing.assert_allclose(h0_deaths(d), np.sort(ours.finite(0)[:, 1]))


def test_h0_structure_names_the_clusters():
    # two tight groups of heads far apart, and one pair of near-twins inside group a
    x = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.1, 0.1001], [5, 5], [5.1, 5], [5, 5.1]])
    d = squareform(pdist(x))
    names = [f"0.{i}" for i in range(4)] + [f"1.{i}" for i in range(3)]
    clusters = h0_clusters(d, names, top=1)
    assert clusters[0]["heads"] == ["1.0", "1.1", "1.2"] and clusters[0]["death"] == pytest.approx(d[:4, 4:].min())
    s = h0_scores(d)
    assert s.argmax() in range(4) and sorted(s)[-2] == pytest.approx(d[:4, 4:].min())  # one survivor per group


def test_h1_loop_of_a_circle_goes_around_it():
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    d = squareform(pdist(np.stack([np.cos(angles), np.sin(angles)], 1)))
    names = [f"h{i}" for i in range(12)]
    dg = rips_persistence(d, 1)
    assert len(dg.pairs[1]) == 1
    loop = h1_loops(d, dg, names)[0]
    assert sorted(loop["heads"]) == sorted(names)  # the cycle passes every point once
    assert loop["birth"] == pytest.approx(d[0, 1]) and loop["death"] > loop["birth"]


def test_diagram_distances():
    a = Diagrams({0: np.array([[0, 1.0], [0, 2.0], [0, math.inf]]), 1: np.array([[1.0, 1.5]])}, 1)
    b = Diagrams({0: np.array([[0, 1.0], [0, 2.5], [0, math.inf]]), 1: np.zeros((0, 2))}, 1)
    same = compare_diagrams(a, a)
    assert same["H0"]["bottleneck"] == pytest.approx(0, abs=1e-12) and same["H1"]["wasserstein"] == pytest.approx(0, abs=1e-12)
    c = compare_diagrams(a, b)
    assert c["H0"]["bottleneck"] == pytest.approx(0.5) and c["H0"]["essential"] == [1, 1]
    assert c["H1"]["bottleneck"] == pytest.approx(0.25)  # the bar matched to the diagonal
    assert Diagrams.from_json(json.loads(json.dumps(a.to_json()))).pairs[0][2, 1] == math.inf


def test_persistence_speed_targets_are_in_reach():
    # not a timing test (see benchmarks/topology.py); only that 144 heads with H1 run
    d = squareform(pdist(np.random.default_rng(0).normal(size=(144, 16))))
    assert len(rips_persistence(d, 1).pairs[0]) == 144


def test_analyze_bert_vs_gpt2(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    out = tmp_path / "an"
    res = CliRunner().invoke(main, ["analyze", "--model", str(tiny_bert_dir), "--model", str(tiny_gpt2_dir),
                                    "--output", str(out), "--num-sequences", "12", "--max-length", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "H0: bottleneck" in res.output
    cmp = json.loads((out / "comparison.json").read_text())
    assert set(cmp) == {"H0", "H1"} and cmp["H0"]["bottleneck"] > 0
    for m in ("model1", "model2"):
        dist = json.loads((out / m / "distances.json").read_text())
        assert len(dist["heads"]) == 12 and dist["tokens"] > 0
        assert (out / m / "barcode.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7 and 'id="comparison"' in html
    res = CliRunner().invoke(main, ["analyze", "--model", str(tiny_bert_dir), "--output", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_topology_scorer_in_a_recipe(tmp_path, tiny_gpt2_dir):
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    recipe = parse_recipe({"model": str(tiny_gpt2_dir), "scorers": ["topology"], "targets": {"heads": {"ratio": 0.25}},
                           "calibration": {"num_sequences": 8, "max_length": 16}})
    run_recipe(recipe, output=tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "scores" / "topology.heads.json").read_text())
    assert set(saved["extras"]["diagrams"]["pairs"]) == {"0", "1"}
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert sum(len(v) for v in plan["heads"].values()) == 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (`make browser` installs it)")
def test_report_renders_in_headless_chromium(tmp_path, tiny_bert_dir):
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    recipe = parse_recipe({"model": str(tiny_bert_dir), "scorers": ["redundancy", "head_types", "sieve_roles", "persistence"],
                           "targets": {"heads": {"ratio": 0.25, "scorer": "redundancy"}, "neurons": {"ratio": 0.3}},
                           "calibration": {"num_sequences": 16, "max_length": 16}})
    run_recipe(recipe, output=tmp_path / "run", progress=False)
    page = tmp_path / "run" / "report.html"
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for section in ("summary", "kept", "evaluation", "scores", "topology", "plan", "stages"):
        assert f'id="{section}"' in dom, section
    assert 'data-images-ok="yes"' in dom
    n = int(dom.split('data-images="')[1].split('"')[0])
    assert n >= 8  # kept grid, 4 score distributions + heatmap + t-SNE, barcode
    for text in ("Head types:", "Sieve roles", "Representatives kept", "alt=\"barcode\""):
        assert text in dom or text in page.read_text(), text


def test_diversity_term_is_the_within_layer_metric_and_trains(tmp_path):
    from compressor.data.glue import load_glue
    from compressor.finetune import finetune
    from compressor.recipe import FinetuneConfig
    from compressor.topology.heads import within_layer_diversity
    from tests.conftest import tiny_model, tiny_tokenizer
    from tests.unit.test_glue import write_glue

    a, mask = _attention(b=3, n=4, q=6, seed=3)
    a.requires_grad_(True)
    div = within_layer_diversity((a,), mask)
    d = head_metric_sums(a.detach(), mask).double()
    expected = d[np.triu_indices(4, 1)].mean() / mask.sum()
    assert div.item() == pytest.approx(expected.item(), abs=1e-3)
    div.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0

    glue = write_glue(tmp_path / "glue")
    tok = tiny_tokenizer(tmp_path)
    train = load_glue("sst2", str(glue), "train")
    spread = {}
    for w in (0.0, 5.0):
        cfg = FinetuneConfig(max_steps=30, lr=3e-3, batch_size=16, diversity=w)
        model, res = finetune(tiny_model("bert"), tok, train, cfg, max_length=16, progress=False)
        enc = tok([" ".join(t) for t in train.texts[:32]], padding=True, return_tensors="pt")
        with torch.no_grad():
            att = model(**enc, output_attentions=True).attentions
        spread[w] = within_layer_diversity(att, enc["attention_mask"]).item()
        assert (res.diversity is None) == (w == 0)
    assert spread[5.0] > spread[0.0] + 0.05, spread
