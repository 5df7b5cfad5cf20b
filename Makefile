# `make run` (execute the course) and `make test` (the whole test suite) create/update the virtualenv
# in .venv from the repo's own files first. Before class: `make kernel` and `make preflight`;
# between classes: `make reset` (keeps the downloaded model and dataset) or `make reset-all`.
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
# where make run puts the executed notebooks (empty: <workspace>/executed, the workspace every notebook uses)
EXECUTED  ?=
# the kernels nbconvert starts log errors only (ipykernel warns in English on every start that its local TCP
# connection is unencrypted: nbconvert's kernel listens on 127.0.0.1 only)
KERNEL_QUIET := "--ExecutePreprocessor.extra_arguments=['--IPKernelApp.log_level=ERROR']"
# the Python that runs the reset (no venv build just to delete files)
RESET_PY  := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: venv run test chromium notebooks lint bench kernel preflight reset reset-all

venv: $(STAMP)

$(STAMP): requirements.txt $(REQS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import helpers, torch, transformers, peft, swanlab, nbval"
	touch $@

# Execute the notebook series in order; executed copies go to $(EXECUTED) (default: <workspace>/executed, the
# workspace of course-settings.yaml / QWEN3_TUTORIAL_WORKSPACE), committed ones stay untouched.
run: $(STAMP)
	@dest='$(EXECUTED)'; \
	test -n "$$dest" || dest="$$($(PY) -m helpers.reset --print-executed)" || exit 1; \
	test -d "$$dest" || { mkdir -p "$$dest" && printf '.\n' > "$$dest/.course-made"; } || exit 1; \
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 $(KERNEL_QUIET) \
	    --output-dir "$$dest" $$nb || exit 1; \
	  grep -qxF -e '*' -e "$$(basename $$nb)" "$$dest/.course-made" 2>/dev/null || \
	    basename $$nb >> "$$dest/.course-made"; \
	done; \
	echo "执行过的 notebook 在 $$dest/"

# The whole suite: unit tests and every notebook under nbval (tiny profile, CPU), on two worker processes
# (pytest-xdist: a test module stays on one worker, the notebooks run in order on one worker; `-n 0` runs
# it in one process); it ends with the 15 slowest tests and their seconds, so the suite's cost stays in view.
# tests/test_browser.py needs Chromium and tests/test_images.py a CJK font: `make chromium` installs
# Debian's chromium and fonts-noto-cjk when this user can install system packages (root or passwordless
# sudo), else Playwright's Chromium; if that does not work it stops with what to install.
test: $(STAMP) chromium
	$(PY) -m ruff check conftest.py helpers tests notebooks bench solutions images
	QWEN3_TUTORIAL_PROFILE=tiny $(PY) -m pytest -q tests notebooks --nbval-lax -n 2 --durations=15

# Re-execute the committed notebooks in place with the tiny profile (refreshes stored outputs), then
# redraw the README's pictures in images/ (images/make_images.py; Chromium for the SwanLab screenshot).
notebooks: $(STAMP) chromium
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  (cd notebooks && QWEN3_TUTORIAL_PROFILE=tiny ../$(PY) -m jupyter nbconvert --to notebook --execute $(KERNEL_QUIET) \
	    --inplace --ExecutePreprocessor.timeout=1200 $$(basename $$nb)) || exit 1; \
	done
	$(PY) -m nbstripout --keep-output --keep-count $(NOTEBOOKS)  # drop saved widget state, keep outputs
	$(PY) -m images.make_images

chromium: $(STAMP)
	$(PY) -m tests.chromium

# kernel and preflight only need a .venv, whichever REQS built it (a GPU box's venv is not reinstalled):
$(PY):
	$(MAKE) venv

# Register the .venv as the Jupyter kernel "Qwen3 LoRA course (.venv)" (pick it in JupyterLab).
kernel: | $(PY)
	$(PY) -m helpers.environment kernel

# Pass/fail checklist with a fix line per failure; non-zero exit on any failure.
#   make preflight PROFILE=tiny    make preflight JSON=1   (one JSON object, to collect a room's results)
preflight: | $(PY)
	@$(PY) -m helpers.environment check $(if $(PROFILE),--profile $(PROFILE)) $(if $(filter 1,$(JSON)),--json)

# Remove runs, checkpoints, exports, plots, SwanLab records, encoded data, the scale-out demo and the
# executed notebooks (only what the course made: each such folder holds a .course-made marker); keep the
# downloaded model and dataset. `make reset DRY_RUN=1` (or true/yes/on) only lists them.
reset:
	$(RESET_PY) -m helpers.reset $(if $(EXECUTED),--executed '$(EXECUTED)') --dry-run-value '$(DRY_RUN)'

# Also remove the models and the dataset: asks first; FORCE=1 for scripts (without a terminal it stops).
reset-all:
	$(RESET_PY) -m helpers.reset --all $(if $(EXECUTED),--executed '$(EXECUTED)') --force-value '$(FORCE)' --dry-run-value '$(DRY_RUN)'

lint: $(STAMP)
	$(PY) -m ruff check conftest.py helpers tests notebooks bench solutions images

# Original tutorial vs this course on CPU, every figure a ratio taken in the same run (bench/RESULTS.md).
bench: $(STAMP)
	$(PY) -m bench.cpu
