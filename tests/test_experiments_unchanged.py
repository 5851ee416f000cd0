"""Moving settings between config groups must not change what an experiment trains.

Issue 30 moved the CTC weight, the image stem and the data augmentations out of the
problems' options into model and training config. For every experiment config this test
trains 3 steps (small data, the experiment's own model) and compares with what the same
command measured before the move, recorded in `experiments_before.json` (re-recorded since
for the experiments intended changes touch: Morse's features normalised per utterance,
the CTC loss no longer reading the problem token's position, the quickstart's shorter
members and wider body, and augmentation drawn in another order, as batches are made, and by
hand for images):
  - the same shards: the sha256 of every shard, and of every vocabulary file;
  - the same model: every parameter's shape and values after the 3 steps;
  - the same training: the loss of each of the 3 steps.

Record (only after a change that is meant to change these; naming experiments re-records
only those):
    python -m tests.test_experiments_unchanged --record [EXPERIMENT ...]
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import dataset_dir, run_command

REFERENCE = Path(__file__).with_name("experiments_before.json")
STEPS = 3
EXPERIMENTS = {  # experiment -> the overrides that point it at local data
    "quickstart": [],
    "translate_deen_multi30k": ["problem.raw_dir={multi30k}"],
    "mnist_digit_strings": ["problem.raw_dir={mnist}"],
    "spoken_digits_fsdd": ["problem.raw_dir={fsdd}"],
    "ocr_rendered_text": [],
    "morse_code": [],
    "rna_design": ["problem.train_size=24", "problem.eval_size=4"],
    "anything_to_anything": ["problem.members.0.raw_dir={multi30k}",
                             "problem.members.1.raw_dir={mnist}",
                             "problem.members.2.raw_dir={fsdd}"],
}


def measure(experiment: str, workdir: Path) -> dict:
    """Train `experiment` for STEPS steps on its first samples; what came out of it."""
    local = {name: dataset_dir(name) for name in ("multi30k", "mnist", "fsdd")}
    overrides = [o.format(**local) for o in EXPERIMENTS[experiment]]
    result = run_command(
        "t2t-train", f"experiment={experiment}", *overrides, "datagen.max_samples=48",
        f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        f"data_dir={workdir / 'data'}", f"run_dir={workdir / 'run'}", "eval.decode_batches=0",
        cwd=workdir, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]

    shards = {}
    for meta_path in sorted((workdir / "data").glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        files = [s["file"] for split in meta["splits"].values() for s in split["shards"]]
        files += [m["vocab"] for m in meta["modalities"].values() if m.get("vocab")]
        shards[meta_path.parent.name] = {
            f: hashlib.sha256((meta_path.parent / f).read_bytes()).hexdigest() for f in files}

    import torch

    state = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    parameters = [[list(t.shape), float(t.double().sum()), float(t.double().abs().sum())]
                  for t in state.values() if t.is_floating_point()]

    losses = {}
    for metrics in (workdir / "run" / "csv").rglob("metrics.csv"):
        with open(metrics, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return {"shards": shards, "parameters": parameters,
            "losses": [losses[step] for step in sorted(losses)]}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_trains_the_same_shards_model_and_losses_as_before(experiment, tmp_path):
    before = json.loads(REFERENCE.read_text())[experiment]
    now = measure(experiment, tmp_path)
    assert now["shards"] == before["shards"]
    assert len(now["losses"]) == STEPS == len(before["losses"])
    assert all(map(close, now["losses"], before["losses"])), (now["losses"], before["losses"])
    assert [p[0] for p in now["parameters"]] == [p[0] for p in before["parameters"]]
    for (_, *values), (_, *expected) in zip(now["parameters"], before["parameters"],
                                             strict=True):
        assert all(map(close, values, expected)), (values, expected)


if __name__ == "__main__" and sys.argv[1:2] == ["--record"]:
    import tempfile

    recorded = json.loads(REFERENCE.read_text()) if sys.argv[2:] else {}
    for name in sys.argv[2:] or EXPERIMENTS:
        with tempfile.TemporaryDirectory() as folder:
            recorded[name] = measure(name, Path(folder))
            print(name, recorded[name]["losses"], flush=True)
    REFERENCE.write_text(json.dumps(recorded, indent=1) + "\n")
