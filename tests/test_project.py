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
    closing = [c.source for c in nb.cells[-2:]]  # the exercises end the notebook, or come before its references
    assert any("## Exercises" in c for c in closing)
    assert "## References" in closing[-1] or "## Exercises" in closing[-1]


PACKAGE = ROOT / "histolab_utils"
STAGES = ("data", "tiling", "stain", "evaluation", "diffusion", "models", "latent", "segmentation")  # lower to higher


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Every histolab_utils module and the package modules it imports (at the top or inside functions)."""
    import ast

    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets.add(base)
                targets |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_module_imports_the_cli_and_stages_import_only_lower_stages():
    graph = package_imports()
    assert "histolab_utils.diffusion.training" in graph and "histolab_utils.models.vqgan" in graph
    importers_of_cli = sorted(m for m, targets in graph.items() if "histolab_utils.train" in targets)
    assert importers_of_cli == [], f"the CLI is imported by {importers_of_cli}"
    upward = sorted((m, t) for m, targets in graph.items() for t in targets
                    if _stage(m) and _stage(t) and STAGES.index(_stage(t)) > STAGES.index(_stage(m)))
    assert upward == [], f"lower stages import higher ones: {upward}"
    plumbing = sorted((m, t) for m, targets in graph.items() if _stage(m) for t in targets
                      if t in ("histolab_utils.config", "histolab_utils.runner"))
    assert plumbing == [], f"stages import the notebook plumbing: {plumbing}"


def test_there_is_no_import_loop():
    graph = package_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                loop = path[path.index(target):] + [target]
                pytest.fail("import loop: " + " -> ".join(loop))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_notebook_is_in_exactly_one_nbval_chain():
    """.ci/nbval runs the notebooks as two chains side by side: a notebook left out would never be tested."""
    import re

    script = (ROOT / ".ci" / "nbval").read_text()
    chains = re.findall(r'^CHAIN_[AB]="([^"]+)"', script, flags=re.M)
    listed = [name for chain in chains for name in chain.split()]
    assert len(chains) == 2 and len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
