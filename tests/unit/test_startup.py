"""The command line answers help and validation errors without loading torch or
transformers (seconds on a busy machine), and the lazy scorer catalogue matches the
scorers themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
sys.argv = ["compress", *json.loads(sys.argv[1])]
from compressor.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)}),
      file=sys.stderr)
"""


def _probe(args: list[str], cwd) -> tuple[int, list[str], str]:
    # this checkout's compressor, not whichever one the environment has installed
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         cwd=cwd, timeout=120, stdin=subprocess.DEVNULL, env=env)
    *lines, last = run.stderr.strip().splitlines()
    res = json.loads(last)
    return res["code"], res["heavy"], "\n".join(lines)


@pytest.mark.parametrize("args,code,message", [
    (["--help"], 0, ""),
    (["export", "--help"], 0, ""),
    (["--recipe", "{typo}"], 2, "unknown scorer 'magnitud'"),
    (["--recipe", "{bad_ratio}"], 2, "targets.heads.ratio"),
    (["--recipe", "{missing}"], 2, "recipe file not found"),
    (["prune", "--model", "/no/such/model", "--plan", "p.json", "--output", "out"], 2, "model path does not exist"),
    (["export", "--model", "default", "--output", "out", "--atol", "-1"], 2, "--atol must be a finite number in the range x>=0"),
    (["evaluate", "--model", "m", "--task", "sst3"], 2, "unknown GLUE task"),
    (["evaluate", "--model", "m", "--task", "wikitext", "--data-file", "/no/such.txt"], 2, "text file not found"),
    (["evaluate", "--model", "m", "--task", "wikitext"], 2, "--task wikitext needs --data-file"),
    (["finetune", "--model", "/no/such", "--task", "sst2", "--output", "out"], 2, "model path does not exist"),
    (["analyze", "--model", "/no/such", "--output", "out"], 2, "model path does not exist"),
    (["reconstruct", "--model", "/no/such", "--reference", "default", "--output", "out"], 2, "model path does not exist"),
    (["--recipe", "{budget}"], 2, "targets.budget.flops"),
])
def test_help_and_validation_errors_do_not_load_torch(tmp_path, args, code, message):
    (tmp_path / "typo.yaml").write_text("scorers: [magnitud]\n")
    (tmp_path / "bad_ratio.yaml").write_text("scorers: [magnitude]\ntargets: {heads: {ratio: 1.5}}\n")
    (tmp_path / "budget.yaml").write_text("scorers: [{name: fisher, params: {label_free: output}}]\n"
                                          "targets: {budget: {flops: 1.0}}\n")
    args = [a.format(typo=tmp_path / "typo.yaml", bad_ratio=tmp_path / "bad_ratio.yaml",
                     missing=tmp_path / "missing.yaml", budget=tmp_path / "budget.yaml") for a in args]
    got, heavy, err = _probe(args, tmp_path)
    assert got == code, err
    assert "torch" not in heavy and "transformers" not in heavy, heavy
    if message:
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_package_import_is_lazy():
    run = subprocess.run([sys.executable, "-c", "import sys, compressor, compressor.recipe, compressor.types; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr
    import compressor

    assert compressor.PruningPlan.__name__ == "PruningPlan" and callable(compressor.apply_plan)
    with pytest.raises(AttributeError):
        compressor.no_such_name  # noqa: B018


def test_scorer_catalogue_matches_the_scorers():
    from compressor.scorers import SCORERS
    from compressor.scorers.specs import SPECS

    assert set(SPECS) <= set(SCORERS.names())
    for name, spec in SPECS.items():
        cls = SCORERS.get(name)
        assert cls.spec is spec and cls.__module__ == spec.module
        assert cls.params is spec.params and cls.produces == spec.produces and cls.needs == spec.needs


class _Stderr:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty,progress,shown", [(True, True, True), (True, False, False), (False, True, False)])
def test_stage_lines_only_on_a_terminal_and_not_quiet(monkeypatch, tty, progress, shown):
    from compressor import progress as prog

    err = _Stderr(tty)
    monkeypatch.setattr(prog.sys, "stderr", err)
    monkeypatch.setattr(prog, "_QUIET_BELOW_S", 0.0)
    timer = prog.StageTimer(progress)
    with timer("load_model"):
        pass
    with timer("load_model"):
        pass
    assert set(timer.seconds) == {"load_model"} and timer.seconds["load_model"] >= 0
    assert (err.text.count("compressor: load model ...") == 2) is shown
    assert ("done in" in err.text) is shown
