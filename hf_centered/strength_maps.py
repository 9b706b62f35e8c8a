"""Strength maps: what each layer (and head) of a model with `correction_strength="learned"` asked for.

`model.correction_strengths()` gives `{correction: {place: values}}` (see `CenteredPreTrainedMixin`); this module turns
that into a Markdown table, a heatmap (place × head, one panel per correction) and a one-line summary per correction.
A learned strength is the configured one times its gate, so 0 means "stock here", the configured value means "the
paper's strength", and a negative value means the opposite correction (e.g. more smoothing for centered attention).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Strengths = Mapping[str, Mapping[str, list[float]]]


def has_learned_strengths(model) -> bool:
    """Whether the model (or the model a PEFT wrapper holds) learns its correction strengths."""
    return any("strength_gate" in name for name, _ in model.named_parameters())


def strength_table(strengths: Strengths) -> str:
    """Markdown: a row per place (layer), a column per correction; several heads show as `mean [min, max]`."""
    places = _places(strengths)
    lines = ["| place | " + " | ".join(f"`{name}`" for name in strengths) + " |"]
    lines.append("|---" * (len(strengths) + 1) + "|")
    for place in places:
        cells = [_cell(entries.get(place)) for entries in strengths.values()]
        lines.append(f"| {place} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise_strengths(strengths: Strengths) -> list[str]:
    """One line per correction: its mean strength per place, in place order."""
    return [
        f"{name}: " + ", ".join(f"{place} {np.mean(values):+.3g}" for place, values in entries.items())
        for name, entries in strengths.items()
    ]


def save_strengths(strengths: Strengths, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(strengths, indent=1) + "\n")
    return path


def plot_strength_map(strengths: Strengths, path: str | Path, title: str | None = None) -> Path:
    """PNG heatmap per correction: a row per place, a column per head (one column where the strength is per layer),
    on a symmetric diverging scale so that 0 (stock) is white and the sign is the colour."""
    from matplotlib.figure import Figure

    if not strengths:
        raise ValueError("plot_strength_map needs at least one correction")
    figure = Figure(figsize=(2.2 + 1.8 * len(strengths), 0.9 + 0.32 * len(_places(strengths))), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(strengths), squeeze=False)[0])
    for axis, (name, entries) in zip(axes, strengths.items(), strict=True):
        places = list(entries)
        width = max(len(values) for values in entries.values())
        matrix = np.full((len(places), width), np.nan)
        for row, place in enumerate(places):
            matrix[row, : len(entries[place])] = entries[place]
        bound = float(np.nanmax(np.abs(matrix))) or 1.0
        image = axis.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        axis.set_yticks(range(len(places)), places, fontsize="small")
        axis.set_xticks(range(width), [str(head) for head in range(width)] if width > 1 else ["all"], fontsize="small")
        axis.set_xlabel("head" if width > 1 else "")
        axis.set_title(name, fontsize="medium")
        figure.colorbar(image, ax=axis, shrink=0.8)
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, format="png", dpi=120)
    return path


def _places(strengths: Strengths) -> list[str]:
    """Every place in order of first appearance (layers in order, then "final norm", then "output")."""
    places: dict[str, None] = {}
    for entries in strengths.values():
        places.update(dict.fromkeys(entries))
    return list(places)


def _cell(values: list[float] | None) -> str:
    if values is None:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.3g}"
    return f"{np.mean(values):+.3g} [{min(values):+.3g}, {max(values):+.3g}]"
