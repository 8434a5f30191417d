# Two commands do everything: `make run` (the main job) and `make test` (the test suite).
# Both create ./.venv on first use. torch is installed first, pinned to the 2.13 CPU wheel,
# so that no CUDA build is pulled in on CPU-only machines.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DOCS_STAMP := $(VENV)/.docs-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/lipguard run $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1  # its torchvision pin is unused
	$(BIN)/python benchmarks/layers.py
	$(BIN)/python benchmarks/bounds.py
	$(BIN)/python benchmarks/smoothing.py
	$(BIN)/python benchmarks/attacks.py
	$(BIN)/python benchmarks/price_of_robustness.py
	$(BIN)/python benchmarks/monitor.py
	$(BIN)/python benchmarks/rl_reward_hacking.py
	$(BIN)/python benchmarks/main_job.py --peer-on quick

# The documentation site in site/: the guides, the API reference from the docstrings, and the
# tutorials, executed (a failing assert fails the build). Any warning is an error.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	rm -f $(VENV)/.docs-* && touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site .pytest_cache .ruff_cache .hypothesis
