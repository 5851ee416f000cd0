"""Shared fixtures: where the repository and the local dataset copies are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# pytest runs two test processes (`-n 2` in pyproject.toml) on CI's two cores: a test's torch,
# and the commands it starts, use one thread each; two OpenMP pools per process would spin
# against each other and slow every test down.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def dataset_dir(name: str) -> Path:
    """A local dataset copy under ../shared/datasets, or skip the test saying why."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"local copy of {name} not found at {path} (see ../shared/datasets/README.md)")
    return path


@pytest.fixture
def multi30k_dir() -> Path:
    return dataset_dir("multi30k")


def run_command(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a console script (t2t-datagen, ...) as a user would, capturing its output."""
    script = Path(sys.executable).parent / args[0]
    command = [str(script) if script.exists() else args[0], *args[1:]]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
