"""The README's quick start and its quoted figures stay true."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_start_has_exactly_two_commands_backed_by_the_makefile():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", quick_start.split("```bash", 1)[1].split("```", 1)[0], flags=re.M)
    assert commands == ["make finetune", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^finetune: install$", makefile, flags=re.M)
    assert re.search(r"^test: install", makefile, flags=re.M)
    assert re.search(r"^\tHF_HUB_OFFLINE=1 \$\(PYTHON\) finetune.py$", makefile, flags=re.M)  # the embedded default
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_quoted_profile_figures_match_the_committed_profile():
    readme = (ROOT / "README.md").read_text()
    profiles = json.loads((ROOT / "docs" / "images" / "minilm_profile.json").read_text())
    for label in ("stock", "centered", "contranorm"):
        assert f"{profiles[label]['cosine_similarity'][-1]:.3f}" in readme, label
        assert f"{profiles[label]['effective_rank'][-1]:.1f}" in readme, label
