# posttrain: `make demo` runs the whole pipeline on the embedded default, `make test` runs the test suite.
# Both create .venv when it is missing. torch==2.13.0 is installed first when no torch is importable, so that
# pip never resolves a plain `torch` requirement to the multi-gigabyte CUDA build on a CPU machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.posttrain-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-quick test lint bench install browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/posttrain demo --out demo_out

demo-quick: $(STAMP)
	$(BIN)/posttrain demo --quick --out demo_out

# Browser tests need Debian's chromium; `make browser` installs it (root), otherwise they skip with a message.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/posttrain bench all

clean:
	rm -rf $(VENV) demo_out .pytest_cache
