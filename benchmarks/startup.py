"""How fast the command line answers: help and validation errors, as a ratio to a bare
`python -c pass` and to `import torch`, timed interleaved (best of N runs each).

Target: every row under 1 s, none importing torch. Run: python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

COMMANDS = {
    "compress --help": ["--help"],
    "compress export --help": ["export", "--help"],
    "recipe with a typo": ["--recipe", "{typo}"],
    "recipe field out of range": ["--recipe", "{bad}"],
    "prune: missing model": ["prune", "--model", "/no/such", "--plan", "p.json", "--output", "out"],
    "evaluate: unknown task": ["evaluate", "--model", "m", "--task", "sst3"],
}


def run(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "typo.yaml").write_text("scorers: [magnitud]\n")
        (cwd / "bad.yaml").write_text("scorers: [magnitude]\ntargets: {heads: {ratio: 1.5}}\n")
        py = [sys.executable]
        cli = py + ["-m", "compressor.cli"]
        subjects = {"python -c pass": py + ["-c", "pass"], "import torch": py + ["-c", "import torch"]}
        subjects.update({k: cli + [a.format(typo="typo.yaml", bad="bad.yaml") for a in v] for k, v in COMMANDS.items()})
        best = {k: float("inf") for k in subjects}
        for _ in range(args.runs):  # interleaved: drift hits every row alike
            for k, argv in subjects.items():
                best[k] = min(best[k], run(argv, cwd))
    base = best["python -c pass"]
    rows = [{"command": k, "seconds": round(v, 3), "x python": round(v / base, 1),
             "x import torch": round(v / best["import torch"], 2), "under 1 s": v < 1.0} for k, v in best.items()]
    report("startup", rows, {"runs": args.runs})


if __name__ == "__main__":
    main()
