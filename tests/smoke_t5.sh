#!/usr/bin/env bash
# Smoke subset (pytest -m smoke, about a minute on 2 cores): a recipe run on a tiny BERT
# (fine-tune, prune, recover, export with parity, evaluate), CLI export with the parity
# check and a folder ONNX Runtime (and optimum, where installed) loads, GPT-2 recipe and
# export, and the one-line error rule. CI runs it in a second environment with
# transformers 5, where optimum's exporter cannot be installed.
#   PYTHON=/path/to/venv/bin/python tests/smoke_t5.sh
# EXPECT_TRANSFORMERS_MAJOR (default 5) makes a run in the wrong environment fail loudly;
# set it to 4 (or empty, to skip the check) to run the same subset elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
EXPECT=${EXPECT_TRANSFORMERS_MAJOR-5}
"$PYTHON" - "$EXPECT" <<'PY'
import sys
import torch, transformers
from compressor.compat import optimum_exporter_available
from compressor.export.onnx import choose_exporter
print(f"smoke: python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"optimum exporter {'installed' if optimum_exporter_available() else 'absent'}, exporter used: {choose_exporter()}")
want = sys.argv[1]
if want and transformers.__version__.split(".")[0] != want:
    sys.exit(f"smoke: expected transformers {want}.x, found {transformers.__version__}")
PY
HF_HUB_OFFLINE=1 exec "$PYTHON" -m pytest -q -p no:cacheprovider -m smoke tests/unit
