# The two quick-start commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
# The local CPU build on the project's machines; on a GPU machine pass your CUDA build, e.g. TORCH="torch==2.13.0".
TORCH ?= torch==2.13.0

.PHONY: install demo test lint format

install:
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	$(PYTHON) -m pip install --quiet --no-deps --require-hashes -r requirements-offline.txt

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m hf_centered.demo

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -n 2 -q

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
