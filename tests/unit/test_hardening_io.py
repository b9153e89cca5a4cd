"""Bad, hostile and odd input across the command line (issue 15, part A): outputs,
usage errors, interruptions, untrusted model folders and files, corrupted files.

Every failing case asserts the same invariant: exit code 2 (130 for an interruption),
exactly one stderr line starting ``error:``, and every file under the work folder
byte-identical before and after (so nothing was written and no input was modified).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.outputs import MARKER, atomic_output, clean_stale, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
PLAN = {"format": "compressor.plan/1", "heads": {"0": [1]}, "neurons": {"1": [0, 3]}}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(res, code: int = 2, message: str = "") -> str:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0], (message, lines[0])
    assert "Traceback" not in res.output and "Aborted" not in res.output and "Usage:" not in res.output
    return lines[0]


def fails_cleanly(work: Path, args: list, message: str = "", code: int = 2) -> str:
    before = snapshot(work)
    res = invoke(args)
    line = assert_one_error(res, code, message)
    assert snapshot(work) == before, "something under the work folder was written or modified"
    return line


@pytest.fixture
def work(tmp_path, tiny_bert_dir) -> Path:
    """tmp_path holding tiny-bert/ (with tokenizer) and plan.json."""
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    return tmp_path


def prune_args(work: Path, output: Path, *extra) -> list:
    return ["prune", "--model", work / "tiny-bert", "--plan", work / "plan.json", "--output", output, "--quiet", *extra]


# --- 1. outputs ----------------------------------------------------------------------------


def test_overwrite_replaces_only_compressor_outputs(work):
    foreign = work / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    line = fails_cleanly(work, prune_args(work, foreign, "--overwrite"), "was not written by compressor")
    assert str(foreign) in line and MARKER in line
    # a folder compressor wrote carries the marker and is replaced on --overwrite
    out = work / "out"
    assert invoke(prune_args(work, out)).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "compressor" and marker["pid"] > 0
    (out / "stale.txt").write_text("from an older run")
    res = invoke(prune_args(work, out, "--overwrite"))
    assert res.exit_code == 0, res.output
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file() and (out / MARKER).is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".out.")]  # no temporary leftovers


def test_forbidden_output_folders(work, monkeypatch):
    home = work / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cases = [
        (".", "is the current folder"),
        (str(work), "is the current folder"),
        (str(work.parent), "holds the current folder"),
        (str(home), "is the home folder"),
        ("/", "is a filesystem root"),
        (str(work / "tiny-bert"), "overlaps the input model"),
        (str(work / "tiny-bert" / "sub"), "overlaps the input model"),
        (str(work / "plan.json"), "is a file"),  # click refuses a file for a folder option
        (str(work / "plan.json" / "sub"), "is a file, not a folder"),
    ]
    for output, message in cases:
        fails_cleanly(work, prune_args(work, Path(output), "--overwrite"), message)
    assert (home / "notes.txt").read_text() == "mine"


def test_output_holding_an_input_file_is_refused(work):
    out = work / "out"
    assert invoke(prune_args(work, out)).exit_code == 0  # out/ holds plan.json, and is compressor's
    args = ["prune", "--model", work / "tiny-bert", "--plan", out / "plan.json", "--output", out, "--overwrite"]
    fails_cleanly(work, args, "would replace the input")
    # a recipe inside the output folder is an input too
    (out / "r.yaml").write_text(f"model: {work / 'tiny-bert'}\nscorers: [magnitude]\n"
                                "targets: {heads: {scorer: magnitude, ratio: 0.25}}\n")
    fails_cleanly(work, ["--recipe", out / "r.yaml", "--output", out, "--overwrite", "--quiet"], "would replace the input")


def test_json_output_paths_are_checked_before_any_work(work):
    model = work / "tiny-bert"
    glue = work / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_text("sentence\tlabel\nthe movie was good\t1\n")
    (work / "afile").write_text("x")
    base = ["evaluate", "--model", model, "--task", "sst2", "--data-dir", work / "glue", "--quiet", "--json"]
    fails_cleanly(work, [*base, model / "config.json"], "overlaps the input model")
    fails_cleanly(work, [*base, glue / "dev.tsv"], "is inside the input folder")
    fails_cleanly(work, [*base, work / "glue" / "res.json"], "is inside the input folder")
    fails_cleanly(work, [*base, work], "is a directory")  # click's own check of the option
    fails_cleanly(work, [*base, work / "afile" / "res.json"], "is a file, not a folder")
    bench = ["bench", "--model", model, "--runs", "1", "--warmup", "0", "--batch-sizes", "1", "--seq-lens", "4", "--json"]
    fails_cleanly(work, [*bench, model / "model.safetensors"], "overlaps the input model")
    fails_cleanly(work, [*bench, work], "is a directory")


def test_json_outputs_are_atomic_and_honour_the_umask(tmp_path):
    target = tmp_path / "res.json"
    target.write_text('{"old": 1}\n')
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})  # fails half-way through serialising
    assert target.read_text() == '{"old": 1}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]
    old = os.umask(0o027)
    try:
        write_json_atomic(target, {"new": [1, 2]})
    finally:
        os.umask(old)
    assert json.loads(target.read_text()) == {"new": [1, 2]}
    assert (target.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]


def test_saved_files_honour_the_umask(work):
    old = os.umask(0o027)
    try:
        res = invoke(prune_args(work, work / "out"))
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    out = work / "out"
    modes = {str(p): (p.is_dir(), p.stat().st_mode & 0o777) for p in [out, *out.rglob("*")]}
    assert len(modes) > 4 and all(m == (0o750 if d else 0o640) for d, m in modes.values()), modes


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_siblings_are_cleaned_when_ours_and_dead(work):
    import socket

    dead = _dead_pid()
    ours = work / f".out.tmp-{dead}-abc123"
    ours.mkdir()
    (ours / MARKER).write_text(json.dumps({"tool": "compressor", "pid": dead, "host": socket.gethostname()}))
    (ours / "model.safetensors").write_bytes(b"half")
    alive = work / f".out.tmp-{os.getpid()}-def456"  # a running process's: left alone
    alive.mkdir()
    (alive / MARKER).write_text(json.dumps({"tool": "compressor", "pid": os.getpid(), "host": socket.gethostname()}))
    stranger = work / f".out.tmp-{dead}-zzz999"  # no marker: not recognisably ours
    stranger.mkdir()
    res = invoke(prune_args(work, work / "out"))
    assert res.exit_code == 0, res.output
    assert not ours.exists() and alive.is_dir() and stranger.is_dir()
    assert clean_stale(work / "out") == sorted([alive, stranger])  # named (in a note), not touched


def test_old_output_is_restored_when_a_run_died_mid_swap(tmp_path):
    import socket

    dead = _dead_pid()
    old = tmp_path / f".out.old-{dead}-abc123"
    (old / "x").mkdir(parents=True)
    (old / MARKER).write_text(json.dumps({"tool": "compressor", "pid": dead, "host": socket.gethostname()}))
    (old / "x" / "metrics.json").write_text("{}")
    assert clean_stale(tmp_path / "out") == []
    assert (tmp_path / "out" / "metrics.json").read_text() == "{}" and not old.exists()


# --- 2. command line -----------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "No such option '--bogus'"),
    (["bogus-command"], "No such command 'bogus-command'"),
    (["prune"], "Missing option '--model'"),
    (["bench", "--runs", "x"], "--runs must be an integer"),
    (["bench", "--model", "default", "--runs", "0"], "--runs must be an integer"),
    (["export", "--model", "default", "--output", "o", "--quantize", "int4"], "Invalid value for '--quantize'"),
    (["prune", "--model", "default", "--plan"], "'--plan' requires an argument"),
])
def test_usage_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    line = fails_cleanly(tmp_path, args, message)
    # click's own usage errors point at the help; the numeric option types say the range
    assert line.endswith("--help'") or "must be an integer in the range" in line


def test_no_arguments_and_help_still_exit_0():
    for args in ([], ["--help"], ["bench", "--help"]):
        res = invoke(args)
        assert res.exit_code == 0 and "Usage:" in res.output and not res.stderr


def test_ctrl_c_inside_a_stage_exits_130_and_leaves_nothing(work, monkeypatch):
    from compressor import pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_model", interrupted)  # inside atomic_output, after the temp folder exists
    fails_cleanly(work, prune_args(work, work / "out"), "interrupted", code=130)


def test_keyboard_interrupt_cleans_the_temporary_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "out", False) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


SIGNAL_PROBE = """
import os, signal, sys, time
# as when launched from a terminal: a background job (CI under nohup, `cmd &`) inherits
# SIGINT ignored, and then Ctrl-C never reaches it at all
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["compress", *sys.argv[1:]]
import compressor.pipeline as pipeline
real = pipeline.save_model
def slow_save(net, folder, tokenizer=None):
    real(net, folder, tokenizer)          # the temporary folder now holds files
    os.kill(os.getpid(), signal.{sig})
    time.sleep(30)
pipeline.save_model = slow_save
from compressor.cli import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_real_signal_during_save(work, sig):
    before = snapshot(work)
    run = subprocess.run([sys.executable, "-c", SIGNAL_PROBE.replace("{sig}", sig),
                          *map(str, prune_args(work, work / "out"))], capture_output=True, text=True, timeout=300,
                         cwd=REPO, stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip() == "error: interrupted", run.stderr
    assert snapshot(work) == before


# --- 3. untrusted input --------------------------------------------------------------------


def test_every_pretrained_load_refuses_remote_code_and_no_pickle_loads():
    """Source scan: every from_pretrained call passes trust_remote_code=False; every
    torch.load passes weights_only=True."""
    calls = 0
    for f in (REPO / "compressor").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "from_pretrained":
                calls += 1
                v = kw.get("trust_remote_code")
                assert isinstance(v, ast.Constant) and v.value is False, f"{f}:{node.lineno}"
            if node.func.attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                v = kw.get("weights_only")
                assert isinstance(v, ast.Constant) and v.value is True, f"{f}:{node.lineno}"
    assert calls >= 3


def _remote_code_folder(root: Path) -> Path:
    folder = root / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil-net", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(root / 'PWNED')!r}, 'w').write('ran')\n")
    return folder


def test_remote_code_folder_is_refused_in_process(tmp_path):
    from compressor.models import load_model

    folder = _remote_code_folder(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    line = fails_cleanly(tmp_path, ["prune", "--model", folder, "--plan", tmp_path / "plan.json",
                                    "--output", tmp_path / "o"], "never runs code from a model folder")
    assert "unsupported architecture 'evil-net'" in line
    with pytest.raises(CompressorError, match="auto_map"):
        load_model(str(folder))
    assert not (tmp_path / "PWNED").exists()


def test_remote_code_folder_never_prompts_on_a_terminal(tmp_path):
    """With a terminal on stdin transformers would ask whether to run the folder's code;
    compressor must answer with one line instead, and never run it."""
    import pty

    folder = _remote_code_folder(tmp_path)
    code = ("import sys; from compressor.models import load_model\n"
            "from compressor.errors import CompressorError\n"
            "try:\n    load_model(sys.argv[1])\nexcept CompressorError as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n")
    master, slave = pty.openpty()
    try:
        run = subprocess.run([sys.executable, "-c", code, str(folder)], stdin=slave, capture_output=True, text=True,
                             timeout=300, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        os.close(slave)
        os.close(master)
    assert run.returncode == 2 and run.stderr.strip().startswith("error: ") and "auto_map" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("body,message", [
    ("scorers: [magnitude]\nscorers: [random]\n", "names the key 'scorers' twice"),
    ("a: &x [1, 2]\nb: *x\n", "anchors and aliases are not allowed"),
    ("seed: 1\n<<: {seed: 2}\n", "'<<' merge key"),
    ("scorers: " + "[" * 60 + "]" * 60 + "\n", "nested more than"),
    ("# padding\n" * 120_000, "the limit is 1,048,576"),
    (b"description: caf\xe9\n", "is not UTF-8 text"),
])
def test_hostile_recipes(tmp_path, monkeypatch, body, message):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(body if isinstance(body, bytes) else body.encode())
    line = fails_cleanly(tmp_path, ["--recipe", recipe, "--quiet"], message)
    assert str(recipe) in line


def test_non_utf8_input_files(work, monkeypatch):
    monkeypatch.chdir(work)
    (work / "latin1-plan.json").write_bytes(b'{"format": "compressor.plan/1", "source": {"note": "caf\xe9"}}')
    fails_cleanly(work, ["prune", "--model", work / "tiny-bert", "--plan", work / "latin1-plan.json", "--output",
                         work / "o"], "latin1-plan.json is not UTF-8 text")
    (work / "cal.txt").write_bytes(b"the movie was good\nun film tr\xe8s bon\n")
    recipe = work / "r.yaml"
    recipe.write_text(f"model: {work / 'tiny-bert'}\nscorers: [persistence]\n"
                      "calibration: {num_sequences: 4, batch_size: 2, min_length: 4, max_length: 8}\n"
                      "targets: {neurons: {scorer: persistence, percentile: 50}}\n")
    fails_cleanly(work, ["--recipe", recipe, "--calibration-text", work / "cal.txt", "--output", work / "o", "--quiet"],
                  "cal.txt is not UTF-8 text")
    (work / "glue" / "SST-2").mkdir(parents=True)
    (work / "glue" / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ntr\xe8s bon\t1\n")
    fails_cleanly(work, ["evaluate", "--model", work / "tiny-bert", "--task", "sst2", "--data-dir", work / "glue",
                         "--quiet"], "dev.tsv is not UTF-8 text")


def test_plan_with_a_duplicate_key_is_refused(work):
    (work / "dup.json").write_text('{"format": "compressor.plan/1", "heads": {"0": [1]}, "heads": {"0": [2]}}')
    fails_cleanly(work, ["prune", "--model", work / "tiny-bert", "--plan", work / "dup.json", "--output", work / "o"],
                  "names the key 'heads' twice")


# --- 4. corrupted files --------------------------------------------------------------------


def _corrupt(work: Path, name: str, how: str) -> Path:
    f = work / "tiny-bert" / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbage\xff" * 3 + data[30:])
    return f


@pytest.mark.parametrize("name,how,message", [
    ("config.json", "truncate", "is not valid JSON"),
    ("config.json", "garble", "is not UTF-8 text"),
    ("model.safetensors", "truncate", "is corrupted or truncated"),
    ("model.safetensors", "garble", "is corrupted or truncated"),
    ("tokenizer.json", "truncate", "is not valid JSON"),
    ("tokenizer_config.json", "garble", "is not UTF-8 text"),
])
def test_corrupted_model_files(work, name, how, message):
    f = _corrupt(work, name, how)
    for args in (prune_args(work, work / "o"),
                 ["export", "--model", work / "tiny-bert", "--output", work / "o"],
                 ["bench", "--model", work / "tiny-bert", "--runs", "1"],
                 ["evaluate", "--model", work / "tiny-bert", "--task", "sst2", "--data-dir", work / "none"]):
        line = fails_cleanly(work, args, message)
        assert str(f) in line, line


def test_corrupted_files_in_process_api(work):
    """The Python API checks the same files (no CLI precheck in front of it)."""
    from compressor.models import load_model, load_tokenizer

    _corrupt(work, "model.safetensors", "truncate")
    with pytest.raises(CompressorError, match="model.safetensors is corrupted or truncated"):
        load_model(str(work / "tiny-bert"))
    (work / "tok").mkdir()
    (work / "tok" / "config.json").write_text((work / "tiny-bert" / "config.json").read_text())
    (work / "tok" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(CompressorError, match="tokenizer"):
        load_tokenizer(str(work / "tok"))


def test_corrupted_onnx_graph(work):
    onnx_dir = work / "onnx"
    onnx_dir.mkdir()
    for f in (work / "tiny-bert").iterdir():
        if f.suffix != ".safetensors":
            (onnx_dir / f.name).write_bytes(f.read_bytes())
    (onnx_dir / "model.onnx").write_bytes(b"\x08\x07\x12\x04garbage-not-a-graph" * 10)
    (work / "glue" / "SST-2").mkdir(parents=True)
    (work / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nthe movie was good\t1\n")
    msg = "model.onnx cannot be loaded"
    fails_cleanly(work, ["evaluate", "--model", onnx_dir / "model.onnx", "--task", "sst2", "--data-dir", work / "glue",
                         "--quiet"], msg)
    fails_cleanly(work, ["bench", "--onnx", onnx_dir, "--runs", "1", "--warmup", "0", "--batch-sizes", "1",
                         "--seq-lens", "4"], msg)


@pytest.mark.parametrize("content,message", [("", "is empty"), ("  \n", "is empty"), ('{"format": "compressor.pl',
                                                                                    "is not valid JSON")])
def test_empty_or_truncated_plan(work, content, message):
    (work / "plan.json").write_text(content)
    line = fails_cleanly(work, prune_args(work, work / "o"), message)
    assert str(work / "plan.json") in line


def test_startup_stays_lazy_for_the_new_checks(tmp_path):
    """Usage errors, hostile recipes and refused outputs answer before torch loads."""
    (tmp_path / "dup.yaml").write_text("seed: 1\nseed: 2\n")
    probe = textwrap.dedent("""
        import sys
        from compressor.cli import main
        try:
            main(sys.argv[1:])
        except SystemExit as e:
            print(e.code, "torch" in sys.modules, file=sys.stderr)
    """)
    for args in (["--bogus"], ["--recipe", str(tmp_path / "dup.yaml")], ["bench", "--runs", "x"],
                 ["prune", "--model", "default", "--plan", str(tmp_path / "dup.yaml"), "--output", "/"]):
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120,
                             cwd=REPO, stdin=subprocess.DEVNULL)
        *lines, last = run.stderr.strip().splitlines()
        assert last == "2 False", (args, run.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, run.stderr)
        assert time.monotonic() - t0 < 60


def test_stale_json_temp_files_are_cleaned(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".res.json.tmp-{dead}-abc123"
    stale.write_text("{half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / f".res.json.tmp-{dead}-def456"  # too young to be sure: kept
    fresh.write_text("{half")
    write_json_atomic(tmp_path / "res.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "res.json"]


def test_supported_model_naming_custom_code_loads_the_builtin_class(work):
    """A BERT folder whose config also names custom code (auto_map) loads as plain BERT:
    the folder's Python file is never imported."""
    from compressor.models import load_model

    folder = work / "tiny-bert"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(work / 'PWNED')!r}, 'w').write('ran')\n")
    model = load_model(str(folder))
    assert type(model).__name__ == "BertModel"
    assert not (work / "PWNED").exists()


def test_pickled_weights_are_loaded_weights_only(tmp_path):
    """A pytorch_model.bin whose pickle would run a command is refused, never unpickled."""
    import torch

    from tests.conftest import tiny_model

    folder = tmp_path / "m"
    tiny_model("bert").save_pretrained(folder, safe_serialization=False)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"embeddings.word_embeddings.weight": Evil()}, folder / "pytorch_model.bin")
    line = fails_cleanly(tmp_path, ["export", "--model", folder, "--output", tmp_path / "o"],
                         "only weights-only loading is allowed")
    assert str(folder / "pytorch_model.bin") in line and not (tmp_path / "PWNED").exists()
