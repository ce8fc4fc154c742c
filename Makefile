# `make demo` and `make test` work on a fresh machine: they build .venv/ first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CORPUS ?= corpora/tinyshakespeare.txt
DEMO_OUT   ?= checkpoints/demo
DEMO_LIMIT ?= 2m
DEMO_ARGS  ?=

.PHONY: install browser demo test smoke lint format bench bench-quick bench-novelty bench-web bench-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sh scripts/install-torch.sh $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/charrnn train $(CORPUS) --out $(DEMO_OUT) --time-limit $(DEMO_LIMIT) --force $(DEMO_ARGS)
	$(VENV)/bin/charrnn sample --checkpoint $(DEMO_OUT)/best.pt --length 600 --seed "ROMEO:"
	@echo >&2 'next: source $(VENV)/bin/activate   # puts charrnn on your PATH'
	@echo >&2 '      charrnn sample -c $(DEMO_OUT)/best.pt --seed "JULIET:" --length 300'

# The browser tests (the neurons page, the web export) need Chromium. Where it is missing and
# this is root on Debian/Ubuntu, install it; otherwise those tests skip. Never fails the build.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests (apt-get)" >&2; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
		echo "could not install chromium: the browser tests will be skipped" >&2; \
	else echo "no chromium (and no root apt-get): the browser tests will be skipped" >&2; fi

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2  # two workers: the suite is CPU-bound, one thread per test

# A quick check of an install (about 25 s on an idle machine): every command once on a tiny
# model (tests/test_smoke.py), the model, the loss and the training loop against the notes,
# sampling, and one real `charrnn train` in a pseudo-terminal. `make test` is everything.
smoke: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 tests/test_smoke.py tests/test_model.py tests/test_loss.py \
		tests/test_sample.py tests/test_train.py \
		tests/test_terminal.py::test_train_in_a_terminal_shows_the_live_display_and_finishes

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/threads.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

bench-novelty: $(STAMP)
	$(PY) bench/novelty.py

bench-web: $(STAMP)
	$(PY) bench/web_export.py

# charrnn serve: 1 to 64 concurrent streams, one lane against one per core, side by side.
bench-serve: $(STAMP)
	$(PY) bench/serve.py --lanes 1,auto

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
