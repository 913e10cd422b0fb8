# Quick start: `make demo` and `make test`. Each creates/updates the local virtualenv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UNAME  := $(shell uname -s)
# mlx has no backend on Linux without the [cpu] extra (same pattern as mlx-lm's extras).
ifeq ($(UNAME),Linux)
EXTRAS := cpu,dev
else
EXTRAS := dev
endif
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

.PHONY: venv demo test bench blas lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

# OpenBLAS makes MLX ~30x faster at prompt processing on a Linux CPU; best effort, never required.
blas: $(STAMP)
ifeq ($(UNAME),Linux)
	-@$(BIN)/collab blas fetch >/dev/null
endif

# First run: fetches Qwen2.5-Coder-0.5B (491 MB) and the stand-in cloud model (1.1 GB), converts both once.
# `make demo SERVE=1`: then serve the page (routed beside local only) and print its address, until Ctrl-C.
demo: $(STAMP) blas
	$(BIN)/collab demo$(if $(SERVE), --serve)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP) blas
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/learned_cost.py

lint: $(STAMP)
	$(BIN)/ruff check collab_core langchain_collab llamaindex_collab tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
