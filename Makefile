# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the pair that lies on this machine's disk (CPU and CUDA capable).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DATA_ROOT ?= $(if $(REGENE_DATA_ROOT),$(REGENE_DATA_ROOT),../shared/data)

.PHONY: demo test lint format clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) jobs/train.py --config configs/digits.yaml --out runs/demo --overwrite

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	REGENE_DATA_ROOT=$(DATA_ROOT) $(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
