"""experiments/segmentation_depth.py: its units (options as finetune.py reads them), its patch-token profile against
the definition of the mean pairwise cosine, one tiny unit trained end to end, and its report section over a partial
and a complete cache."""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))  # modules by name, as run_all.py finds them

import run_all  # noqa: E402
import segmentation_depth as seg  # noqa: E402
from runner.cache import ResultCache  # noqa: E402
from runner.plan import TINY, Plan  # noqa: E402
from runner.report import write_report  # noqa: E402
from runner.statistics import Results, Summary, difference  # noqa: E402
from runner.units import PROFILE_METRICS  # noqa: E402
from runner.variants import LEARNED, is_fusion, variants  # noqa: E402
from runner.worker import execute_unit, prepared_data, recipe_argv  # noqa: E402

from hf_centered import finetuning  # noqa: E402


def segmentation_plan(root: Path) -> Plan:
    """The tests' tiny plan with this experiment alone, three seeds (the report's ± and `*` need several)."""
    return replace(
        run_all.tiny_plan(root),
        experiments=(seg.SEGMENTATION_DEPTH,),
        settings={seg.SEGMENTATION_DEPTH.name: seg.segmentation_settings(TINY)},
        seeds=(42, 43, 44),
    )


def test_the_grid_is_every_correction_the_gate_fusion_and_two_learned_at_every_depth_and_seed():
    plan = run_all.full_plan()
    settings = plan.settings[seg.SEGMENTATION_DEPTH.name]
    assert settings.depths == (4, 8, 16, 32)
    # 500 optimiser steps: fewer left the shallowest stock ViT at the all-background score in the probes.
    train_mosaics = settings.mosaic_images - round(settings.mosaic_images * 0.2)
    assert math.ceil(train_mosaics / 32) * settings.epochs == 500
    corrections = [name for name in variants() if not is_fusion(name)]
    assert seg.segmentation_variants() == [*corrections, "gate", "dgn" + LEARNED, "centered" + LEARNED]
    units = seg.segmentation_units(plan)
    assert len(units) == len({unit.key for unit in units}) == 4 * len(plan.seeds) * (len(corrections) + 3)
    deepest = {unit.key: unit for unit in units}["seg/d32/dgn@learned/seed44"]
    assert deepest.cost == 32 and not deepest.alone and deepest.measure is seg.measure_patch_profile


def test_a_unit_runs_the_segmentation_vit_of_its_depth_and_variant(tmp_path):
    plan = segmentation_plan(tmp_path)
    unit = seg.segmentation_unit(plan, 2, "centered" + LEARNED, 43)
    args, config, _, _, data = prepared_data([*recipe_argv(tmp_path), *unit.options, "--output_dir", str(tmp_path)])
    assert args.task.name == "image-segmentation" and args.training.seed == 43
    assert (config.num_hidden_layers, config.image_size, config.patch_size, config.hidden_size) == (2, 16, 4, 64)
    assert config.correction == "centered" and config.correction_strength == "learned"
    assert data.examples == (16, 4)  # 20 mosaics, a fifth held out
    assert data.evaluation[0]["pixel_values"].shape == (1, 16, 16)


def pairwise_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of rows of `tokens` (tokens × features)."""
    cosines = F.cosine_similarity(tokens[:, None, :], tokens[None, :, :], dim=-1)
    count = len(tokens)
    return float((cosines.sum() - cosines.diagonal().sum()) / (count * (count - 1)))


def test_the_profile_leaves_the_cls_token_out(tmp_path):
    plan = segmentation_plan(tmp_path)
    unit = seg.segmentation_unit(plan, 2, "gate", 42)
    args, config, source, _, data = prepared_data([*recipe_argv(tmp_path), *unit.options, "--output_dir", "unused"])
    model = finetuning.build_model(config, source, args.task).eval()
    measured = seg.measure_patch_profile(model, data, args, 3)
    assert measured["profile_sequences"] == 3
    assert set(measured["profile"]) == set(measured["head_input"]) == set(PROFILE_METRICS)
    pixels = torch.stack([data.evaluation[i]["pixel_values"] for i in range(3)])
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        head_input = model.vit(pixel_values=pixels).last_hidden_state  # fused by the gate
    assert hidden[-1].shape[1] == 17  # [CLS] and 16 patches
    for layer in (0, 2):
        patches = statistics.fmean(pairwise_cosine(sequence[1:]) for sequence in hidden[layer])
        with_cls = statistics.fmean(pairwise_cosine(sequence) for sequence in hidden[layer])
        assert measured["profile"]["cosine_similarity"][layer] == pytest.approx(patches, abs=1e-5)
        assert patches != pytest.approx(with_cls, abs=1e-4)
    head = statistics.fmean(pairwise_cosine(sequence[1:]) for sequence in head_input)
    assert measured["head_input"]["cosine_similarity"] == pytest.approx(head, abs=1e-5)


def test_a_tiny_unit_trains_and_stores_the_segmentation_metrics(tmp_path):
    plan = segmentation_plan(tmp_path)
    unit = seg.segmentation_unit(plan, 1, "dgn" + LEARNED, 42)
    result, summary = execute_unit(unit, tmp_path / "run", 4, recipe_argv(tmp_path))
    assert summary.startswith(f"mean_iou {result['mean_iou']:.4f}")
    for name in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert 0.0 <= result[name] <= 1.0
    assert len(result["profile"]["cosine_similarity"]) == 2 and result["profile_sequences"] == 4
    assert list(result["strengths"]) == ["dgn"] and result["train_seconds"] > 0


def made_up_result(mean_iou: float, cosine: float, depth: int) -> dict:
    return {
        "mean_iou": mean_iou,
        "mean_accuracy": 0.5,
        "overall_accuracy": 0.9,
        "profile": {metric: [cosine] * (depth + 1) for metric in PROFILE_METRICS},
        "head_input": dict.fromkeys(PROFILE_METRICS, cosine),
        "profile_sequences": 6,
    }


def test_the_section_reports_the_measured_units_and_computes_its_differences(tmp_path):
    plan = segmentation_plan(tmp_path)
    cache = ResultCache(plan.results_path)
    stock_iou, dgn_iou = [0.20, 0.22, 0.24], [0.30, 0.33, 0.31]
    for seed, stock, dgn in zip(plan.seeds, stock_iou, dgn_iou, strict=True):
        cache.put(seg.segmentation_unit(plan, 1, "none", seed), made_up_result(stock, 0.9, 1), 1.0)
        cache.put(seg.segmentation_unit(plan, 1, "dgn", seed), made_up_result(dgn, 0.4, 1), 1.0)
    cache.put(seg.segmentation_unit(plan, 2, "none", 42), made_up_result(0.1, 0.95, 2), 1.0)
    write_report(plan)  # most units missing: the report is still written
    report = plan.report_path.read_text()
    section = report.split("## Segmentation depth sweep")[1].split("## Findings")[0]
    total = len(seg.segmentation_units(plan))
    assert f"*{total - 7} of this experiment's {total} units are not measured yet" in section
    stock, dgn = Summary(stock_iou), Summary(dgn_iou)
    mean_iou_table = section.split("Mean IoU, mean")[1]
    assert f"| none | {stock.mean:.3f} ± {stock.std:.3f} | 0.100 |" in mean_iou_table
    assert f"| dgn | {dgn.mean:.3f} ± {dgn.std:.3f} | — |" in mean_iou_table
    assert "| none | 90.0 ± 0.0 | 90.0 |" in section  # pixel accuracy in %
    assert "| dgn | 0.400 ± 0.000 | — |" in section.split("cosine similarity of the patch tokens")[1]
    assert f"| dgn | {difference(dgn, stock)} | — |" in section.split("difference to `none`")[1]
    assert difference(dgn, stock).endswith(" *")  # 9.3 points over two standard errors of 1.6
    findings = Results(plan, ResultCache(plan.results_path))
    assert seg.segmentation_findings(findings) == [
        "- Segmentation, `none`: mean IoU 0.220 at depth 1, 0.100 at depth 2.",
        f"- Segmentation depth 1: best `dgn` at mean IoU {dgn.format(3)}; against `none` {difference(dgn, stock)} "
        "points; its patch cosine 0.400 ± 0.000 (`none` 0.900 ± 0.000).",
        "- Segmentation depth 2: no variant beats `none` (0.100, patch cosine 0.950).",
    ]
    assert (plan.images_dir / seg.SEGMENTATION_IMAGE).stat().st_size > 0


def test_an_unmeasured_experiment_renders_empty_tables_and_no_findings(tmp_path):
    plan = segmentation_plan(tmp_path)
    assert seg.segmentation_findings(Results(plan, ResultCache(plan.results_path))) == []
    write_report(plan)
    section = plan.report_path.read_text().split("## Segmentation depth sweep")[1]
    assert "*48 of this experiment's 48 units are not measured yet" in section  # 2 depths, 3 seeds, 8 variants
    assert "| centered@learned | — | — |" in section and "## Findings (computed from the tables above)\n<!--" in section
