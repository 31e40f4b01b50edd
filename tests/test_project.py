"""Checks on the project's own files: install lists in step, notebooks committed clean."""

from __future__ import annotations

import ast
import re

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
    assert makefile.index('pip install -q "$(TORCH)"') < makefile.index('pip install -q -e ".[ui]"')
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make ui-test"), "the browser test reads back the smoke runs of make test"


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
    closing = [c.source for c in nb.cells[-2:]]  # the exercises, then the references
    assert closing[0].startswith("## Exercises") and closing[1].startswith("## References"), path.name


MAX_CELL_LINES = 30


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_code_cell_is_longer_than_30_lines(path):
    """A code cell is narrative-sized: longer logic belongs in the package (a function with a docstring and a test),
    or the cell splits where the story does, with a sentence of markdown between."""
    nb = nbformat.read(path, as_version=4)
    lines = {index: len(cell.source.splitlines()) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    too_long = {index: n for index, n in lines.items() if n > MAX_CELL_LINES}
    assert not too_long, f"{path.name}: code cells over {MAX_CELL_LINES} lines ({{cell index: lines}}): {too_long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_saves_its_figures_where_make_results_publishes_them(path):
    """``make results`` publishes ``reports/<profile>/figures/<notebook>-*.png`` only: a figure saved by hand under
    another name stays behind while the results README points at last run's copy."""
    nb = nbformat.read(path, as_version=4)
    by_hand = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and ".savefig(" in cell.source]
    assert not by_hand, f"{path.name} cells {by_hand}: save figures with histolab_utils.report.save_plot"


def imported_but_unused(source: str) -> list[str]:
    """Names that ``source`` (a notebook's code cells, IPython magics dropped) imports and never reads."""
    tree = ast.parse(source)
    imported = {(alias.asname or alias.name).split(".")[0]
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return sorted(imported - used)


def test_the_unused_import_check_finds_an_unused_name_and_passes_a_used_one():
    assert imported_but_unused("import numpy as np\nfrom os import path, sep\nprint(np.pi, sep)") == ["path"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_imports_only_what_it_uses(path):
    """An import nothing reads tells a student to look for a step the notebook no longer takes."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    assert not imported_but_unused(code), f"{path.name} imports names it never uses: {imported_but_unused(code)}"


CITATION = re.compile(r"\b([A-Z][\w'\-]+)(?: et al\.| (?:&|and) [A-Z][\w'\-]+)?,? \(?((?:19|20)\d\d)\b")


def cited_authors(text: str) -> set[tuple[str, str]]:
    """(first author's surname, year) of every "Surname (et al.|& Other), year" citation in ``text``."""
    return {(name, year) for name, year in CITATION.findall(text) if name not in NOT_SURNAMES}


NOT_SURNAMES = {"CVPR", "ICLR", "ICML", "ISBI", "MICCAI", "NeurIPS", "WACV", "Security", "Sec", "Table", "In"}


def test_the_citation_pattern_finds_what_a_reader_would_call_a_citation():
    text = "as Ho et al. (2020) and Nichol & Dhariwal, 2021 showed, Otsu, 1979; in *CVPR 2022* Table 2019"
    assert cited_authors(text) == {("Ho", "2020"), ("Nichol", "2021"), ("Otsu", "1979")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_work_a_notebook_cites_is_in_its_references(path):
    nb = nbformat.read(path, as_version=4)
    references = nb.cells[-1].source
    prose = "\n".join(c.source for c in nb.cells[:-1] if c.cell_type == "markdown")
    missing = {(name, year) for name, year in cited_authors(prose)
               if not re.search(rf"^- .*{re.escape(name)}.*\({year}\)", references, re.MULTILINE)}
    assert not missing, f"{path.name} cites {sorted(missing)} without a reference entry"


def test_nasdm_is_cited_by_its_authors():
    """NASDM is Shrivastava & Fletcher (MICCAI 2023); "Oh" belongs to CoSyn (Min, Oh & Jeong 2024)."""
    sources = [*NOTEBOOKS, ROOT / "README.md", *PACKAGE.rglob("*.py")]
    wrong = [p.name for p in sources if re.search(r"\bOh (et al|& Jeong)\b.{0,20}2023", p.read_text(encoding="utf-8"))]
    assert not wrong


PACKAGE = ROOT / "histolab_utils"
STAGES = ("data", "engine", "tiling", "stain", "evaluation", "diffusion", "models", "latent",  # lower to higher
          "segmentation")


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


def test_the_ci_scripts_import_only_names_the_package_has():
    """.ci/ and the Makefile run Python one-liners; a name moved in the package must not leave them importing it
    from where it was (a failed one-liner in a command substitution is easy to miss in a log)."""
    import importlib

    found = []
    for path in [*sorted((ROOT / ".ci").iterdir()), ROOT / "Makefile"]:
        for module, names in re.findall(r"from (histolab_utils[\w.]*) import ([\w, ]+)", path.read_text()):
            found += [(path.name, module, name.strip()) for name in names.split(",")]
    assert found, "the CI scripts name the package somewhere"
    missing = [f"{where}: {module}.{name}" for where, module, name in found
               if not hasattr(importlib.import_module(module), name)]
    assert missing == []


# Phrases a review found false in the published words (issue "Evidence that deserves trust", part 4), each with what
# the records say instead; they must not come back.
STALE_PHRASES = {
    "chose **k = 2**": "the k-means vote was a 2-2 tie broken to the smaller k",
    "their cards say so": "the cards' Limits sections name the split",
    "the data have none yet": "a validation region exists",
    "done (smoke": "the notebook table says which results exist per profile and split",
    "HoVerNet FAST in full": "09's segmenter is BasicUNet with HoVer-Net heads in every profile",
    "nucleus area per source": "the slide's 1.03x is a linear size",
    "the four banks took": "the banks were read from a cache; their generation time was not recorded",
    "few small images": "each card says what its model has seen",
    "2 it/s measured alone": "the 03 run's cost alone was 1.5 it/s",
}


def test_no_stale_phrase_is_published_again():
    published = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "data" / "pretrained").glob("*/README.md"))]
    for path in published:
        text = path.read_text()
        for phrase, truth in STALE_PHRASES.items():
            assert phrase not in text, f"{path.relative_to(ROOT)} says {phrase!r} again: {truth}"
