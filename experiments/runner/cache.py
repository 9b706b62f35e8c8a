"""The result cache: one JSON file per plan holding every finished unit's options and result, rewritten after each
unit, so that an interrupted run resumes where it stopped and a unit whose options changed runs again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.units import Unit


class ResultCache:
    """`{"units": {key: {"options", "result", "wall_seconds"}}, "invocations": [...]}`, rewritten after each unit."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"units": {}, "invocations": []}
        if path.is_file():
            self.data = json.loads(path.read_text())

    def get(self, unit: Unit) -> dict[str, Any] | None:
        entry = self.data["units"].get(unit.key)
        return entry if entry is not None and entry["options"] == list(unit.options) else None

    def put(self, unit: Unit, result: dict[str, Any], wall_seconds: float) -> None:
        self.data["units"][unit.key] = {"options": list(unit.options), "result": result, "wall_seconds": wall_seconds}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        partial.replace(self.path)
