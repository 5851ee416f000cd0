"""Datagen: meta.json, equal shards, no-op re-runs, resume, drops, corrupt shards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from modalities import TextModality
from problems.algorithmic import AlgorithmicReverse
from problems.text_pairs import TextPairs
from t2t import Problem, data, datagen
from t2t.errors import UserError
from t2t.files import sha256_file
from t2t.progress import PeriodicReporter

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
        # A chunk is finished when its summary is written (after its tar).
        while process.poll() is None and len(list(work.glob("*-*.json"))) < progress:
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


def test_a_log_file_gets_plain_progress_lines(tmp_path, monkeypatch, capsys):
    """Not on a terminal, datagen prints a progress line every 30 s (here: at every chunk)."""
    monkeypatch.setattr(datagen, "PeriodicReporter",
                        lambda every_s, print_fn: PeriodicReporter(0, print_fn))
    datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, **{**SETTINGS, "progress": True})
    assert ("algorithmic_reverse/train: 256 samples read, 2 chunk(s) encoded here, elapsed "
            "0:00:0") in capsys.readouterr().err


# -- work chunks are plain data -----------------------------------------------------------------


def test_work_chunks_are_plain_data_a_tar_and_a_json(tmp_path, monkeypatch):
    """What a killed run leaves in .work/ (shared storage, once datagen spans machines) is
    read back without unpickling: each chunk is a gzipped tar in the shards' layout and a
    JSON summary; a damaged tar is named, not trusted."""
    real_encode, calls = datagen._encode_chunk, []

    def encode_then_die(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(*args)

    monkeypatch.setattr(datagen, "_encode_chunk", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        datagen.generate(Uneven(), tmp_path, max_length=20, **{**SETTINGS, "chunk_size": 1})
    work = tmp_path / Uneven.name / ".work"
    assert sorted(p.name for p in work.iterdir()) == [
        "fingerprint", "train-000000.json", "train-000000.tar.gz", "train-000001.json",
        "train-000001.tar.gz", "vocab.json"]
    summary = json.loads((work / "train-000000.json").read_text())
    assert summary["count"] == 1 and summary["dropped"] == {"empty": 0, "too_long": 0, "bad": 0}
    assert json.loads((work / "train-000001.json").read_text())["dropped"]["empty"] == 1
    with tarfile.open(work / "train-000000.tar.gz") as tar:
        assert tar.getnames() == ["000000000.inputs.ids", "000000000.targets.ids"]
    assert datagen._load_chunk(work / "train-000000") == [
        (0, Uneven().inputs.encode("ok"), Uneven().targets.encode("fine"), None)]
    (work / "train-000000.tar.gz").write_bytes(b"\x1f\x8b not what was written")
    with pytest.raises(UserError, match="train-000000.tar.gz: work chunk corrupt"):
        datagen._load_chunk(work / "train-000000")
    assert not [p for p in Path(datagen.__file__).parent.rglob("*.py")
                if "import pickle" in p.read_text()]


# -- datagen across machines: num_tasks slices, then a merge ------------------------------------

SLICED = dict(samples_per_shard=400, chunk_size=100, workers=1, progress=False)


@pytest.fixture
def pairs(tmp_path) -> dict:
    """text_pairs options: a generated TSV of 1,500 word pairs and a test TSV, two
    SentencePiece vocabularies (one a side) to learn."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(400)]

    def write(path: Path, count: int) -> str:
        lines = []
        for _ in range(count):
            source = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            lines.append(f"{source}\t{' '.join(reversed(source.split())).upper()}")
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return dict(train=write(tmp_path / "train.tsv", 1500), test=write(tmp_path / "test.tsv", 250),
                vocab_size=300, shared_vocab=False, holdout_size=150)


def outputs(problem_dir: Path) -> dict[str, str]:
    """sha256 of everything datagen leaves: shards, lengths, vocabularies, meta.json."""
    return {str(p.relative_to(problem_dir)): sha256_file(p)
            for p in sorted(problem_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_three_slices_and_a_merge_write_the_shards_of_one_machine(tmp_path, pairs, monkeypatch):
    """The vocab step, three slices (one killed half-way and resumed) and the merge, as a job
    array would run them on three machines: every output byte, vocabularies and meta.json
    included, is that of one machine's run; each chunk is encoded by exactly one slice."""
    one = outputs(datagen.generate(TextPairs(**pairs), tmp_path / "one", **SLICED))
    assert sum(name.startswith("vocab/") for name in one) == 2

    data_dir = tmp_path / "sliced"
    sliced = dict(SLICED, num_tasks=3)
    datagen.generate(TextPairs(**pairs), data_dir, task_id="vocab", **sliced)
    real_encode, encoded = datagen._encode_chunk, {}

    def encode(split, first_index, raws, stem):
        if task_id == 1 and len(encoded.get(1, [])) == 2 and not resumed:
            raise KeyboardInterrupt  # slice 1 is pre-empted after two chunks
        encoded.setdefault(task_id, []).append((split, first_index))
        return real_encode(split, first_index, raws, stem)

    monkeypatch.setattr(datagen, "_encode_chunk", encode)
    resumed = False
    for task_id in (2, 1, 0):  # any order: they run side by side
        try:  # a new problem each: a slice is a process of its own
            datagen.generate(TextPairs(**pairs), data_dir, task_id=task_id, **sliced)
        except KeyboardInterrupt:
            assert task_id == 1 and not (data_dir / "text_pairs/.work/slice-1-of-3/done.json"
                                         ).exists()
    resumed = True
    task_id = 1
    datagen.generate(TextPairs(**pairs), data_dir, task_id=1, **sliced)
    problem_dir = datagen.generate(TextPairs(**pairs), data_dir, task_id="merge", **sliced)
    assert outputs(problem_dir) == one
    assert not (problem_dir / ".work").exists()
    # 1500 pairs - 150 held out = 14 training chunks, 2 validation, 3 test: 19, numbered on
    # across splits, dealt round-robin; none encoded twice, the resumed slice's first two kept.
    chunks = [(split, 100 * i) for split, n in (("train", 14), ("validation", 2), ("test", 3))
              for i in range(n)]
    assert sorted(c for slice_chunks in encoded.values() for c in slice_chunks) == sorted(chunks)
    assert encoded[0] == chunks[0::3] and encoded[1] == chunks[1::3] and encoded[2] == chunks[2::3]
    # Run again, a slice finds the shards done.
    datagen.generate(TextPairs(**pairs), data_dir, task_id=0, **sliced)
    assert outputs(problem_dir) == one and not (problem_dir / ".work").exists()


@pytest.mark.parametrize("num_tasks, task_id, message", [
    (3, 3, "datagen.task_id=3 is out of range for datagen.num_tasks=3: slices are numbered 0 "
           "to 2"),
    (None, 1, "datagen.task_id=1 needs datagen.num_tasks=N"),
    (None, "merge", "datagen.task_id=merge needs datagen.num_tasks=N"),
    (3, None, "datagen.num_tasks=3 needs datagen.task_id: vocab"),
    (3, "last", "datagen.task_id='last': use vocab, a slice number from 0 to 2, or merge"),
    (0, 0, "datagen.num_tasks=0: give the number of slices"),
])
def test_bad_num_tasks_or_task_id_is_one_line(tmp_path, num_tasks, task_id, message):
    with pytest.raises(UserError) as error:
        datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, num_tasks=num_tasks,
                         task_id=task_id, **SETTINGS)
    assert message in str(error.value)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_merge_with_slices_missing_names_them_and_the_command(tmp_path):
    """One line naming the slices not done and the command that runs them; the same
    command, completed, then gives one machine's shards."""
    args = ["problem=algorithmic_reverse", "problem.train_size=300", "problem.eval_size=20",
            "datagen.chunk_size=50", "datagen.workers=1", f"data_dir={tmp_path / 'sliced'}",
            "datagen.num_tasks=3"]
    assert run_command("t2t-datagen", *args, "datagen.task_id=1").returncode == 0
    result = run_command("t2t-datagen", *args, "datagen.task_id=merge")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: algorithmic_reverse: slice(s) 0, 2 "
                                                   "of 3 are not done"), result.stderr
    assert f"run them first, with the same options: `t2t-datagen {' '.join(args)} " \
           f"datagen.task_id=0` and likewise the others" in lines[0]
    problem = AlgorithmicReverse(train_size=300, eval_size=20)
    for task_id in (0, 2, "merge"):
        datagen.generate(problem, tmp_path / "sliced", chunk_size=50, num_tasks=3,
                         task_id=task_id, progress=False)
    one = datagen.generate(AlgorithmicReverse(train_size=300, eval_size=20), tmp_path / "one",
                           chunk_size=50, progress=False)
    assert outputs(tmp_path / "sliced" / "algorithmic_reverse") == outputs(one)


@pytest.mark.parametrize("change", [{"max_length": 11}, {"chunk_size": 64}])
def test_merge_of_slices_made_with_other_options_names_them(tmp_path, change):
    sliced = dict(SETTINGS, num_tasks=3)
    for task_id in range(3):
        datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, task_id=task_id,
                         **{**sliced, **(change if task_id == 1 else {})})
    with pytest.raises(UserError) as error:
        datagen.generate(AlgorithmicReverse(**SMALL), tmp_path, task_id="merge", **sliced)
    assert "slice(s) 1 (" in str(error.value)
    assert "were made with other options or code than this merge" in str(error.value)
    assert "datagen.task_id=1`" in str(error.value)


def test_slices_need_the_vocab_step_and_its_vocabulary(tmp_path, pairs, monkeypatch):
    """A slice of a problem with a vocabulary to learn refuses to start without the vocab
    step. SentencePiece learns other pieces with another thread count (it uses the machine's
    cores), so a vocab step run again on another machine makes another vocabulary: the merge
    names the slices encoded with the old one."""
    sliced = dict(SLICED, num_tasks=3)
    with pytest.raises(UserError, match=r"no vocabulary for these options .* run `t2t-datagen "
                                        r"problem=text_pairs .*datagen.task_id=vocab` first"):
        datagen.generate(TextPairs(**pairs), tmp_path, task_id=0, **sliced)
    vocab_dir = tmp_path / "text_pairs" / "vocab"
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    datagen.generate(TextPairs(**pairs), tmp_path, task_id="vocab", **sliced)
    before = {p.name: p.read_bytes() for p in vocab_dir.iterdir()}
    for task_id in range(3):
        datagen.generate(TextPairs(**pairs), tmp_path, task_id=task_id, **sliced)
    (tmp_path / "text_pairs" / ".work" / "vocab.json").unlink()
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    datagen.generate(TextPairs(**pairs), tmp_path, task_id="vocab", **sliced)
    after = {p.name: p.read_bytes() for p in vocab_dir.iterdir()} .items() - before.items()
    assert after, "SentencePiece learned the same vocabulary with 1 and 3 threads"
    datagen.generate(TextPairs(**pairs), tmp_path, task_id=2, **sliced)
    with pytest.raises(UserError, match=r"slice\(s\) 0, 1 encoded with another vocabulary"):
        datagen.generate(TextPairs(**pairs), tmp_path, task_id="merge", **sliced)
