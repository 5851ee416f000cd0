"""Datagen: meta.json, equal shards, no-op re-runs, resume, drops, corrupt shards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modalities import TextModality
from problems.algorithmic import AlgorithmicReverse
from t2t import Problem, data, datagen
from t2t.errors import UserError
from t2t.files import sha256_file

from .conftest import run_command

SMALL = dict(train_size=1000, eval_size=50, max_length=12)
SETTINGS = dict(samples_per_shard=300, chunk_size=128, progress=False)


def shard_hashes(problem_dir: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(problem_dir.glob("*.tar*"))}


def test_meta_json_describes_equal_shards(tmp_path):
    problem = AlgorithmicReverse(**SMALL)
    problem_dir = datagen.generate(problem, tmp_path, **SETTINGS)
    meta = json.loads((problem_dir / "meta.json").read_text())
    assert meta["problem"] == "algorithmic_reverse"
    assert meta["options"]["train_size"] == 1000
    assert meta["modalities"]["inputs"]["key"] == problem.inputs.key
    train = meta["splits"]["train"]
    assert train["count"] == 1000
    assert train["dropped"] == {"empty": 0, "too_long": 0, "bad": 0}
    counts = [s["count"] for s in train["shards"]]
    assert sum(counts) == 1000 and len(counts) == 3 and max(counts) - min(counts) <= 1
    for shard in train["shards"]:
        assert sha256_file(problem_dir / shard["file"]) == shard["sha256"]
    assert meta["splits"]["validation"]["count"] == meta["splits"]["test"]["count"] == 50
    assert not (problem_dir / ".work").exists()


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_order_and_lengths(tmp_path, split):
    problem = AlgorithmicReverse(**SMALL)
    problem_dir = datagen.generate(problem, tmp_path, **SETTINGS)
    raws = list(problem.generate_samples(split))
    read = list(data.read_split(AlgorithmicReverse(**SMALL), problem_dir, split))
    order = [int(s["key"]) for s in read]  # keys are indices in generate_samples
    assert sorted(order) == list(range(len(raws)))
    # Training samples are shuffled (sources are often sorted); evaluation keeps file order.
    assert (order == sorted(order)) == (split != "train")
    for sample in read:
        raw = raws[int(sample["key"])]
        assert problem.inputs.decode(sample["inputs"]) == raw["inputs"]
        assert problem.targets.decode(sample["targets"]) == raw["targets"]
    lengths = np.load(problem_dir / data.read_meta(problem_dir)["splits"][split]["lengths"])
    assert lengths.tolist() == [[len(s["inputs"]), len(s["targets"])] for s in read]


def test_second_run_does_nothing_and_a_changed_option_regenerates(tmp_path):
    problem_dir = datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, **SETTINGS)
    stamps = {p.name: p.stat().st_mtime_ns for p in problem_dir.iterdir()}
    datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, **SETTINGS)
    assert {p.name: p.stat().st_mtime_ns for p in problem_dir.iterdir()} == stamps
    datagen.generate(AlgorithmicReverse(**{**SMALL, "train_size": 700}), tmp_path, **SETTINGS)
    meta = data.read_meta(problem_dir)
    assert meta["splits"]["train"]["count"] == 700
    assert sorted(p.name for p in problem_dir.glob("train-0*")) == [
        "train-000000.tar.gz", "train-000001.tar.gz"]


def test_parallel_workers_write_the_same_shards(tmp_path):
    one = datagen.generate(AlgorithmicReverse(**SMALL), tmp_path / "one", workers=1, **SETTINGS)
    two = datagen.generate(AlgorithmicReverse(**SMALL), tmp_path / "two", workers=2, **SETTINGS)
    assert shard_hashes(one) == shard_hashes(two)


def test_interrupted_run_resumes_without_redoing_finished_chunks(tmp_path, monkeypatch):
    clean = shard_hashes(datagen.generate(AlgorithmicReverse(**SMALL), tmp_path / "clean",
                                       **SETTINGS))
    real_encode, calls = datagen._encode_chunk, []

    def encode_then_die(*args):
        calls.append(args[1])
        if len(calls) == 5:  # train has 8 chunks of 128: die in the middle
            raise KeyboardInterrupt
        return real_encode(*args)

    monkeypatch.setattr(datagen, "_encode_chunk", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        datagen.generate(AlgorithmicReverse(**SMALL), tmp_path / "resumed", **SETTINGS)
    problem_dir = tmp_path / "resumed" / "algorithmic_reverse"
    assert not (problem_dir / "meta.json").exists()
    calls.clear()
    monkeypatch.setattr(datagen, "_encode_chunk", lambda *a: calls.append(a[1]) or real_encode(*a))
    datagen.generate(AlgorithmicReverse(**SMALL), tmp_path / "resumed", **SETTINGS)
    assert calls[0] == 4 * 128  # the first four chunks were not encoded again
    assert shard_hashes(problem_dir) == clean


KILLED = ["problem=algorithmic_reverse", "problem.train_size=20000", "problem.eval_size=1000",
          "datagen.samples_per_shard=5000", "datagen.chunk_size=1000", "datagen.workers=2",
          "datagen.progress=false"]
KILLED_CHUNKS = 20 + 1 + 1  # train, validation, test


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    """The shard hashes of a run left alone."""
    data_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_command("t2t-datagen", *KILLED, f"data_dir={data_dir}", cwd=data_dir)
    assert result.returncode == 0, result.stderr
    return shard_hashes(data_dir / "algorithmic_reverse")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2])
def test_datagen_killed_at_random_points_resumes_to_the_same_shards(tmp_path, seed,
                                                                   uninterrupted):
    """Killed three times at random points of its progress, counted in encoded chunks (so a
    slow or busy machine kills it mid-run as surely as a fast one), then run again: the
    shards are those of a run left alone."""
    rng = random.Random(seed)
    command = [str(Path(sys.executable).parent / "t2t-datagen"), *KILLED,
               f"data_dir={tmp_path}"]
    work = tmp_path / "algorithmic_reverse" / ".work"
    kills = 0
    for progress in sorted(rng.sample(range(1, KILLED_CHUNKS), 3)):
        # Its own process group, so the kill takes the encoding workers too, as a cluster's
        # pre-emption (or the OOM killer of a job) would.
        process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and len(list(work.glob("*.pkl"))) < progress:
            time.sleep(0.01)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1  # it cannot finish before encoding its last chunk
    result = run_command("t2t-datagen", *KILLED, f"data_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    problem_dir = tmp_path / "algorithmic_reverse"
    assert shard_hashes(problem_dir) == uninterrupted
    assert not list(problem_dir.glob("*.tmp")) and not (problem_dir / ".work").exists()
    meta = json.loads((problem_dir / "meta.json").read_text())
    assert {s["file"]: s["sha256"] for split in meta["splits"].values()
            for s in split["shards"]} == uninterrupted


def test_two_datagens_at_once_on_one_data_dir_both_succeed(tmp_path, uninterrupted):
    """A sweep launched in parallel starts several runs on one data_dir: the second waits
    for the first's shards instead of racing it for the scratch files."""
    clean = uninterrupted
    command = [str(Path(sys.executable).parent / "t2t-datagen"), *KILLED,
               f"data_dir={tmp_path}"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert shard_hashes(tmp_path / "algorithmic_reverse") == clean


class Uneven(Problem):
    """Samples with an empty one and an over-long one."""

    inputs = targets = TextModality(vocab="byte")

    def generate_samples(self, split):
        yield {"inputs": "ok", "targets": "fine"}
        yield {"inputs": "", "targets": "empty input"}
        yield {"inputs": "x" * 50, "targets": "too long"}
        yield {"inputs": "also ok", "targets": "yes"}


def test_empty_and_over_long_examples_are_dropped_and_counted(tmp_path):
    problem_dir = datagen.generate(Uneven(), tmp_path, max_length=20, **SETTINGS)
    split = data.read_meta(problem_dir)["splits"]["train"]
    assert split["count"] == 2
    assert split["dropped"] == {"empty": 1, "too_long": 1, "bad": 0}


class NotDicts(Problem):
    inputs = targets = TextModality(vocab="byte")
    splits = ("train",)

    def generate_samples(self, split):
        yield ("inputs", "targets")


def test_malformed_samples_are_named(tmp_path):
    with pytest.raises(UserError, match="sample 0 of split train .* yield dicts"):
        datagen.generate(NotDicts(), tmp_path, **SETTINGS)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_shard_is_detected_and_named(tmp_path, damage):
    problem_dir = datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, **SETTINGS)
    shard = problem_dir / "validation-000000.tar.gz"
    content = bytearray(shard.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[: len(content) // 2]
    shard.write_bytes(bytes(content))
    with pytest.raises(data.CorruptShardError, match="validation-000000.tar.gz is corrupt"):
        list(data.read_split(AlgorithmicReverse(**SMALL), problem_dir, "validation"))


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(UserError, match="no shards in .*run `t2t-datagen problem=nothing_here"):
        data.read_meta(tmp_path / "nothing_here")
