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

# The whole pipeline on the embedded digits set, no download: architecture search -> train the
# chosen config -> mass generation on Ray Data -> evaluation report -> the generated set's card
# with the report's figures, and WebDataset shards. About 5 minutes on 2 CPUs.
demo: $(VENV)/.installed
	$(PY) jobs/search.py --space search_spaces/digits.yaml --storage-path $(CURDIR)/runs/demo-search --name digits --num-samples 6
	$(PY) jobs/train.py --config runs/demo-search/digits/best_config.yaml --out runs/demo --overwrite
	$(PY) jobs/mass_generate.py --run runs/demo --count 2000 --n-parents 2,3,5 --png --out runs/demo-generated --overwrite
	$(PY) jobs/evaluate.py --run runs/demo --generated runs/demo-generated --out runs/demo-report --fid-samples 500 --overwrite
	$(PY) jobs/export.py --generated runs/demo-generated --report runs/demo-report --webdataset --shard-size 500

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	REGENE_DATA_ROOT=$(DATA_ROOT) $(PY) -m pytest -q --durations=15 tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
