# `make demo` and `make test` work on a fresh machine: they build .venv/ first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CORPUS ?= corpora/tinyshakespeare.txt

.PHONY: install demo test lint format bench bench-quick bench-novelty clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sh scripts/install-torch.sh $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/charrnn train $(CORPUS) --out checkpoints/demo --time-limit 2m --force
	$(VENV)/bin/charrnn sample --checkpoint checkpoints/demo/best.pt --length 600 --seed "ROMEO:"

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2  # two workers: the suite is CPU-bound, one thread per test

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

bench-novelty: $(STAMP)
	$(PY) bench/novelty.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
