# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv first when it is missing (or when the package metadata changed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup data demo test lint docs unit bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,plot]"
	touch $(STAMP)

# Debian's dataset-fashion-mnist gives the demo and the recipes real data without a network.
data:
	@if [ -d "$(FMNIST)" ]; then \
		echo "Fashion-MNIST found in $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's dataset-fashion-mnist"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "Could not install dataset-fashion-mnist; see README (Data)."; \
	else \
		echo "Fashion-MNIST is not installed and this is not root: run"; \
		echo "  sudo apt install dataset-fashion-mnist"; \
		echo "or set MANIDEFENSE_DATA to a folder with the IDX files (see README, Data)."; \
	fi

demo: $(STAMP) data
	$(VENV)/bin/manidefense demo --out manidefense-demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The documentation site (MkDocs Material + mkdocstrings + mkdocs-jupyter) into site/; --strict
# turns every warning (a broken cross-reference, a missing page) into a failure. `make test`
# runs this same strict build through tests/test_docs.py (on a copy of the sources, next to a
# copy with one broken cross-reference that must fail), so it is not built a second time here.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: $(STAMP) data lint unit

bench: $(STAMP)
	$(PY) bench/attack_speed.py

clean:
	rm -rf $(VENV) manidefense-demo site .pytest_cache .ruff_cache *.egg-info
