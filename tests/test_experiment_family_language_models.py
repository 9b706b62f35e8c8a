"""experiments/family_language_models.py: its grid (RoBERTa, ModernBERT and Llama at each depth, stock, centered and
NeuTRENO, every seed), its units training each family from scratch with its task through the generic path, and its
section and findings over the units measured so far."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # modules by name, as run_all.py finds them, so spawned workers can too

import family_language_models as families  # noqa: E402
import masked_lm_depth  # noqa: E402
import run_all  # noqa: E402
from runner.cache import ResultCache  # noqa: E402
from runner.scheduling import run_units  # noqa: E402
from runner.statistics import Results  # noqa: E402
from runner.variants import BASELINE  # noqa: E402

from hf_centered.data import minilm_dir  # noqa: E402

EXPERIMENT = families.FAMILY_LANGUAGE_MODELS


def option(options: tuple[str, ...], name: str) -> str:
    return options[options.index(name) + 1]


def test_the_full_grid_is_every_family_variant_depth_and_seed_with_the_masked_lm_recipe():
    plan = run_all.full_plan()
    settings = plan.settings[EXPERIMENT.name]
    units = families.family_units(plan)
    assert settings.families == ("roberta", "modernbert", "llama") and settings.depths == (4, 8, 16)
    assert settings.variants == (BASELINE, "centered", "neutreno")
    assert len({unit.key for unit in units}) == len(units) == 3 * 3 * 3 * len(plan.seeds)
    masked_lm = plan.settings[masked_lm_depth.MASKED_LM_DEPTH.name]
    for unit in units:
        _, family, depth, variant, _ = unit.key.split("/")
        architecture = json.loads(option(unit.options, "--architecture"))
        assert architecture["model_type"] == family and architecture["num_hidden_layers"] == int(depth[1:])
        assert architecture["hidden_size"] == masked_lm_depth.MLM_ARCHITECTURE["hidden_size"]
        assert option(unit.options, "--task") == ("text-generation" if family == "llama" else "fill-mask")
        assert option(unit.options, "--correction") == variant
        for name in ("--max_steps", "--max_seq_length", "--learning_rate", "--per_device_train_batch_size"):
            assert option(unit.options, name) == option(masked_lm_depth.mlm_unit(plan, 2, BASELINE, 42).options, name)
        assert option(unit.options, "--max_steps") == str(masked_lm.steps) and not unit.alone
        assert unit.local_options == ("--tokenizer_name", minilm_dir()) and minilm_dir() not in unit.options


def test_units_train_each_family_and_the_section_reads_them(tmp_path):
    plan = replace(run_all.tiny_plan(tmp_path), experiments=(EXPERIMENT,), seeds=(42,))
    chosen = {"family/llama/d1/none/seed42", "family/llama/d1/centered/seed42", "family/modernbert/d1/none/seed42"}
    units = [unit for unit in families.family_units(plan) if unit.key in chosen]
    cache = ResultCache(plan.results_path)
    assert run_units(units, 2, plan, cache, log=lambda line: None) == []
    for unit in units:
        result = cache.get(unit)["result"]
        assert 0.0 <= result["accuracy"] <= 1.0 and result["perplexity"] > 1.0
        assert len(result["profile"]["cosine_similarity"]) == 2  # embeddings and the one layer
        assert (masked_lm_depth.MOST_FREQUENT in result) == ("modernbert" in unit.key)

    results = Results(plan, cache)
    section = "\n".join(families.family_section(results))
    total = len(families.family_units(plan))
    assert f"*{total - len(units)} of this experiment's {total} units are not measured yet" in section
    stock, centered = results["family/llama/d1/none/seed42"], results["family/llama/d1/centered/seed42"]
    assert (
        f"| none | {stock['perplexity']:.0f} |" in section and f"| centered | {centered['perplexity']:.0f} |" in section
    )
    assert f"| centered | {centered['perplexity'] - stock['perplexity']:+.1f} |" in section  # one seed: no error
    assert "### `roberta` (fill-mask)" in section and "| none | — |" in section  # not measured
    assert (plan.images_dir / families.FAMILY_IMAGE).stat().st_size > 0

    findings = families.family_findings(results)
    assert [line.split(" ", 2)[1] for line in findings] == ["`modernbert`", "`llama`"]
    assert f"held-out perplexity {stock['perplexity']:.0f} at depth 1; at depth 1 against `none`: " in findings[1]
    masked = results["family/modernbert/d1/none/seed42"]["accuracy"]
    assert f"masked-token accuracy {masked * 100:.1f} % at depth 1; at depth 1 against `none` (points): " in findings[0]


def test_the_section_renders_with_nothing_measured(tmp_path):
    plan = replace(run_all.tiny_plan(tmp_path), experiments=(EXPERIMENT,))
    results = Results(plan, ResultCache(plan.results_path))
    section = "\n".join(families.family_section(results))
    total = len(families.family_units(plan))
    assert f"*{total} of this experiment's {total} units are not measured yet" in section
    assert families.family_findings(results) == []
    assert families.profiled_texts(results) == "6 held-out corpus texts per family"
