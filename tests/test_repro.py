"""The reproducibility record in every run folder: packages.txt, and code.diff when the code ran
from a git tree with changes (bench.fingerprint.write_record)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bench.config import RunConfig
from bench.fingerprint import UNTRACKED_MAX_BYTES, code_diff, installed_packages, write_record
from bench.harness import train

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip


@pytest.fixture
def repo(tmp_path):
    """A tiny git repository with one commit: a.py, data.bin, and a .gitignore'd folder."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "a.py").write_text("x = 1\ny = 2\n")
    (r / "data.bin").write_bytes(bytes(range(256)))
    (r / ".gitignore").write_text("ignored/\n")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "one")
    return r


def test_run_folder_lists_every_installed_package(tmp_run):
    train(RunConfig(agent="random", game="gym:CartPole-v1", seed=1, steps=64), {"num_envs": 2}, out=tmp_run)
    lines = (tmp_run / "packages.txt").read_text().splitlines()
    assert f"torch=={torch.__version__}" in lines
    assert lines == sorted(lines, key=lambda x: x.split("==")[0].lower().replace("_", "-"))
    assert all(line.count("==") == 1 for line in lines)


def test_installed_packages_names_each_distribution_once():
    names = [line.split("==")[0].lower() for line in installed_packages().splitlines()]
    assert "numpy" in names and len(names) == len(set(names))


@needs_git
def test_clean_tree_has_no_code_diff(repo, tmp_path):
    index = (repo / ".git" / "index").read_bytes()
    assert code_diff(repo) is None
    out = tmp_path / "run"
    out.mkdir()
    write_record(out, repo)
    assert (out / "packages.txt").exists() and not (out / "code.diff").exists()
    assert (repo / ".git" / "index").read_bytes() == index


@needs_git
def test_dirty_tree_code_diff_rebuilds_the_working_tree(repo, tmp_path):
    (repo / "a.py").write_text("x = 1\ny = 3\n")  # a tracked change
    (repo / "data.bin").write_bytes(bytes(range(255, -1, -1)))  # a binary one
    (repo / "new.py").write_text("z = 4\n")  # untracked
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("w = 5")  # untracked, no final newline
    (repo / "big.py").write_text("#" * (UNTRACKED_MAX_BYTES + 1))  # untracked source, too big to copy
    (repo / "results.csv").write_text("1,2\n")  # untracked, not source: named, not copied
    (repo / "ignored").mkdir()
    (repo / "ignored" / "out.txt").write_text("ignored\n")
    index = (repo / ".git" / "index").read_bytes()
    out = tmp_path / "run"
    out.mkdir()
    write_record(out, repo)
    assert (repo / ".git" / "index").read_bytes() == index  # the index is never written
    text = (out / "code.diff").read_text(errors="replace")
    assert "-y = 2\n+y = 3" in text and "+z = 4" in text and "+++ b/pkg/mod.py" in text
    header = text.split("diff --git")[0]
    assert "big.py" in header and "results.csv" in header and "####" not in text  # named, not copied
    assert "ignored" not in text
    # The patch rebuilds the tree on a clean checkout of the commit (the files left out aside).
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "apply", str(out / "code.diff"))
    for name in ("a.py", "data.bin", "new.py", "pkg/mod.py"):
        assert (clone / name).read_bytes() == (repo / name).read_bytes(), name
    assert not (clone / "big.py").exists() and not (clone / "results.csv").exists()


def test_not_a_git_tree_has_no_code_diff(tmp_path):
    assert code_diff(tmp_path) is None
