# Entry points, each idempotent on a fresh clone with Python 3.11:
#   make demo       - compress the embedded MiniLM with recipes/obce-50.yaml
#   make test       - the whole test suite (unit + integration on the real MiniLM)
#   make test-fast  - the unit suite only (tiny random models, about a minute)
#   make browser    - install Debian's Chromium (asks nothing, says what it does), so the
#                     report rendering test runs instead of skipping; CI calls it
# Nothing here installs system packages unless you call `make browser`.
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

clean:
	rm -rf $(VENV) runs
