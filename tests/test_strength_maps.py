"""hf_centered.strength_maps: the table, heatmap and summary of learned correction strengths."""

from __future__ import annotations

import json

import torch
from conftest import bert_config

from hf_centered import CenteredBertForSequenceClassification
from hf_centered.strength_maps import (
    has_learned_strengths,
    plot_strength_map,
    save_strengths,
    strength_table,
    summarise_strengths,
)

STRENGTHS = {
    "centered": {"layer 0": [0.5, -0.25, 0.0, 1.0], "layer 2": [0.0, 0.0, 0.0, 0.0]},
    "dgn": {"layer 0": [0.02], "layer 1": [-0.01]},
}


def test_table_has_a_row_per_place_and_a_column_per_correction():
    lines = strength_table(STRENGTHS).splitlines()
    assert lines[0] == "| place | `centered` | `dgn` |"
    assert lines[2] == "| layer 0 | +0.312 [-0.25, +1] | +0.02 |"
    assert lines[3] == "| layer 2 | +0 [+0, +0] | - |"
    assert lines[4] == "| layer 1 | - | -0.01 |"
    assert len(lines) == 5


def test_summary_gives_the_mean_per_place():
    assert summarise_strengths(STRENGTHS) == [
        "centered: layer 0 +0.312, layer 2 +0",
        "dgn: layer 0 +0.02, layer 1 -0.01",
    ]


def test_heatmap_and_json(tmp_path):
    image = plot_strength_map(STRENGTHS, tmp_path / "map.png", title="tiny")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(save_strengths(STRENGTHS, tmp_path / "map.json").read_text()) == STRENGTHS


def test_only_learned_strengths_are_detected():
    assert not has_learned_strengths(CenteredBertForSequenceClassification(bert_config(correction="centered")))
    learned = CenteredBertForSequenceClassification(bert_config(correction="centered", correction_strength="learned"))
    assert has_learned_strengths(learned)
    assert torch.all(learned.bert.encoder.layer[0].attention.self.corrections["centered"].strength_gate == 0)
