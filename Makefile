# The two commands: `make run` starts the whole app on the embedded default; `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt install browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch first: an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium (Playwright drives it) and Firefox ESR (driven over Marionette) for the UI tests;
# Node.js runs the dashboard's pure JS modules (cost model, formats) against the Python definitions.
browser:
	@(command -v chromium && command -v firefox-esr && command -v node) >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium firefox-esr \
			$$(command -v node >/dev/null || echo nodejs) >/dev/null)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two test processes, whole files each (a module's live app stays in one): the live tests spend half
# their time waiting on workers and ranks, so two cores are kept busy. TEST_PROCESSES=0: one process.
TEST_PROCESSES ?= 2
test: export OMP_WAIT_POLICY = PASSIVE
test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -ra --durations=40 -n $(TEST_PROCESSES) --dist loadfile

run: install
	$(BIN)/prunescope up

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
