"""ORT timing sessions: intra-op threads and spinning are set as asked, ORT's defaults otherwise."""

import json

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.evaluate.latency import ort_session
from compressor.export import export_model
from compressor.surgery.prune import apply_plan
from compressor.types import PruningPlan
from tests.conftest import tiny_model

UNEVEN = PruningPlan.build(heads={0: [0, 1]}, neurons={1: list(range(20))})


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_model(apply_plan(tiny_model("bert"), UNEVEN), None, out)
    return out


def test_ort_session_threads_and_spin(onnx_dir):
    path = onnx_dir / "model_optimized.onnx"
    opts = ort_session(path, threads=1, spin=False).get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    opts = ort_session(path, spin=True).get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    default = ort_session(path).get_session_options()
    assert default.intra_op_num_threads == 0  # 0: ORT picks
    with pytest.raises(RuntimeError):  # the entry is unset: ORT's own default (spinning on)
        default.get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(CompressorError, match="threads must be >= 1"):
        ort_session(path, threads=0)


def test_bench_cli_threads_no_spin(onnx_dir, tmp_path):
    out = tmp_path / "lat.json"
    r = CliRunner().invoke(main, ["bench", "--onnx", str(onnx_dir), "--batch-sizes", "1", "--seq-lens", "8",
                                  "--runs", "2", "--warmup", "0", "--threads", "1", "--no-spin", "--json", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {row["backend"] for row in json.loads(out.read_text())} == {"ort-fp32"}
    r = CliRunner().invoke(main, ["bench", "--onnx", str(onnx_dir), "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.output, r.output
