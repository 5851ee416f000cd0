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


# One problem of each family (learned-vocabulary text, image, audio, RNA), small enough to
# train in seconds; a mixture of them is the fifth family.
FAMILY_MEMBERS = {
    "text_pairs": {"vocab_size": 320, "holdout_size": 20},  # byte fallback: 256 + chars
    "ocr_rendered_text": {"train_size": 160, "eval_size": 16, "max_chars": 3},
    "morse_code": {"train_size": 160, "eval_size": 16, "max_chars": 2},
    "rna_design": {"train_size": 160, "eval_size": 16, "max_length": 24},
}
GERMAN_WORDS = "ein zwei drei vier fuenf sechs sieben acht neun zehn haus baum katze hund".split()


def family_mixture_checkpoint(folder: Path, *overrides: str) -> Path:
    """Train model=tiny on a mixture of FAMILY_MEMBERS (text_pairs: word lists and their
    reversal) with the given t2t-train overrides (the steps, say); its last.ckpt."""
    result = run_command(*family_mixture_command(folder, *overrides), cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run" / "checkpoints" / "last.ckpt"


def family_mixture_command(folder: Path, *overrides: str) -> list[str]:
    """The t2t-train command of `family_mixture_checkpoint`, its data_dir and run_dir in
    folder; writes the text_pairs file there (folder/pairs.tsv)."""
    import random

    rng = random.Random(0)
    tsv = folder / "pairs.tsv"
    tsv.write_text("".join(f"{' '.join(w)}\t{' '.join(reversed(w))}\n" for w in
                           (rng.choices(GERMAN_WORDS, k=rng.randint(1, 4)) for _ in range(300))))
    specs = [",".join([f"name:{name}", *(f"{k}:{v}" for k, v in options.items()),
                       *([f"train:'{tsv}'"] if name == "text_pairs" else [])])
             for name, options in FAMILY_MEMBERS.items()]
    return ["t2t-train", "problem=mixture",
            f"problem.members=[{','.join('{' + s + '}' for s in specs)}]", "model=tiny",
            "trainer.enable_progress_bar=false", "data.num_workers=0",
            "trainer.val_check_interval=1000", "eval.decode_batches=1", "eval.examples=0",
            *overrides, f"data_dir={folder / 'data'}", f"run_dir={folder / 'run'}"]
