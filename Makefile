# Two commands on a fresh machine: `make demo` (the whole pipeline on the synthetic data set) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1

.PHONY: setup test test-all demo bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

test: setup
	$(OFFLINE) $(PY) -m pytest -m "not slow"

test-all: setup
	$(OFFLINE) $(PY) -m pytest

# The demo may download the pretrained CLIP weights (when the Hub can be reached), so it is not forced offline.
demo: setup
	HF_DATASETS_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_OUT)

bench: setup
	$(OFFLINE) $(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check mfsc_builder detector fsad_data tests bench

clean:
	rm -rf out .pytest_cache
