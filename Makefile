# Two commands from a fresh clone: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
APT    := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get)

.PHONY: demo test lint bench bench-quick ui data system-deps clean

# The main job: a search with a sparsity demand on a Fashion-MNIST subset, then the
# weighted ensemble of its top trials, then the report (about 5 minutes on 2 CPU cores).
DEMO_SEARCH ?= search.demand.min_sparsity=0.9 search.n_trials=20 data.subset=10000 trainer.max_epochs=4

demo: $(STAMP) data
	$(BIN)/lightning-prune search $(DEMO_SEARCH)
	$(BIN)/lightning-prune ensemble ensemble.k=5 ensemble.weighting=optimized $(DEMO_SEARCH)
	$(BIN)/lightning-prune report $(DEMO_SEARCH)

test: $(STAMP) data system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP) data
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(STAMP) data
	$(BIN)/python benchmarks/run_all.py --quick

ui: $(STAMP)
	$(BIN)/lightning-prune ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and only when missing, so an existing torch in the venv is kept
# (a plain `torch` requirement would pull a large CUDA build on Linux).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package when we may install it; otherwise the data module
# downloads the files on first use (or reads LIGHTNING_PRUNE_DATA).
data:
	@if [ ! -d "$(FMNIST)" ] && [ -n "$(APT)" ]; then \
		echo "Installing dataset-fashion-mnist with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# PostgreSQL server binaries for the distributed-search test (skipped when absent).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -n "$(APT)" ]; then \
		echo "Installing postgresql with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

clean:
	rm -rf runs mlruns mlartifacts lightning_logs .pytest_cache
