"""experiments/wnut16_tagging.py: its units run the token-classification task and record its metrics; its section
reads them, and shows what is not measured yet."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # modules by name, as run_all.py finds them, so spawned workers can too

import run_all  # noqa: E402
import wnut16_tagging  # noqa: E402
from runner.cache import ResultCache  # noqa: E402
from runner.scheduling import run_units  # noqa: E402
from runner.statistics import Results  # noqa: E402
from runner.variants import BASELINE, LEARNED, corrections  # noqa: E402


def tagging_plan(root: Path):
    tiny = run_all.tiny_plan(root)
    return replace(tiny, experiments=(wnut16_tagging.TAGGING,), seeds=(42,))


def test_every_correction_fixed_and_learned_against_stock():
    plan = run_all.full_plan()
    keys = [unit.key for unit in wnut16_tagging.tagging_units(plan)]
    expected = {BASELINE, *corrections(), *(name + LEARNED for name in corrections())}
    assert {key.split("/")[1] for key in keys} == expected
    assert len(keys) == len(set(keys)) == len(expected) * len(plan.seeds)
    unit = wnut16_tagging.tagging_units(plan)[0]
    assert unit.options[unit.options.index("--task") :][:2] == ("--task", "token-classification")
    assert "wnut16" in unit.options and not unit.alone


def test_units_record_the_tagging_metrics_and_the_section_reads_them(tmp_path):
    plan = tagging_plan(tmp_path)
    units = [
        unit
        for unit in wnut16_tagging.tagging_units(plan)
        if unit.key.split("/")[1] in (BASELINE, "centered" + LEARNED)
    ]
    cache = ResultCache(plan.results_path)
    assert run_units(units, 2, plan, cache, log=lambda line: None) == []
    for unit in units:
        result = cache.get(unit)["result"]
        for name in ("f1", "precision", "recall", "accuracy"):
            assert 0.0 <= result[name] <= 1.0, (unit.key, name)
        assert len(result["profile"]["cosine_similarity"]) == 7  # embeddings + MiniLM's 6 layers
        assert ("strengths" in result) == (LEARNED in unit.key)

    results = Results(plan, cache)
    section = "\n".join(wnut16_tagging.tagging_section(results))
    total = len(wnut16_tagging.tagging_units(plan))
    assert f"*{total - len(units)} of this experiment's {total} units are not measured yet" in section
    stock = results[f"wnut16/{BASELINE}/seed42"]
    assert f"| none | fixed | 1 | {stock['f1'] * 100:.1f} | {stock['precision'] * 100:.1f} |" in section
    assert "| neutreno | fixed | 0 | — |" in section
    finding = wnut16_tagging.tagging_findings(results)
    assert len(finding) == 1 and "`centered` learned" in finding[0] and "(1 seeds)" in finding[0]
