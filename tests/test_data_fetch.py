from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from histolab_utils.data import store as F
from histolab_utils.data.__main__ import main as data_cli
from histolab_utils.data.registry import SOURCES, DataSource, get_source


def test_registry_is_well_formed():
    names = [s.name for s in SOURCES]
    assert len(names) == len(set(names))
    for source in SOURCES:
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256), source.name
        package, version = source.requirement.split("==")
        assert source.wheel_filename.startswith(f"{package.replace('-', '_')}-{version}-"), source.name
        assert len(set(source.files)) == len(source.files), f"{source.name}: two members share a file name"
        assert source.licence and source.description
    with pytest.raises(KeyError, match="known sources"):
        get_source("nope")


def test_fetch_extracts_every_member_and_is_idempotent(tmp_path, tiny_source):
    source, downloader, calls, _ = tiny_source
    root = tmp_path / "data"
    F.fetch([source], root, downloader=downloader, log=lambda _: None)
    folder = root / "raw" / "tiny"
    assert (folder / "a.txt").read_bytes() == b"alpha"
    assert (folder / "b.bin").read_bytes() == bytes(range(256))
    assert F.is_extracted(source, root)
    assert (root / "cache" / source.wheel_filename).is_file()
    F.fetch([source], root, downloader=downloader, log=lambda _: None)
    assert calls == ["tinypkg==1.0"], "a complete source must not be downloaded again"
    assert F.verify([source], root) == []


def test_downloaded_wheel_with_wrong_hash_is_refused_and_nothing_is_written(tmp_path, tiny_source):
    source, downloader, _, wheel = tiny_source
    data = bytearray(wheel.read_bytes())
    data[-10] ^= 0xFF
    wheel.write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(F.DataIntegrityError, match=re.escape(source.wheel_filename)):
        F.fetch([source], root, downloader=downloader, log=lambda _: None)
    assert not (root / "cache" / source.wheel_filename).exists()
    assert not (root / "raw").exists() or list((root / "raw").iterdir()) == []
    assert [p.name for p in (root / "cache").iterdir()] == [], "no temporary download left behind"


def test_corrupt_cached_wheel_is_named_by_fetch_and_verify(tmp_path, tiny_source):
    source, downloader, _, _ = tiny_source
    root = tmp_path / "data"
    F.fetch([source], root, downloader=downloader, log=lambda _: None)
    cached = root / "cache" / source.wheel_filename
    data = bytearray(cached.read_bytes())
    data[0] ^= 0x01
    cached.write_bytes(bytes(data))
    problems = F.verify([source], root)
    assert len(problems) == 1 and problems[0].path == cached and "corrupt" in problems[0].reason
    (root / "raw" / "tiny" / F.COMPLETE_STAMP).unlink()  # force fetch to look at the cache
    with pytest.raises(F.DataIntegrityError, match=re.escape(str(cached))):
        F.fetch([source], root, downloader=downloader, log=lambda _: None)


def test_verify_names_missing_and_modified_extracted_files(tmp_path, tiny_source):
    source, downloader, _, _ = tiny_source
    root = tmp_path / "data"
    F.fetch([source], root, downloader=downloader, log=lambda _: None)
    (root / "raw" / "tiny" / "a.txt").write_bytes(b"alphA")
    (root / "raw" / "tiny" / "b.bin").unlink()
    reasons = {p.path.name: p.reason for p in F.verify([source], root)}
    assert "corrupt" in reasons["a.txt"] and "missing" in reasons["b.bin"]


def test_missing_member_leaves_no_partial_extraction(tmp_path, tiny_source):
    source, downloader, _, _ = tiny_source
    broken = DataSource(**{**source.__dict__, "members": source.members + ("tinypkg/data/absent.txt",)})
    root = tmp_path / "data"
    with pytest.raises(F.DataError, match="absent.txt"):
        F.fetch([broken], root, downloader=downloader, log=lambda _: None)
    assert list((root / "raw").iterdir()) == [], "staging folder must be removed"


def test_offline_without_cache_says_how_to_fetch(tmp_path, tiny_source):
    source, downloader, calls, _ = tiny_source
    with pytest.raises(F.DataNotFetchedError, match="python -m histolab_utils.data fetch"):
        F.fetch([source], tmp_path / "data", offline=True, downloader=downloader, log=lambda _: None)
    assert calls == []


def test_pip_failure_is_reported_with_the_requirement_and_a_hint(tmp_path, monkeypatch):
    """A real pip call that cannot reach any index (as offline) fails with a clear message."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty folder: nothing to find
    missing = DataSource(
        name="ghost", requirement="histolab-no-such-package==0.0.1",
        wheel_filename="histolab_no_such_package-0.0.1-py3-none-any.whl", sha256="0" * 64,
        members=("x",), licence="-", description="-",
    )
    with pytest.raises(F.DataNotFetchedError, match=r"(?s)histolab-no-such-package==0\.0\.1.*offline"):
        F.ensure_wheel(missing, tmp_path / "data")
    assert list((tmp_path / "data" / "cache").iterdir()) == []


def test_require_file_hint(tmp_path):
    with pytest.raises(F.DataNotFetchedError, match="make setup"):
        F.require_file("hgsc", "hgsc_nest.jpg", tmp_path)


def test_cli_verify_exits_nonzero_naming_a_changed_wheel(tmp_path, monkeypatch, capsys, real_data):
    """The done-when check: one byte changed in a cached wheel -> exit 1 naming that wheel."""
    source = get_source("slideflow_tile")
    root = tmp_path / "data"
    (root / "cache").mkdir(parents=True)
    shutil.copy(F.cache_dir() / source.wheel_filename, root / "cache")
    shutil.copytree(F.raw_dir(source), F.raw_dir(source, root))
    monkeypatch.setenv("HISTO_DATA_DIR", str(root))
    assert data_cli(["verify", "slideflow_tile"]) == 0
    wheel = root / "cache" / source.wheel_filename
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    capsys.readouterr()
    assert data_cli(["verify", "slideflow_tile"]) == 1
    assert source.wheel_filename in capsys.readouterr().err


def test_cli_verify_and_list_on_the_real_data(real_data, capsys):
    assert data_cli(["verify"]) == 0
    assert data_cli(["list"]) == 0
    out = capsys.readouterr().out
    for source in SOURCES:
        assert source.name in out


def test_cli_module_runs_as_a_program():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "histolab_utils.data", "fetch", "no_such_source"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "no_such_source" in result.stderr
