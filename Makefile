# Two entry points, each idempotent on a fresh clone with Python 3.11:
#   make demo   - compress the embedded MiniLM with recipes/obce-50.yaml
#   make test   - the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; letting a resolver pick it pulls CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[model,test,cpu,syntax]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium renders report.html in a test; without it (not root, no apt) that
# one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "note: could not install chromium; the report rendering test will be skipped"

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/compress --recipe recipes/obce-50.yaml --overwrite

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration" tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/pipeline.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/persistence.py

clean:
	rm -rf $(VENV) runs
