# wsss_nb: `make reproduce` (environment + built-in benchmark + quick tables) and `make test`.
# Both create .venv when missing and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/synthetic
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env test lint sync-check nbtest pytest reproduce data export readme docs clean-nbs test-ui

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

env: $(STAMP)

# wsss_nb/ must be exactly what nbdev_export makes of nbs/.
sync-check: env
	@tmp=$$(mktemp -d); cp -r wsss_nb $$tmp/before; \
	$(BIN)/nbdev_export; \
	if ! diff -r -x __pycache__ $$tmp/before wsss_nb; then \
	  rm -rf $$tmp; echo "wsss_nb/ was out of sync with nbs/: re-exported it; commit both." >&2; exit 1; fi; \
	rm -rf $$tmp; echo "wsss_nb/ is in sync with nbs/"
	@cp README.md /tmp/wsss_nb_README.before 2>/dev/null || true; $(MAKE) --no-print-directory readme >/dev/null; \
	if ! diff -q /tmp/wsss_nb_README.before README.md >/dev/null; then \
	  echo "README.md was out of sync with nbs/index.ipynb: regenerated it; commit both." >&2; exit 1; fi

nbtest: env
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: env
	$(BIN)/python -m pytest -q tests

# ruff (settings in pyproject.toml) on the library, the notebooks (ruff reads .ipynb itself), tests and tools.
lint: env
	$(BIN)/ruff check --no-cache wsss_nb nbs tests tools papers_tables

test: sync-check lint nbtest pytest

data: env
	$(BIN)/wsss-nb make-data --root $(DATA)

# The quick profile of every paper table (papermill runs, reused when done), then the four paper notebooks
# rendered from them. Two papermill processes with one thread each keep both cores busy.
reproduce: data
	OMP_NUM_THREADS=1 $(BIN)/wsss-nb tables --profile quick --jobs 2 --data-root $(DATA)
	cd papers_tables && for p in ssss shape hfpl bana; do \
	  papermill --no-progress-bar -k python3 -p run False $$p.ipynb $$p.ipynb || exit 1; done
	@echo "tables written: $(abspath papers_tables/README.md)"

export: env
	$(BIN)/nbdev_export

# nbdev_readme and nbdev_docs need quarto, which no package index this project installs from ships (PyPI's
# quarto-cli is a source package that downloads quarto while it builds): nbconvert writes README.md, and
# tools/build_docs.py builds the site with nbdev's own notebook processors (show_doc, links) and nbconvert.
readme: env
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --output-dir . --output README

# The HTML site in _docs/ (open _docs/index.html): a page per notebook, the API of each module, offline. Notebooks are
# not run (only exported cells, imports and show_doc); processed notebooks are cached in _proc/.
docs: env
	$(BIN)/python tools/build_docs.py

clean-nbs: env
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_clean --fname wsss_nb/experiments
	$(BIN)/nbdev_clean --clear_all --fname nbs/60_explore.ipynb   # live widgets: kept without outputs

# The explorers and the docs site in a real browser (tests/test_ui.py, slow): JupyterLab on a loopback port with
# nbs/60_explore.ipynb run, and _docs/ served on a loopback port, in headless Chromium; screenshots in
# tests/screenshots/. Installs Debian's chromium + chromium-driver (apt-get, as root or through sudo) and selenium.
test-ui: env docs
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }
	@$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/python -m pip install --quiet selenium
	WSSS_UI=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_ui.py
