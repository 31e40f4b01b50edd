"""Checks on the project's own files: install lists in step, notebooks committed clean."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_environment_yml_pip_list_matches_pyproject_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    pip = [p for p in pip_sections[0] if p != "-e ."]
    assert "-e ." in pip_sections[0], "environment.yml must install the project itself"
    assert sorted(pip) == sorted(pyproject), (
        f"only in pyproject: {sorted(set(pyproject) - set(pip))}; only in environment.yml: {sorted(set(pip) - set(pyproject))}"
    )


def test_makefile_pins_torch_before_the_project():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH   ?= torch==2.13.0" in makefile
    assert makefile.index('pip install -q "$(TORCH)"') < makefile.index("pip install -q -e .")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_there_are_numbered_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_data_tour.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} cell {index} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_have_goals_setup_asserts_and_exercises(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "Learning goals" in nb.cells[0].source
    assert f'setup_notebook("{path.stem}")' in text
    assert "save_metrics(" in text and "assert " in text
    assert "## Exercises" in nb.cells[-1].source
