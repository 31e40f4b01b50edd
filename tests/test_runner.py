from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from histolab_utils import runner


def write_notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


SETUP = "from histolab_utils.config import setup_notebook\nctx = setup_notebook('{name}')"


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "00_ok.ipynb", SETUP.format(name="00_ok"),
                   "ctx.save_metrics({'answer': 42, 'profile_seen': ctx.profile}, headline=['answer'])")
    write_notebook(folder / "01_fails.ipynb", "x = 1", "raise RuntimeError('boom in cell two')")
    write_notebook(folder / "02_never.ipynb", "open('ran.txt', 'w').write('ran')")
    (folder / "README.ipynb").write_text("not numbered, not run")
    return folder


def test_numbered_notebooks_in_order(notebook_dir):
    assert [p.name for p in runner.numbered_notebooks(notebook_dir)] == ["00_ok.ipynb", "01_fails.ipynb", "02_never.ipynb"]
    assert [p.name for p in runner.numbered_notebooks(notebook_dir, ["01"])] == ["01_fails.ipynb"]
    with pytest.raises(ValueError, match="starts with"):
        runner.numbered_notebooks(notebook_dir, ["99"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.numbered_notebooks(notebook_dir / "missing")


def test_run_executes_in_order_and_stops_at_the_first_failure(notebook_dir, isolated_dirs, capsys):
    results = runner.run("smoke", notebook_dir, timeout=120)
    assert [(r.notebook, r.status) for r in results] == [("00_ok", "ok"), ("01_fails", "failed")]
    assert "boom in cell two" in results[1].error and "raise RuntimeError" in results[1].error
    assert not (notebook_dir / "ran.txt").exists(), "the run must stop at the failing notebook"

    out = isolated_dirs / "reports" / "smoke"
    metrics = json.loads((out / "metrics" / "00_ok.json").read_text())
    assert metrics["metrics"] == {"answer": 42, "profile_seen": "smoke"}
    executed = nbformat.read(out / "executed" / "00_ok.ipynb", as_version=4)
    assert "profile smoke" in executed.cells[0].outputs[0]["text"]
    assert (out / "executed" / "01_fails.ipynb").is_file()
    summary = (out / "summary.md").read_text()
    assert "| 00_ok | ok |" in summary and "answer=42" in summary and "| 01_fails | failed |" in summary
    printed = capsys.readouterr()
    assert "[1/3] 00_ok.ipynb ... ok" in printed.out and "01_fails.ipynb failed" in printed.err


def test_cli_exit_codes_and_profile_reaches_the_kernel(notebook_dir, isolated_dirs):
    # The environment says smoke (isolated_dirs); --profile full must win inside the kernel.
    assert runner.main(["--profile", "full", "--notebooks", str(notebook_dir), "--only", "00"]) == 0
    record = json.loads((isolated_dirs / "reports" / "full" / "metrics" / "00_ok.json").read_text())
    assert record["profile"] == "full" and record["metrics"]["profile_seen"] == "full"
    assert runner.main(["--notebooks", str(notebook_dir), "--only", "01"]) == 1
    assert runner.main(["--notebooks", str(notebook_dir / "nope")]) == 2


def test_the_kernel_runs_over_private_sockets_without_a_tcp_warning(notebook_dir, isolated_dirs, capfd):
    results = runner.run("smoke", notebook_dir, only=["00"], timeout=120)
    assert [r.status for r in results] == ["ok"]
    assert "without encryption" not in capfd.readouterr().err
