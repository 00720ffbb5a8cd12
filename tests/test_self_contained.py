"""The repository needs nothing beside it: a clone in an empty directory runs its tests.

A clone elsewhere has no sibling folders (no reference folder beside it), so a test or doc that reaches
outside the repository passes here and fails for every new user. This clones the committed
tree into a temporary directory that holds nothing else and runs the pure tests and one that
reads the vendored OpenAPI document there, importing the clone's code, not this checkout's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile("|".join((re.escape("../" + "shared"), re.escape("/" + "work/"), r"parents\[\d+\]\.parent")))
"""Spellings of a path outside the repository: the sibling reference folder, this machine's
work folder, or climbing above the repository root from a file inside it."""


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_no_tracked_file_names_a_path_outside_the_repository():
    offenders = []
    for name in tracked_files():
        if name.startswith("tests/data/"):
            continue
        try:
            text = (REPO / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        offenders += [
            f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)
        ]
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_a_clone_with_no_sibling_folders_passes_the_pure_tests(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    clone = alone / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    assert sorted(p.name for p in alone.iterdir()) == ["repo"]
    env = {**os.environ, "PYTHONPATH": str(clone)}
    where = subprocess.run(
        [sys.executable, "-c", "import garage_p2p; print(garage_p2p.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(clone)), f"the clone's tests would import {where}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            "tests/core",
            "tests/test_mesh_inprocess.py::test_errors_are_openai_error_objects",
            "tests/test_self_contained.py::test_no_tracked_file_names_a_path_outside_the_repository",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", run.stdout), run.stdout[-2000:]
    assert " failed" not in run.stdout and " error" not in run.stdout
