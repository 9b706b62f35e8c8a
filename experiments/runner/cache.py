"""The result cache: one JSON file per plan holding every finished unit's options and result, rewritten after each
unit, so that an interrupted run resumes where it stopped and a unit whose options changed runs again. Each
invocation of the runner is recorded in the same writes (units run, wall time, machine), so that a run stopped at any
moment still accounts for the units it finished."""

from __future__ import annotations

import json
import time
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
        self.invocation: dict[str, Any] | None = None  # this process's entry in "invocations", once a unit is put
        self.invocation_started = 0.0

    def start_invocation(self, machine: dict[str, str]) -> None:
        """Counts the units put from now on as one invocation on `machine`; it is recorded with its first unit."""
        self.invocation = {"units_run": 0, "wall_seconds": 0.0, "finished": "", "machine": machine}
        self.invocation_started = time.perf_counter()

    def get(self, unit: Unit) -> dict[str, Any] | None:
        entry = self.data["units"].get(unit.key)
        return entry if entry is not None and entry["options"] == list(unit.options) else None

    def put(self, unit: Unit, result: dict[str, Any], wall_seconds: float) -> None:
        self.data["units"][unit.key] = {"options": list(unit.options), "result": result, "wall_seconds": wall_seconds}
        if self.invocation is not None:
            if not self.invocation["units_run"]:
                self.data["invocations"].append(self.invocation)
            self.invocation["units_run"] += 1
            self.invocation["wall_seconds"] = time.perf_counter() - self.invocation_started
            self.invocation["finished"] = time.strftime("%Y-%m-%d %H:%M")
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        partial.replace(self.path)
