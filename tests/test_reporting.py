"""hf_centered.reporting: the generated section replaces only itself, and never overwrites an unmarked file."""

from __future__ import annotations

import pytest

from hf_centered.reporting import machine_description, write_generated_section

BEGIN, END = "<!-- gen: begin -->", "<!-- gen: end -->"


def test_only_the_marked_section_is_replaced(tmp_path):
    path = tmp_path / "REPORT.md"
    path.write_text(f"# Title\n\nAnalysis.\n\n{BEGIN}\nold table\n{END}\n\nDiscussion.\n")
    write_generated_section(path, "new table\n", BEGIN, END, new_file_heading="# Ignored")
    assert path.read_text() == f"# Title\n\nAnalysis.\n\n{BEGIN}\nnew table\n{END}\n\nDiscussion.\n"


def test_a_new_file_gets_the_heading_and_the_markers(tmp_path):
    path = tmp_path / "sub" / "REPORT.md"
    write_generated_section(path, "table", BEGIN, END, new_file_heading="# Report")
    assert path.read_text() == f"# Report\n\n{BEGIN}\ntable\n{END}\n"


def test_an_unmarked_file_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# Hand-written\n")
    with pytest.raises(ValueError, match=r"README.md has no <!-- gen: begin --> \.\.\. <!-- gen: end --> markers"):
        write_generated_section(path, "table", BEGIN, END)
    assert path.read_text() == "# Hand-written\n"


def test_machine_description_names_the_versions():
    description = machine_description()
    assert {"cpu", "cores", "torch", "transformers", "python"} <= description.keys()
    assert "gpu" not in description
