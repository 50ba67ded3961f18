# Koinon: `make demo` runs a local swarm, `make test` runs the whole suite (what CI runs), `make bench`
# writes benchmark numbers to bench/results/. Each target sets up .venv from the pinned lock file first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.koinon-installed
PEERS ?= 3
MINUTES ?= 3

.PHONY: demo test bench lint venv clean browser

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/koinon demo --peers $(PEERS) --minutes $(MINUTES)

# The dashboard's browser tests drive Debian's Chromium through its ChromeDriver (no browser download): install
# them when missing and we may (root with apt-get); otherwise those tests are skipped and say why.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver for the dashboard's browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "could not install chromium: the browser tests will be skipped"; \
	  else echo "no /usr/bin/chromium (apt-get install chromium chromium-driver): the browser tests will be skipped"; fi; }

test: $(STAMP) browser
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/ledger_bench.py
	$(BIN)/python bench/gov_bench.py
	$(BIN)/python bench/byz_bench.py
	$(BIN)/python bench/verify_bench.py
	$(BIN)/python bench/sync_bench.py
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/rounds_bench.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
