"""reconstruct on the real MiniLM: fit on SST-2 train sentences, check on other ones."""

from __future__ import annotations

import pytest

from compressor import apply_plan, load_model
from compressor.arch import adapter_for
from compressor.data.calibration import calibration_batches
from compressor.data.glue import glue_texts
from compressor.models import load_tokenizer
from compressor.planning import make_plan
from compressor.recipe import (
    CalibrationConfig,
    HeadTarget,
    NeuronTarget,
    ReconstructConfig,
)
from compressor.reconstruct import reconstruct
from compressor.scorers import SCORERS, ScoringContext
from tests.conftest import SHARED
from tests.unit.test_reconstruct import measured_errors

pytestmark = pytest.mark.integration


def test_reconstruct_minilm_sst2(tmp_path):
    glue = SHARED / "glue"
    if not (glue / "SST-2" / "train.tsv").is_file():
        pytest.skip("no SST-2 in ../shared/data/glue")
    model, tok = load_model("default"), load_tokenizer("default")
    a = adapter_for(model)
    mag = SCORERS.get("magnitude")()
    mag.begin(ScoringContext(model, a, a.layout(), 0, tok))
    scores = mag.finish()
    # a third of the heads and half of the FFN neurons by weight norm
    plan = make_plan(a.layout(), scores.heads, scores.neurons, HeadTarget(ratio=1 / 3, scorer="magnitude"),
                     NeuronTarget(ratio=0.5, scorer="magnitude"), {})
    cal = CalibrationConfig(source="glue", task="sst2", data_dir=str(glue), num_sequences=128)
    fit = calibration_batches(cal, tok, model.config, 0)
    # held out: other train sentences, as a text file
    held_file = tmp_path / "held.txt"
    held_file.write_text("\n".join(t[0] for t in glue_texts("sst2", str(glue), "train")[5000:5128]) + "\n")
    held = calibration_batches(CalibrationConfig(source="text_file", path=str(held_file), num_sequences=128),
                               tok, model.config, 0)
    pruned = apply_plan(model, plan)
    res = reconstruct(pruned, model, adapter_for(pruned), a, fit, ReconstructConfig(), progress=False)
    assert res.tokens > 769
    for lf in res.layers:
        assert lf.error_reconstructed < lf.error_surgery
    # held-out sentences: the refit generalizes (errors well below surgery's in every layer)
    surgery = measured_errors(apply_plan(model, plan), model, held)
    after = measured_errors(pruned, model, held)
    for b, a_ in zip(surgery, after, strict=True):
        assert a_ < 0.7 * b, (surgery, after)
