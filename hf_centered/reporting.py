"""Helpers of the generated reports (`bench/run.py` → docs/PERFORMANCE.md, `experiments/run_all.py` → docs/RESULTS.md).

Not part of the Hub-shipped model code: the scripts that measure something record the machine they ran on and
rewrite only their own generated section of a hand-edited markdown file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import transformers


def machine_description(device: str = "cpu") -> dict[str, str]:
    """CPU model, core count, torch threads, library versions and, on a GPU device, the GPU's name."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    description = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name()
    return description


def write_generated_section(path: Path, generated: str, begin: str, end: str, new_file_heading: str = "") -> None:
    """Writes `generated` between the `begin` and `end` marker lines of `path`, keeping everything around them.

    A missing (or empty) file is created as `new_file_heading` followed by the marked section. An existing file
    without both markers is refused rather than overwritten: it may hold text nobody generated.
    """
    section = f"{begin}\n{generated.strip()}\n{end}"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        section = before + section + rest.split(end, 1)[1]
    elif text.strip():
        raise ValueError(f"{path} has no {begin} ... {end} markers to write between; add them where the report goes")
    elif new_file_heading:
        section = f"{new_file_heading.rstrip()}\n\n{section}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(section if section.endswith("\n") else section + "\n")
