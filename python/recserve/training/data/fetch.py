"""Fetch MovieLens-100k onto this machine, in the RecBole atomic layout.

Why through pip: MovieLens' licence forbids redistributing the data, so the project never
ships or commits it, and the machines it is developed and tested on reach only the Python
package index, not grouplens.org. The ``recbole`` wheel on the index carries a copy of
MovieLens-100k as atomic files (``recbole/dataset_example/ml-100k/``), so we download that
one wheel with pip (no dependencies, nothing installed) and extract only the three files we
need. Each user fetches the data themselves, under the MovieLens terms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .movielens import ATOMIC_FILES, DATASET_NAME

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_DIRECTORY = f"recbole/dataset_example/{DATASET_NAME}"
EXPECTED_LINE_COUNTS = {
    f"{DATASET_NAME}.inter": 100_001,
    f"{DATASET_NAME}.user": 944,
    f"{DATASET_NAME}.item": 1_683,
}
"""Lines per file, header included, of the MovieLens-100k copy in the recbole wheel."""


def fetch_movielens_100k(
    data_dir: str | Path, *, progress: Callable[[str], None] | None = print
) -> Path:
    """Make sure ``data_dir/ml-100k/`` holds MovieLens-100k's atomic files; return that folder.

    If the three files are already there, nothing is downloaded. Otherwise pip downloads the
    ``recbole`` wheel into a temporary folder and the files are extracted from it. Each file
    is written under a temporary name and renamed when complete, so an interrupted fetch
    never leaves a half-written file behind.

    Args:
        data_dir: where to put the ``ml-100k/`` folder; created if missing.
        progress: called with one line of text per step; ``None`` for silence.

    Returns:
        The ``ml-100k`` folder, ready for ``load_movielens_100k``.

    Raises:
        RuntimeError: pip failed, or the wheel lacks the files or holds a different copy.
    """
    report = progress if progress is not None else _ignore
    target = Path(data_dir) / DATASET_NAME
    if all((target / name).is_file() for name in ATOMIC_FILES):
        report(f"MovieLens-100k is already in {target}")
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recserve-fetch-") as download_dir:
        report(f"Downloading {RECBOLE_REQUIREMENT} (it carries MovieLens-100k) with pip ...")
        wheel = _download_recbole_wheel(Path(download_dir))
        report(f"Extracting {', '.join(ATOMIC_FILES)} into {target}")
        _extract_atomic_files(wheel, target)
    report(f"MovieLens-100k is ready in {target}")
    return target


def _ignore(message: str) -> None:
    del message


def _download_recbole_wheel(download_dir: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        RECBOLE_REQUIREMENT,
        "-d",
        str(download_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
            f"{result.stderr.strip()}\n"
            "Check that pip can reach the package index (proxy, PIP_INDEX_URL), or put the "
            f"atomic files {', '.join(ATOMIC_FILES)} in the data folder yourself."
        )
    wheels = sorted(download_dir.glob("recbole-*.whl"))
    if not wheels:
        found = sorted(path.name for path in download_dir.iterdir())
        raise RuntimeError(
            f"pip downloaded {found} but no recbole wheel; the index may only offer a source "
            f"archive of {RECBOLE_REQUIREMENT}. Place the atomic files by hand instead."
        )
    return wheels[0]


def _extract_atomic_files(wheel: Path, target: Path) -> None:
    """Read and check all three files first, then write them, so a bad wheel writes none."""
    contents = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in ATOMIC_FILES:
            member = f"{WHEEL_DIRECTORY}/{name}"
            try:
                contents[name] = archive.read(member)
            except KeyError:
                raise RuntimeError(
                    f"{wheel.name} has no {member}; {RECBOLE_REQUIREMENT} is expected to "
                    "carry it. Was the wheel replaced?"
                ) from None
            _check_line_count(name, contents[name])
    for name, data in contents.items():
        _write_atomically(target / name, data)


def _check_line_count(name: str, data: bytes) -> None:
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    expected = EXPECTED_LINE_COUNTS[name]
    if lines != expected:
        raise RuntimeError(
            f"{name} from {RECBOLE_REQUIREMENT} has {lines} lines, expected {expected} "
            "(header included); the download is truncated or not MovieLens-100k. "
            "Run the fetch again; no file was written."
        )


def _write_atomically(path: Path, data: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
