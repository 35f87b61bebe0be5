# nerloop: `make demo` runs the main job, `make test` the whole suite, lint first (`make test-fast`:
# the inner loop, without servers and long trainings), `make bench` the benchmarks.
# Each creates (or reuses) the virtual environment .venv and installs what it needs, Debian packages
# included (scripts/system-deps.sh: WordNet, Chromium); Label Studio installs into .venv-ls on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo runs on CoNLL-2003 when the shared corpora are beside the checkout; DATA= (empty) uses
# the corpus nerloop generates itself.
DATA ?= $(wildcard ../shared/data/conll2003)

.PHONY: demo simulate lint test test-fast bench labelstudio clean

$(STAMP): pyproject.toml scripts/system-deps.sh
	scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of PyTorch (on a GPU host, install the CUDA build first; see README).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The whole loop through the real service (API, worker, beat; SQLite and the embedded broker) with
# simulated annotators. LABEL_STUDIO=1: they label in a local Label Studio, left running at the end.
demo: $(STAMP)
	$(BIN)/nerloop demo $(if $(DATA),--data $(DATA),) $(if $(LABEL_STUDIO),--label-studio,)

# Query strategies side by side (MNLP vs random) on the ML core alone, no service.
simulate: $(STAMP)
	$(BIN)/nerloop simulate $(if $(DATA),--data $(DATA) --pool-size 600 --test-size 300,) \
		--strategies mnlp,random --unit sentences --seed-size 50 --batch 50 --rounds 3 \
		--epochs 5 --min-steps 100 --out runs/simulate

labelstudio:
	scripts/labelstudio.sh install

# ruff: lint and import order, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .

# Everything: Label Studio, Redis, PostgreSQL, Celery workers and Chromium for real (CI: .ci/run).
test: lint
	$(BIN)/python -m pytest

# The inner loop, under two minutes: no servers, workers or browser (marker integration) and no
# long trainings (marker slow). PYTEST= adds options, e.g. PYTEST="-x -k augment".
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST)

bench: $(STAMP)
	$(BIN)/python bench/al_conll2003.py
	$(BIN)/python bench/ls_sync.py
	$(BIN)/python bench/predict_latency.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/augment_throughput.py
	$(BIN)/python bench/augment_gain.py

clean:
	rm -rf $(VENV) runs .pytest_cache
