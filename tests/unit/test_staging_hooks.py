"""The git hooks keep every commit's package tarballs in step with its source.

A scratch repository holding only what the hooks need (the hooks, the
staging script, the merge attribute, a two-file package) is committed to,
merged and rebased exactly as a developer would; after each, the tarballs
in the commit are opened and compared with the source in the same commit.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARBALLS = ("bird/calico-src.tar.gz", "plugin/calico-src.tar.gz", "felix/calico-src.tar.gz")

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def committed(repo: Path, rev: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], check=True,
                          capture_output=True).stdout


def assert_in_step(repo: Path, rev: str = "HEAD") -> None:
    names = git(repo, "ls-tree", "-r", "--name-only", rev, "--", "setup.py", "calico").split()
    source = {name: committed(repo, rev, name) for name in names}
    for tarball in TARBALLS:
        with tarfile.open(fileobj=io.BytesIO(committed(repo, rev, tarball)), mode="r:gz") as tar:
            packed = {m.name.removeprefix("calico-src/"): tar.extractfile(m).read()
                      for m in tar.getmembers() if m.isfile()}
        assert packed == source, f"{tarball} at {rev} differs from its source"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    (root / "docker").mkdir(parents=True)
    shutil.copy(REPO / "docker" / "stage-package.sh", root / "docker")
    shutil.copytree(REPO / ".githooks", root / ".githooks", symlinks=True)
    shutil.copy(REPO / ".gitattributes", root)
    (root / "calico").mkdir()
    (root / "calico" / "__init__.py").write_text("")
    (root / "setup.py").write_text("# setup\n")
    git(root, "init", "-q", "-b", "main")
    # What `make hooks` configures (read from the Makefile would couple the
    # test to its quoting; the two settings are the contract).
    git(root, "config", "core.hooksPath", ".githooks")
    git(root, "config", "merge.calico-stage.driver", "true")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    return root


def diverge(repo: Path) -> None:
    """Branch "side" and "main" each commit a source change of their own."""
    for branch, name in (("side", "side.py"), ("main", "main.py")):
        git(repo, "checkout", "-q", *(["-b"] if branch == "side" else []), branch)
        (repo / "calico" / name).write_text("X = 1\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", branch)


def test_a_commit_carries_tarballs_made_from_what_it_commits(repo: Path):
    assert_in_step(repo)
    (repo / "calico" / "felix.py").write_text("X = 1\n")
    (repo / "calico" / "scratch.py").write_text("not staged\n")
    git(repo, "add", "calico/felix.py")
    git(repo, "commit", "-q", "-m", "felix")
    assert_in_step(repo)
    assert "calico/scratch.py" not in git(repo, "ls-tree", "-r", "--name-only", "HEAD")


def test_a_merge_commit_is_restaged_from_the_merged_source(repo: Path):
    diverge(repo)
    git(repo, "merge", "-q", "--no-edit", "side")
    assert git(repo, "rev-list", "--count", "--merges", "HEAD").strip() == "1"
    assert git(repo, "status", "--porcelain") == ""
    assert_in_step(repo)


def test_a_rebased_branch_tip_is_restaged(repo: Path):
    diverge(repo)
    git(repo, "checkout", "-q", "side")
    git(repo, "rebase", "-q", "main")
    assert git(repo, "status", "--porcelain") == ""
    assert_in_step(repo)
