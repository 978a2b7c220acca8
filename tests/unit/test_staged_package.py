"""The package tarballs committed beside each Dockerfile match the source.

The seed builds every image with its own folder as the context, so bird/,
plugin/ and felix/ each carry calico-src.tar.gz, written by
docker/stage-package.sh.  These tests fail, naming that command, when a
committed tarball's files differ from the source tree (names and bytes are
compared, not the tarball's own bytes), and check that staging twice gives
identical bytes.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "docker" / "stage-package.sh"
PREFIX = "calico-src/"
IMAGE_DIRS = ("bird", "plugin", "felix")
FIX = "run docker/stage-package.sh and commit bird/ plugin/ felix/ calico-src.tar.gz"


def _skip_path(path: str) -> bool:
    parts = path.split("/")
    return ("__pycache__" in parts or path.endswith((".pyc", ".pyo"))
            or any(part.endswith(".egg-info") for part in parts))


def source_files() -> dict[str, bytes]:
    """What stage-package.sh puts in the tarball: git-tracked files if in git."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", "setup.py", "calico"],
                             check=True, capture_output=True).stdout
        names = [n.decode() for n in out.split(b"\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = ["setup.py"] + [str(p.relative_to(REPO)) for p in (REPO / "calico").rglob("*") if p.is_file()]
    files = {}
    for name in names:
        path = REPO / name
        if _skip_path(name) or not path.is_file():
            continue
        files[name] = path.read_bytes()
    return files


def tarball_files(path: Path) -> dict[str, bytes]:
    files = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name
            assert name.startswith(PREFIX), f"{path}: member {name} outside {PREFIX}"
            files[name[len(PREFIX):]] = tar.extractfile(member).read()
    return files


@pytest.mark.parametrize("image_dir", IMAGE_DIRS)
def test_committed_tarball_matches_source(image_dir):
    tarball = REPO / image_dir / "calico-src.tar.gz"
    assert tarball.is_file(), f"{tarball.relative_to(REPO)} is missing: {FIX}"
    staged = tarball_files(tarball)
    source = source_files()
    missing = sorted(set(source) - set(staged))
    extra = sorted(set(staged) - set(source))
    changed = sorted(n for n in set(source) & set(staged) if source[n] != staged[n])
    problems = []
    for label, names in (("missing", missing), ("no longer in the source", extra), ("changed", changed)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{label}: {shown}")
    assert not problems, f"{tarball.relative_to(REPO)} is stale ({'; '.join(problems)}): {FIX}"


def test_staging_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        subprocess.run(["bash", str(STAGE), str(out)], check=True, capture_output=True,
                       env={**os.environ, "LC_ALL": "C"})
    one = (first / "calico-src.tar.gz").read_bytes()
    two = (second / "calico-src.tar.gz").read_bytes()
    assert one == two
    assert tarball_files(first / "calico-src.tar.gz") == source_files()
