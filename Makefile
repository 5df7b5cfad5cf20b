# Two commands: `make run` (execute the course) and `make test` (the whole test suite).
# Each one creates/updates the virtualenv in .venv from the repo's own files first.
#
# GPU box that already has a CUDA torch (e.g. AutoDL's image):
#   make run REQS=requirements.txt VENV_ARGS=--system-site-packages
# keeps that torch and installs only the rest.

PYTHON    ?= python3
VENV      ?= .venv
REQS      ?= requirements-cpu.txt
VENV_ARGS ?=
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed-$(notdir $(REQS))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]-*.ipynb))
EXECUTED  ?= workspace/executed

.PHONY: venv run test notebooks lint bench clean-workspace

venv: $(STAMP)

$(STAMP): requirements.txt $(REQS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, transformers, peft, swanlab, nbval, helpers"
	touch $@

# Execute the notebook series in order; executed copies go to $(EXECUTED), committed ones stay untouched.
run: $(STAMP)
	mkdir -p $(EXECUTED)
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
	    --output-dir $(EXECUTED) $$nb || exit 1; \
	done
	@echo "Executed notebooks are in $(EXECUTED)/"

# The whole suite: unit tests, then every notebook under nbval (tiny profile, CPU).
test: $(STAMP)
	$(PY) -m ruff check helpers tests notebooks bench
	QWEN3_TUTORIAL_PROFILE=tiny $(PY) -m pytest -q tests notebooks --nbval-lax

# Re-execute the committed notebooks in place with the tiny profile (refreshes stored outputs).
notebooks: $(STAMP)
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  (cd notebooks && QWEN3_TUTORIAL_PROFILE=tiny ../$(PY) -m jupyter nbconvert --to notebook --execute \
	    --inplace --ExecutePreprocessor.timeout=1200 $$(basename $$nb)) || exit 1; \
	done

lint: $(STAMP)
	$(PY) -m ruff check helpers tests notebooks bench

# Original tutorial vs this course on CPU, every figure a ratio taken in the same run (bench/RESULTS.md).
bench: $(STAMP)
	$(PY) -m bench.cpu

clean-workspace:
	rm -rf workspace
