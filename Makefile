# nerloop: `make demo` runs the main job, `make test` the whole suite, `make bench` the benchmarks.
# Each creates (or reuses) the virtual environment .venv and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo runs on CoNLL-2003 when the shared corpora are beside the checkout; DATA= (empty) uses
# the corpus nerloop generates itself.
DATA ?= $(wildcard ../shared/data/conll2003)

.PHONY: demo test bench labelstudio clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of PyTorch (on a GPU host, install the CUDA build first; see README).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nerloop simulate $(if $(DATA),--data $(DATA) --pool-size 600 --test-size 300,) \
		--strategies mnlp,random --unit sentences --seed-size 50 --batch 50 --rounds 3 \
		--epochs 5 --min-steps 100 --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/al_conll2003.py
	$(BIN)/python bench/ls_sync.py
	$(BIN)/python bench/predict_latency.py

clean:
	rm -rf $(VENV) runs .pytest_cache
