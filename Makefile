# Two commands on a fresh machine: `make demo` (the whole pipeline on the synthetic data set) and `make test`.
# Both install the exact versions of requirements.lock first (see the README, "The locked environment").
PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements.lock
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1

.PHONY: setup test test-all demo bench lint lock check-latest clean

setup: $(VENV)/.installed

# pip itself comes from the lock too; the project is installed without resolving anything more (--no-deps) and
# built with the lock's setuptools (--no-build-isolation). LOCK= installs from pyproject's ranges instead.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
ifneq ($(LOCK),)
	$(PY) -m pip install -q "$$(grep -m1 '^pip==' $(LOCK))"
	$(PY) -m pip install -q -r $(LOCK)
	$(VENV)/bin/pip-sync -q $(LOCK)  # an existing venv: what the lock no longer lists goes
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
else
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
endif
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
	$(VENV)/bin/ruff check mfsc_builder detector fsad_data tests bench scripts

# Refresh the lock after a change of pyproject's dependencies, or to move to the newest allowed releases:
# newest versions that pyproject allows (torch stays at its pin), then run `make check-latest` or the tests.
lock: setup
	$(VENV)/bin/pip-compile --quiet --upgrade --extra dev --allow-unsafe --strip-extras --no-emit-index-url \
	    --no-emit-find-links --build-deps-for wheel --build-deps-for editable -o $(LOCK) pyproject.toml

# The canary: the newest releases the ranges allow, in a throw-away venv, against a short smoke of the main job.
check-latest:
	$(PYTHON) scripts/check_latest.py $(if $(LOCK),--lock $(LOCK))

clean:
	rm -rf out .pytest_cache
