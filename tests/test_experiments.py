"""experiments/run_all.py: the quick plan's code paths on a tiny slice, resuming, and the report's statistics.

No accuracy is asserted: these runs train for a step or two. What is checked is that every unit runs through
finetune.py, that its results land in the cache, that a second invocation reruns nothing, and that the report has a
row for every registered method.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # a module by name, so that spawned workers can import it too

import run_all  # noqa: E402


def tiny_plan(root: Path) -> run_all.Plan:
    """The quick plan, cut down to a step of training per unit."""
    return replace(
        run_all.quick_plan(),
        name="tiny",
        text_options=("--max_train_samples", "16", "--max_eval_samples", "12", "--max_steps", "1"),
        profile_sequences=6,
        vit_depths=(1, 2),
        vit_epochs=1,
        vit_options=("--max_train_samples", "64", "--max_eval_samples", "24"),
        sweep_depth=2,
        strength_vit_depths=(2,),
        results_path=root / "results.json",
        report_path=root / "RESULTS.md",
        images_dir=root / "images",
        scratch_dir=root / "runs",
    )


def test_quick_plan_code_paths_run_on_a_tiny_slice_and_resume(tmp_path, capsys):
    plan = tiny_plan(tmp_path)
    assert run_all.main([], plan=plan) == 0
    cache = json.loads(plan.results_path.read_text())
    text, vit = run_all.all_units(plan)
    assert set(cache["units"]) == {unit.key for unit in text + vit}
    for key, entry in cache["units"].items():
        result = entry["result"]
        depth = 6 if not key.startswith("vit/") else int(key.split("/")[1][1:])
        for metric in run_all.PROFILE_METRICS:
            assert len(result["profile"][metric]) == depth + 1, key
            assert math.isfinite(result["head_input"][metric]), key
        assert result["profile_sequences"] == 6
        if not key.startswith("pretrained/"):
            assert 0.0 <= result["accuracy"] <= 1.0 and result["train_seconds"] > 0
        assert ("strengths" in result) == (run_all.LEARNED in key), key
        if run_all.LEARNED in key and key.startswith("text/"):  # per correction, a place per layer
            variant = key.split("/")[1].removesuffix(run_all.LEARNED)
            expected = run_all.strength_variants()[:-1] if variant == run_all.ALL_AT_ONCE else [variant]
            assert list(result["strengths"]) == expected and "layer 5" in result["strengths"][expected[-1]], key
    # A fusion changes what the head reads, not the pretrained layers; without one the head reads the last layer.
    before = {variant: cache["units"][f"pretrained/{variant}"]["result"] for variant in run_all.variants()}
    assert before["max"]["profile"] == before["none"]["profile"]
    assert before["max"]["head_input"]["cosine_similarity"] != before["none"]["head_input"]["cosine_similarity"]
    assert before["none"]["head_input"]["cosine_similarity"] == pytest.approx(
        before["none"]["profile"]["cosine_similarity"][-1], rel=1e-5
    )

    report = plan.report_path.read_text()
    for variant in run_all.variants():
        assert f"| {variant} |" in report
    for variant in run_all.strength_variants():
        assert f"| {variant} | learned | 1 |" in report
    assert "not measured yet" not in report
    images = (
        "depth_sweep.png",
        "learned_strengths.png",
        *(f"profile_{metric}.png" for metric in run_all.PROFILE_METRICS),
    )
    for image in images:
        assert (plan.images_dir / image).stat().st_size > 0
        assert f"images/{image}" in report

    capsys.readouterr()
    assert run_all.main([], plan=plan) == 0  # everything cached: nothing runs, the report is rewritten
    assert "0 to run" in capsys.readouterr().out
    assert json.loads(plan.results_path.read_text())["units"] == cache["units"]


def test_hand_written_text_around_the_report_is_kept(tmp_path):
    plan = tiny_plan(tmp_path)
    units = run_all.all_units(plan)
    cache = run_all.ResultCache(plan.results_path)
    for unit in units[0] + units[1]:
        depth = 6 if not unit.key.startswith("vit/") else int(unit.key.split("/")[1][1:])
        series = [0.5] * (depth + 1)
        result = {
            "profile": {metric: series for metric in run_all.PROFILE_METRICS},
            "head_input": {metric: 0.5 for metric in run_all.PROFILE_METRICS},
            "profile_sequences": 6,
            "train_examples": 16,
            "eval_examples": 12,
            "accuracy": 0.75,
            "f1_macro": 0.7,
            "train_seconds": 2.0,
        }
        if run_all.LEARNED in unit.key:
            result["strengths"] = {"centered": {"layer 0": [0.1, -0.1], "layer 1": [0.2, 0.0]}}
        cache.put(unit, result, 1.0)
    plan.report_path.write_text(
        f"# Results\n\nDiscussion.\n\n{run_all.REPORT_BEGIN}\nold\n{run_all.REPORT_END}\nTail.\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{run_all.HEADLINE_BEGIN}\n{run_all.HEADLINE_END}\n\n## Usage\n")
    run_all.write_report(replace(plan, readme_path=readme))
    report = plan.report_path.read_text()
    assert report.startswith("# Results\n\nDiscussion.\n\n")
    assert report.endswith(f"{run_all.REPORT_END}\nTail.\n")
    assert "old" not in report and "| none | 1 | 75.0 | 75.0 | 70.0 | — | 1.00 (1.00–1.00) |" in report
    headline = readme.read_text()
    assert headline.startswith("# Project\n\n") and headline.endswith(f"{run_all.HEADLINE_END}\n\n## Usage\n")
    assert "(images/depth_sweep.png)" in headline and "[RESULTS.md](RESULTS.md)" in headline
    assert "- Depth 2: best `none` at 75.0 %" in headline


def test_committed_report_and_readme_headline_are_generated_from_the_committed_results(tmp_path):
    """No hand-typed result: docs/RESULTS.md and the README's headline are what run_all.py writes from full.json."""
    plan = run_all.full_plan()
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(plan.report_path, docs / "RESULTS.md")
    shutil.copy(plan.readme_path, tmp_path / "README.md")
    regenerated = replace(
        plan,
        report_path=docs / "RESULTS.md",
        images_dir=docs / "images" / "results",
        readme_path=tmp_path / "README.md",
    )
    run_all.write_report(regenerated)
    assert (docs / "RESULTS.md").read_text() == plan.report_path.read_text()
    assert (tmp_path / "README.md").read_text() == plan.readme_path.read_text()
    assert run_all.REPORT_BEGIN in plan.report_path.read_text()


def test_report_names_the_missing_units(tmp_path):
    plan = tiny_plan(tmp_path)
    with pytest.raises(SystemExit, match=r"unit\(s\) of plan tiny have no cached result \(pretrained/none"):
        run_all.write_report(plan)


def test_a_changed_option_invalidates_only_that_unit(tmp_path):
    plan = tiny_plan(tmp_path)
    cache = run_all.ResultCache(tmp_path / "cache.json")
    text, _ = run_all.all_units(plan)
    for unit in text:
        cache.put(unit, {"accuracy": 0.5}, 1.0)
    changed_text, _ = run_all.all_units(replace(plan, text_options=(*plan.text_options, "--learning_rate", "1e-4")))
    reloaded = run_all.ResultCache(tmp_path / "cache.json")
    assert all(reloaded.get(unit) is not None for unit in text)
    assert all(reloaded.get(unit) is None for unit in changed_text)


def test_a_failing_unit_is_reported_by_key_and_the_others_are_kept(tmp_path):
    plan = tiny_plan(tmp_path)
    cache = run_all.ResultCache(plan.results_path)
    good = next(unit for unit in run_all.vit_units(plan) if unit.key == "vit/d1/none/seed42")
    bad = replace(good, key="vit/d1/bad/seed42", options=(*good.options, "--correction", "no-such-method"))
    failures = run_all.run_units([good, bad], 2, plan, cache, log=lambda line: None)
    assert len(failures) == 1 and failures[0].startswith("vit/d1/bad/seed42: error: unknown correction")
    assert "vit__d1__bad__seed42.log" in failures[0]
    assert cache.get(good) is not None and cache.get(bad) is None


def test_every_registered_method_is_in_every_experiment():
    plan = run_all.full_plan()
    text, vit = run_all.all_units(plan)
    keys = {unit.key for unit in text + vit}
    for variant in run_all.variants():
        assert f"pretrained/{variant}" in keys and f"text/{variant}/seed42" in keys
        if not run_all.is_fusion(variant):
            assert all(f"text/{variant}/seed{seed}" in keys for seed in plan.seeds)
            assert all(f"vit/d{depth}/{variant}/seed42" in keys for depth in plan.vit_depths)
    for variant in run_all.strength_variants():  # experiment 4: every correction, fixed and learned, every seed
        for seed in plan.strength_seeds:
            assert {f"text/{variant}/seed{seed}", f"text/{variant}{run_all.LEARNED}/seed{seed}"} <= keys
    assert len(keys) == len(text) + len(vit)  # the sweep's default values reuse the depth grid's units
    quick_text, quick_vit = run_all.all_units(run_all.quick_plan())
    quick_variants = {unit.key.split("/")[1] for unit in quick_text}
    strength_variants = set(run_all.strength_variants())
    assert quick_variants == set(run_all.variants()) | strength_variants | {
        v + run_all.LEARNED for v in strength_variants
    }
    assert any("@" in unit.key for unit in quick_vit)


def test_difference_and_summary_follow_the_explicit_formulas():
    values, baseline = [0.80, 0.84, 0.83], [0.78, 0.79, 0.77]
    summary, base = run_all.Summary(values), run_all.Summary(baseline)
    assert summary.format(2, 100.0) == f"{statistics.fmean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"
    delta = (statistics.fmean(values) - statistics.fmean(baseline)) * 100
    error = math.sqrt(statistics.variance(values) / 3 + statistics.variance(baseline) / 3) * 100
    assert run_all.difference(summary, base) == f"{delta:+.1f} ± {error:.1f} *"  # 4.3 points > 2 × 1.3
    assert run_all.difference(run_all.Summary([0.8]), base) == f"{(0.8 - 0.78) * 100:+.1f}"
    assert run_all.Summary([]).format() == "—"
