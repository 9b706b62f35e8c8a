"""experiments/masked_lm_depth.py: its grid (every correction, the gate fusion, the learned strengths of the best two,
at each depth and seed), its units training a masked LM from scratch and recording the task's metrics, the profile
and the most-frequent-token baseline; its section and findings over the units measured so far."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # modules by name, as run_all.py finds them, so spawned workers can too

import masked_lm_depth  # noqa: E402
import run_all  # noqa: E402
from runner.cache import ResultCache  # noqa: E402
from runner.scheduling import run_units  # noqa: E402
from runner.statistics import Results  # noqa: E402
from runner.variants import BASELINE, LEARNED, corrections  # noqa: E402
from runner.worker import prepared_data, recipe_argv  # noqa: E402

from hf_centered.data import minilm_dir  # noqa: E402


def option(options: tuple[str, ...], name: str) -> str:
    return options[options.index(name) + 1]


def test_the_full_grid_is_every_variant_at_every_depth_and_seed():
    plan = run_all.full_plan()
    settings = plan.settings[masked_lm_depth.MASKED_LM_DEPTH.name]
    units = masked_lm_depth.masked_lm_units(plan)
    expected_variants = {BASELINE, *corrections(), "gate", "dgn" + LEARNED, "centered" + LEARNED}
    assert set(settings.variants) == expected_variants
    assert len({unit.key for unit in units}) == len(units) == 5 * len(plan.seeds) * len(expected_variants)
    assert settings.depths == (2, 4, 8, 16, 24)
    for unit in units:
        depth = int(unit.key.split("/")[1].removeprefix("d"))
        architecture = json.loads(option(unit.options, "--architecture"))
        assert architecture["num_hidden_layers"] == depth and architecture["sparse_prediction"] is True
        assert option(unit.options, "--task") == "fill-mask" and option(unit.options, "--dataset_name") == "text_corpus"
        assert option(unit.options, "--max_steps") == str(settings.steps) and not unit.alone
        # the packaged tokenizer's folder depends on the machine: outside the options that key the cache
        assert unit.local_options == ("--tokenizer_name", minilm_dir()) and minilm_dir() not in unit.options
    costs = {unit.key.split("/")[1]: unit.cost for unit in units}
    assert costs["d2"] < costs["d4"] < costs["d8"] < costs["d16"] < costs["d24"]


def test_a_cached_result_holds_wherever_the_tokenizer_lies(tmp_path):
    plan = run_all.tiny_plan(tmp_path)
    unit = masked_lm_depth.mlm_unit(plan, 1, BASELINE, 42)
    cache = ResultCache(tmp_path / "cache.json")
    cache.put(unit, {"accuracy": 0.5}, 1.0)
    moved = replace(unit, local_options=("--tokenizer_name", "/elsewhere/minilm"))
    assert ResultCache(tmp_path / "cache.json").get(moved) is not None


def test_units_record_the_masked_lm_metrics_and_the_section_reads_them(tmp_path):
    plan = replace(run_all.tiny_plan(tmp_path), experiments=(masked_lm_depth.MASKED_LM_DEPTH,), seeds=(42,))
    chosen = {(1, BASELINE), (2, "dgn" + LEARNED)}
    units = [
        unit
        for unit in masked_lm_depth.masked_lm_units(plan)
        if (int(unit.key.split("/")[1].removeprefix("d")), unit.key.split("/")[2]) in chosen
    ]
    assert len(units) == len(chosen)
    cache = ResultCache(plan.results_path)
    assert run_units(units, 2, plan, cache, log=lambda line: None) == []

    # The baseline, counted here with a Counter over the same data the unit saw.
    _, _, _, _, data = prepared_data([*recipe_argv(tmp_path), *units[0].options, *units[0].local_options])
    counts = Counter(
        token
        for ids, special in zip(data.train["input_ids"], data.train["special_tokens_mask"], strict=True)
        for token, is_special in zip(ids, special, strict=True)
        if is_special == 0
    )
    top = counts.most_common(1)[0][0]
    masked = [label for row in data.evaluation["labels"] for label in row if label >= 0]
    for unit in units:
        result = cache.get(unit)["result"]
        depth = int(unit.key.split("/")[1].removeprefix("d"))
        assert 0.0 <= result["accuracy"] <= 1.0 and result["perplexity"] > 1.0
        assert len(result["profile"]["effective_rank"]) == depth + 1
        assert result[masked_lm_depth.MOST_FREQUENT] == pytest.approx(masked.count(top) / len(masked))
        assert ("strengths" in result) == (LEARNED in unit.key)

    results = Results(plan, cache)
    section = "\n".join(masked_lm_depth.masked_lm_section(results))
    total = len(masked_lm_depth.masked_lm_units(plan))
    assert f"*{total - len(units)} of this experiment's {total} units are not measured yet" in section
    stock = results[f"mlm/d1/{BASELINE}/seed42"]
    learned = results[f"mlm/d2/dgn{LEARNED}/seed42"]
    assert f"| none | {stock['accuracy'] * 100:.1f} | — |" in section
    assert f"| none | {stock['perplexity']:.0f} | — |" in section
    assert f"| dgn{LEARNED} | — | {learned['profile']['cosine_similarity'][-1]:.3f} |" in section
    assert f"| dgn{LEARNED} | — | {learned['profile']['effective_rank'][-1]:.1f} |" in section
    assert "| centered | — | — |" in section
    assert (plan.images_dir / masked_lm_depth.MLM_IMAGE).stat().st_size > 0

    findings = masked_lm_depth.masked_lm_findings(results)
    assert findings[0].startswith(
        f"- Masked LM from scratch, `none`: masked-token accuracy {stock['accuracy'] * 100:.1f} % at depth 1;"
    )
    assert findings[1].startswith(f"- Masked LM, depth 1: best `none` at {stock['accuracy'] * 100:.1f} %")
    assert len(findings) == 2  # depth 2 has no stock unit to compare with


def test_the_section_renders_with_nothing_measured(tmp_path):
    plan = replace(run_all.tiny_plan(tmp_path), experiments=(masked_lm_depth.MASKED_LM_DEPTH,))
    results = Results(plan, ResultCache(plan.results_path))
    section = "\n".join(masked_lm_depth.masked_lm_section(results))
    units = len(masked_lm_depth.masked_lm_units(plan))
    assert f"*{units} of this experiment's {units} units are not measured yet" in section
    assert "| none | — | — |" in section and "scores — % masked-token accuracy" in section
    assert masked_lm_depth.masked_lm_findings(results) == []
    assert "6 held-out corpus texts" in masked_lm_depth.profiled_texts(results)
    assert "the corpus's texts" in masked_lm_depth.text_setup(results)[0]
