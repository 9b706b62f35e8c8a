"""experiments/: the quick plan's code paths on a tiny slice, resuming, the registry of experiments, and the report's
statistics.

No accuracy is asserted: these runs train for a step or two. What is checked is that every unit runs through
finetune.py, that its results land in the cache, that a second invocation reruns nothing, that the report has a
row for every registered method and a section for every registered experiment, and that an experiment joins the plan
and the report through its registry entry alone.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # modules by name, as run_all.py finds them, so spawned workers can too

import learned_strengths  # noqa: E402
import minilm  # noqa: E402
import run_all  # noqa: E402
import vit_digits  # noqa: E402
from runner.cache import ResultCache  # noqa: E402
from runner.plan import Experiment, Plan, all_units  # noqa: E402
from runner.report import (  # noqa: E402
    HEADLINE_BEGIN,
    HEADLINE_END,
    REPORT_BEGIN,
    REPORT_END,
    compute_line,
    machines_line,
    metric_tables,
    write_report,
)
from runner.scheduling import run_plan, run_units  # noqa: E402
from runner.statistics import Results, Summary, difference  # noqa: E402
from runner.units import PROFILE_METRICS, Unit, measure_profile  # noqa: E402
from runner.variants import ALL_AT_ONCE, LEARNED, default_value, is_fusion, variants  # noqa: E402

FINETUNING, DEPTH_SWEEP = minilm.FINETUNING.name, vit_digits.DEPTH_SWEEP.name
STRENGTHS = learned_strengths.LEARNED_STRENGTHS.name


def tiny_plan(root: Path) -> Plan:
    return run_all.tiny_plan(root)


def unit_depth(key: str) -> int:
    """The layers of a unit's model: `d<depth>` in its key (the depth sweeps), else MiniLM's 6."""
    match = re.search(r"/d(\d+)/", key)
    return int(match.group(1)) if match else 6


def test_quick_plan_code_paths_run_on_a_tiny_slice_and_resume(tmp_path, capsys):
    plan = tiny_plan(tmp_path)
    assert run_all.main([], plan=plan) == 0
    cache = json.loads(plan.results_path.read_text())
    assert set(cache["units"]) == {unit.key for unit in all_units(plan)}
    for key, entry in cache["units"].items():
        result = entry["result"]
        depth = unit_depth(key)
        for metric in PROFILE_METRICS:
            assert len(result["profile"][metric]) == depth + 1, key
            assert math.isfinite(result["head_input"][metric]), key
        assert 0 < result["profile_sequences"] <= 6, key  # the tiny evaluation sets of some hold fewer
        if key.startswith(("text/", "vit/")):  # the other experiments' tests check their tasks' metrics
            assert 0.0 <= result["accuracy"] <= 1.0 and result["train_seconds"] > 0
        assert ("strengths" in result) == (LEARNED in key), key
        if LEARNED in key and key.startswith("text/"):  # per correction, a place per layer
            variant = key.split("/")[1].removesuffix(LEARNED)
            expected = learned_strengths.strength_variants()[:-1] if variant == ALL_AT_ONCE else [variant]
            assert list(result["strengths"]) == expected and "layer 5" in result["strengths"][expected[-1]], key
    # A fusion changes what the head reads, not the pretrained layers; without one the head reads the last layer.
    before = {variant: cache["units"][f"pretrained/{variant}"]["result"] for variant in variants()}
    assert before["max"]["profile"] == before["none"]["profile"]
    assert before["max"]["head_input"]["cosine_similarity"] != before["none"]["head_input"]["cosine_similarity"]
    assert before["none"]["head_input"]["cosine_similarity"] == pytest.approx(
        before["none"]["profile"]["cosine_similarity"][-1], rel=1e-5
    )

    report = plan.report_path.read_text()
    for variant in variants():
        assert f"| {variant} |" in report
    for variant in learned_strengths.strength_variants():
        assert f"| {variant} | learned | 1 |" in report
    assert "not measured yet" not in report
    images = (
        "depth_sweep.png",
        "learned_strengths.png",
        *(f"profile_{metric}.png" for metric in PROFILE_METRICS),
    )
    for image in images:
        assert (plan.images_dir / image).stat().st_size > 0
        assert f"images/{image}" in report

    capsys.readouterr()
    assert run_all.main([], plan=plan) == 0  # everything cached: nothing runs, the report is rewritten
    assert "0 to run" in capsys.readouterr().out
    assert json.loads(plan.results_path.read_text())["units"] == cache["units"]


def cache_made_up_results(plan: Plan) -> None:
    """A result for every unit of `plan`, the same numbers everywhere (what the report's layout needs)."""
    cache = ResultCache(plan.results_path)
    for unit in all_units(plan):
        series = [0.5] * (unit_depth(unit.key) + 1)
        result = {
            "profile": {metric: series for metric in PROFILE_METRICS},
            "head_input": {metric: 0.5 for metric in PROFILE_METRICS},
            "profile_sequences": 6,
            "train_examples": 16,
            "eval_examples": 12,
            "accuracy": 0.75,
            "f1_macro": 0.7,
            **dict.fromkeys(("f1", "precision", "recall", "mean_iou", "mean_accuracy", "overall_accuracy"), 0.6),
            "perplexity": 90.0,
            "most_frequent_token_accuracy": 0.05,
            "train_seconds": 2.0,
        }
        if LEARNED in unit.key:
            result["strengths"] = {"centered": {"layer 0": [0.1, -0.1], "layer 1": [0.2, 0.0]}}
        cache.put(unit, result, 1.0)


def added_units(plan: Plan) -> list[Unit]:
    """A unit of its own and one it shares with experiment 3."""
    return [Unit("added/seed42", ("--seed", "42", *plan.settings["added"])), minilm.text_unit(plan, "none", 42)]


def added_section(results: Results) -> list[str]:
    return ["## Added experiment", "", f"accuracy {results['added/seed42']['accuracy']:.2f}, shared unit read.", ""]


ADDED = Experiment(
    name="added",
    settings=lambda size: ("--max_steps", "9" if size == "full" else "1"),
    units=added_units,
    section=added_section,
    setup=lambda results: ["- Added: its own setup."],
    profiled=lambda results: "3 added inputs",
    findings=lambda results: ["- Added: its finding."],
    headline_image=("added plot", "added.png"),
)


def test_every_experiment_is_reported_in_registry_order_inside_kept_hand_written_text(tmp_path):
    """The registered experiments and one more, appended to the plan's experiments with its settings and nothing
    else: its unit is cached, and its setup, section, findings and headline image land in the report and README."""
    tiny = tiny_plan(tmp_path)
    readme = tmp_path / "README.md"
    plan = replace(
        tiny,
        experiments=(*tiny.experiments, ADDED),
        settings={**tiny.settings, "added": ADDED.settings("full")},
        readme_path=readme,
    )
    cache_made_up_results(plan)
    assert ResultCache(plan.results_path).data["units"]["added/seed42"]["options"] == [
        "--seed",
        "42",
        "--max_steps",
        "9",
    ]
    plan.report_path.write_text(f"# Results\n\nDiscussion.\n\n{REPORT_BEGIN}\nold\n{REPORT_END}\nTail.\n")
    readme.write_text(f"# Project\n\n{HEADLINE_BEGIN}\n{HEADLINE_END}\n\n## Usage\n")
    write_report(plan)
    report = plan.report_path.read_text()
    assert report.startswith("# Results\n\nDiscussion.\n\n")
    assert report.endswith(f"{REPORT_END}\nTail.\n")
    assert "old" not in report and "| none | 1 | 75.0 | 75.0 | 70.0 | — | 1.00 (1.00–1.00) |" in report
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:5] == [
        "## Setup",
        "## Experiment 1: over-smoothing profiles of the pretrained MiniLM, before and after fine-tuning",
        "## Experiment 2: depth sweep, ViT from scratch on digits",
        "## Experiment 3: fine-tuning MiniLM on Rotten Tomatoes",
        "## Experiment 4: pretrained-safe corrections (learned strengths)",
    ]
    assert headings[-2:] == ["## Added experiment", "## Findings (computed from the tables above)"]
    assert len(headings) == len(run_all.EXPERIMENTS) + 3, "a section per experiment, with Setup, Added and Findings"
    assert "accuracy 0.75, shared unit read." in report
    assert "- Images (experiment 2)" in report and "- Added: its own setup.\n- Profiles: the first 6 held-out" in report
    profiles = next(line for line in report.splitlines() if line.startswith("- Profiles: the first 6 held-out"))
    assert "6 test images" in profiles and "or 3 added inputs, every real token" in profiles
    findings = report.split("## Findings")[1].split(REPORT_END)[0].strip().splitlines()
    # in registry order, the added experiment last; the profiles' observation after all (findings_order)
    assert findings.index("- Added: its finding.") == len(findings) - 2
    assert findings.index("- Added: its finding.") > findings.index(next(f for f in findings if "fixed against" in f))
    assert findings[-1].startswith("- Fine-tuning raises")  # the profiles' observation comes last (findings_order)
    headline = readme.read_text()
    assert headline.startswith("# Project\n\n") and headline.endswith(f"{HEADLINE_END}\n\n## Usage\n")
    assert "(images/depth_sweep.png)\n\n![added plot](images/added.png)" in headline
    assert "[RESULTS.md](RESULTS.md)" in headline and "- Depth 2: best `none` at 75.0 %" in headline
    assert "- Added: its finding." in headline


def test_the_registry_is_the_one_list_of_experiments():
    """Both plans run the registered experiments, each with its own full or quick settings; units shared by
    experiments are one unit, and two experiments defining a key differently are refused."""
    full, quick = run_all.full_plan(), run_all.quick_plan()
    assert full.experiments == quick.experiments == run_all.EXPERIMENTS
    names = [experiment.name for experiment in run_all.EXPERIMENTS]
    assert names[:4] == ["profiles", DEPTH_SWEEP, FINETUNING, STRENGTHS] and len(set(names)) == len(names)
    for experiment in run_all.EXPERIMENTS:
        assert full.settings[experiment.name] == experiment.settings("full")
        assert quick.settings[experiment.name] == experiment.settings("quick")
    assert set(full.settings) == set(quick.settings) == {experiment.name for experiment in run_all.EXPERIMENTS}
    keys = [unit.key for unit in all_units(full)]
    assert len(keys) == len(set(keys)) == len({u.key for e in full.experiments for u in e.units(full)})
    clash = replace(ADDED, units=lambda plan: [replace(minilm.text_unit(plan, "none", 42), options=("--seed", "1"))])
    plan = replace(full, experiments=(*full.experiments, clash), settings={**full.settings, "added": ()})
    with pytest.raises(ValueError, match="experiment added defines unit text/none/seed42 unlike an earlier"):
        all_units(plan)


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
    write_report(regenerated)
    assert (docs / "RESULTS.md").read_text() == plan.report_path.read_text()
    assert (tmp_path / "README.md").read_text() == plan.readme_path.read_text()
    assert REPORT_BEGIN in plan.report_path.read_text()


def test_report_names_the_missing_units(tmp_path):
    plan = tiny_plan(tmp_path)
    with pytest.raises(SystemExit, match=r"unit\(s\) of plan tiny have no cached result \(pretrained/none"):
        write_report(plan)


def test_a_changed_option_invalidates_only_that_unit(tmp_path):
    plan = tiny_plan(tmp_path)
    cache = ResultCache(tmp_path / "cache.json")
    text = [unit for unit in all_units(plan) if unit.alone]
    for unit in text:
        cache.put(unit, {"accuracy": 0.5}, 1.0)
    finetuning = plan.settings[FINETUNING]
    longer = replace(finetuning, options=(*finetuning.options, "--learning_rate", "1e-4"))
    changed_text = [
        unit for unit in all_units(replace(plan, settings={**plan.settings, FINETUNING: longer})) if unit.alone
    ]
    reloaded = ResultCache(tmp_path / "cache.json")
    assert all(reloaded.get(unit) is not None for unit in text)
    assert all(reloaded.get(unit) is None for unit in changed_text)


def measure_evaluation_rows(model, data, args, sequences: int) -> dict:
    """A measure hook of a test's own (module-level, so that the spawned worker unpickles it by name)."""
    return {**measure_profile(model, data, args, sequences), "evaluation_rows": len(data.evaluation)}


def test_a_unit_runs_its_own_measure_and_a_failing_unit_is_reported_by_key(tmp_path):
    plan = tiny_plan(tmp_path)
    cache = ResultCache(plan.results_path)
    grid_unit = next(unit for unit in vit_digits.depth_sweep_units(plan) if unit.key == "vit/d1/none/seed42")
    good = replace(grid_unit, measure=measure_evaluation_rows)
    bad = replace(good, key="vit/d1/bad/seed42", options=(*good.options, "--correction", "no-such-method"))
    failures = run_units([good, bad], 2, plan, cache, log=lambda line: None)
    assert len(failures) == 1 and failures[0].startswith("vit/d1/bad/seed42: error: unknown correction")
    assert "vit__d1__bad__seed42.log" in failures[0]
    assert cache.get(bad) is None
    result = cache.get(good)["result"]
    assert result["evaluation_rows"] == 24 and len(result["profile"]["cosine_similarity"]) == 2  # --max_eval_samples
    assert {"accuracy", "f1_macro"} <= set(result)  # image classification's metric_names


def test_a_run_stopped_after_a_unit_keeps_that_unit_and_its_time_in_the_invocations(tmp_path):
    """A long plan is stopped and resumed across sessions: each invocation's record is written with each result."""
    plan = tiny_plan(tmp_path)
    two = [unit for unit in vit_digits.depth_sweep_units(plan) if unit.key.startswith("vit/d1/")][:2]
    only_two = Experiment(name="two", units=lambda plan: two, section=lambda results: [])
    plan = replace(plan, experiments=(only_two,), settings={}, workers=1)

    def stop_after_the_first_unit(line: str) -> None:
        if line.startswith("[1/2]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, log=stop_after_the_first_unit)
    stopped = ResultCache(plan.results_path)
    assert sum(stopped.get(unit) is not None for unit in two) == 1
    [invocation] = stopped.data["invocations"]
    assert invocation["units_run"] == 1 and invocation["wall_seconds"] > 0 and invocation["finished"]
    run_plan(plan, log=lambda line: None)
    resumed = ResultCache(plan.results_path)
    assert all(resumed.get(unit) is not None for unit in two)
    assert [entry["units_run"] for entry in resumed.data["invocations"]] == [1, 1]
    run_plan(plan, log=lambda line: None)  # nothing missing: no invocation recorded
    assert len(ResultCache(plan.results_path).data["invocations"]) == 2


def test_every_registered_method_is_in_every_experiment():
    plan = run_all.full_plan()
    keys = {unit.key for unit in all_units(plan)}
    sweep, strengths = plan.settings[DEPTH_SWEEP], plan.settings[STRENGTHS]
    for variant in variants():
        assert f"pretrained/{variant}" in keys and f"text/{variant}/seed42" in keys
        if not is_fusion(variant):
            assert all(f"text/{variant}/seed{seed}" in keys for seed in plan.seeds)
            assert all(f"vit/d{depth}/{variant}/seed42" in keys for depth in sweep.depths)
    for variant in learned_strengths.strength_variants():  # experiment 4: every correction, fixed and learned
        for seed in strengths.seeds:
            assert {f"text/{variant}/seed{seed}", f"text/{variant}{LEARNED}/seed{seed}"} <= keys
    # The sweep's default values are the depth grid's units: the experiment lists no unit of its own for them.
    grid = len(sweep.depths) * len(plan.seeds) * len(sweep.variants)
    off_default = sum(value != default_value(name) for name, values in sweep.sweep_values.items() for value in values)
    assert len({unit.key for unit in vit_digits.depth_sweep_units(plan)}) == grid + off_default * len(plan.seeds)
    quick_units = all_units(run_all.quick_plan())
    quick_variants = {unit.key.split("/")[1] for unit in quick_units if unit.alone}
    strength_variants = set(learned_strengths.strength_variants())
    assert quick_variants == set(variants()) | strength_variants | {v + LEARNED for v in strength_variants}
    assert any("@" in unit.key for unit in quick_units if not unit.alone)


def test_difference_and_summary_follow_the_explicit_formulas():
    values, baseline = [0.80, 0.84, 0.83], [0.78, 0.79, 0.77]
    summary, base = Summary(values), Summary(baseline)
    assert summary.format(2, 100.0) == f"{statistics.fmean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"
    delta = (statistics.fmean(values) - statistics.fmean(baseline)) * 100
    error = math.sqrt(statistics.variance(values) / 3 + statistics.variance(baseline) / 3) * 100
    assert difference(summary, base) == f"{delta:+.1f} ± {error:.1f} *"  # 4.3 points > 2 × 1.3
    assert difference(Summary([0.8]), base) == f"{(0.8 - 0.78) * 100:+.1f}"
    assert Summary([]).format() == "—"


def test_only_measures_the_named_experiments_then_writes_the_whole_report(tmp_path, monkeypatch, capsys):
    measured, reported = [], []
    monkeypatch.setattr(run_all, "run_plan", lambda plan, log: measured.append(plan) or [])
    monkeypatch.setattr(run_all, "write_report", lambda plan: reported.append(plan) or plan.report_path)
    plan = tiny_plan(tmp_path)
    names = [run_all.EXPERIMENTS[-1].name, run_all.EXPERIMENTS[1].name]
    assert run_all.main(["--only", *names], plan=plan) == 0
    assert [experiment.name for experiment in measured[0].experiments] == [names[1], names[0]]  # in report order
    assert reported == [plan]
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_experiment"], plan=plan)
    assert "invalid choice: 'no_such_experiment'" in capsys.readouterr().err


def test_the_compute_line_adds_measured_core_hours_and_estimates_the_missing_units(tmp_path):
    """Measured: wall seconds × the cores a unit used. Missing: cost × its experiment's measured core-seconds per
    unit of cost, or the mean over all measured units where its experiment has none."""
    units = {
        "a": [Unit("a/1", ("--a", "1"), cost=1), Unit("a/2", ("--a", "2"), cost=3)],
        "b": [Unit("b/1", ("--b", "1"), cost=2, alone=True), Unit("b/2", ("--b", "2"), cost=1, alone=True)],
        "c": [Unit("c/1", ("--c", "1"), cost=1)],
    }
    experiments = tuple(
        Experiment(name=name, units=lambda plan, name=name: units[name], section=lambda results: []) for name in units
    )
    plan = replace(tiny_plan(tmp_path), experiments=experiments, settings={}, threads=2, workers=2)
    cache = ResultCache(plan.results_path)
    cache.put(units["a"][0], {}, 3600.0)  # a: 3600 core-seconds per unit of cost
    cache.put(units["b"][0], {}, 900.0)  # b: alone on 2 cores, 1800 core-seconds for a cost of 2
    measured = 3600 + 900 * 2
    mean_rate = measured / (1 + 2)
    estimate = 3 * 3600 + 1 * (1800 / 2) + 1 * mean_rate
    line = compute_line(Results(plan, cache))
    assert line == (
        f"- Compute: the measured units took {measured / 3600:.1f} core-hours; 3 unit(s) not measured yet, estimated "
        f"at {estimate / 3600:.1f} core-hours more (each at its experiment's measured seconds per unit of cost, or the "
        f"mean rate where none is measured): about {(measured + estimate) / 3600 / 2:.0f} hours for the whole plan on "
        "2 cores."
    )


def test_the_machine_line_names_every_machine_the_units_ran_on():
    """A plan resumed across sessions may have run on several machines: the report names each, not only the last."""
    amd = {"cpu": "AMD EPYC", "cores": "2", "torch": "2.13.0+cpu", "transformers": "5.23.0"}
    xeon = {**amd, "cpu": "Intel Xeon"}
    assert machines_line([amd, amd]) == "Machine: AMD EPYC, 2 cores, torch 2.13.0+cpu, transformers 5.23.0"
    assert machines_line([amd, xeon, xeon]) == (
        "Machines: AMD EPYC, 2 cores, torch 2.13.0+cpu, transformers 5.23.0 (1 invocation); "
        "Intel Xeon, 2 cores, torch 2.13.0+cpu, transformers 5.23.0 (2 invocations)"
    )


def test_a_metric_table_caption_counts_the_seeds_only_when_every_cell_has_them_all(tmp_path):
    plan = replace(tiny_plan(tmp_path), seeds=(42, 43, 44))
    results = Results(plan, ResultCache(plan.results_path))
    metrics = [("Accuracy (%)", lambda result: result["accuracy"], 100.0, 1)]

    def summary_with(seeds_at_depth_8: int):
        def summary_of(depth: int, variant: str, value) -> Summary:
            seeds = seeds_at_depth_8 if (depth, variant) == (8, "centered") else 3
            return Summary([0.5] * seeds)

        return summary_of

    complete = metric_tables(results, [4, 8], ["none", "centered"], metrics, summary_with(3))
    assert complete[0] == "Accuracy (%), mean ± std over 3 seeds:"
    assert "| centered | 50.0 ± 0.0 | 50.0 ± 0.0 |" in complete
    incomplete = metric_tables(results, [4, 8], ["none", "centered"], metrics, summary_with(1))
    assert incomplete[0] == "Accuracy (%), mean ± std over the seeds measured (of 3):"
    assert "| centered | 50.0 ± 0.0 | 50.0 |" in incomplete
    one_seed = Results(replace(plan, seeds=(42,)), results.cache)
    caption = metric_tables(one_seed, [4], ["none"], metrics, lambda depth, variant, value: Summary([0.5]))
    assert caption[0] == "Accuracy (%), mean ± std over 1 seed:"
