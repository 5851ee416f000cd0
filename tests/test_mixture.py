"""Mixtures: several problems, one model. Sampling weights, the batch schedule (deterministic,
resumable, every member sample once per member epoch), configs and a resumed mixture run."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from problems.algorithmic import AlgorithmicCopy, AlgorithmicReverse
from t2t import data, datagen
from t2t.datamodule import (
    MixedBatches,
    PlannedBatches,
    PlanSettings,
    make_loader,
    mixture_weights,
)
from t2t.errors import UserError

from .conftest import run_command


def test_weights_follow_examples_rates_and_temperature():
    assert mixture_weights("examples", [300, 100]).tolist() == [0.75, 0.25]
    assert mixture_weights([1, 1], [300, 100]).tolist() == [0.5, 0.5]
    flat = mixture_weights("examples", [400, 100], temperature=2.0)
    assert flat.tolist() == pytest.approx([2 / 3, 1 / 3])  # sqrt(4) : sqrt(1)
    for rates, message in [([1], "need 2"), ([-1, 2], "non-negative"), ("some", "examples")]:
        with pytest.raises(UserError, match=message):
            mixture_weights(rates, [300, 100])


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixture")
    made = []
    for index, problem in enumerate([AlgorithmicCopy(train_size=300, eval_size=10),
                                     AlgorithmicReverse(train_size=120, eval_size=10)]):
        problem_dir = datagen.generate(problem, directory, samples_per_shard=60, progress=False)
        made.append((problem, problem_dir, index))
    return made


def mixed(members, **settings) -> MixedBatches:
    plan = PlanSettings(max_tokens=120, window=64, **settings)
    datasets = [PlannedBatches(p, d, "train", i, plan) for p, d, i in members]
    return MixedBatches(datasets, mixture_weights([1, 1], [300, 120]), seed=3)


def keys_of(batches) -> list[tuple[int, tuple[str, ...]]]:
    return [(b["problem"], tuple(b["keys"])) for b in batches]


def test_every_member_sample_once_per_member_epoch(members):
    dataset = mixed(members)
    by_member_epoch: dict[tuple[int, int], list[str]] = {}
    positions_seen: dict[tuple[int, int], set[int]] = {}
    for epoch in range(3):
        dataset.epoch = epoch
        for (member, member_epoch, index), batch in zip(dataset.positions(epoch), dataset,
                                                        strict=True):
            assert batch["problem"] == member
            by_member_epoch.setdefault((member, member_epoch), []).extend(batch["keys"])
            positions_seen.setdefault((member, member_epoch), set()).add(index)
    complete = [(m, e) for (m, e), seen in positions_seen.items()
                if seen == set(range(len(dataset.members[m])))]
    assert {m for m, _ in complete} == {0, 1}
    for member, member_epoch in complete:
        problem, problem_dir, _ = members[member]
        every = sorted(s["key"] for s in data.read_split(problem, problem_dir, "train"))
        assert sorted(by_member_epoch[(member, member_epoch)]) == every
    # Equal weights: both members get about half the batches; the smaller one cycles faster.
    counts = Counter(m for (m, _), keys in by_member_epoch.items() for _ in keys)
    assert max(e for m, e in positions_seen if m == 1) > max(e for m, e in positions_seen
                                                              if m == 0)
    assert counts[0] and counts[1]


def test_schedule_is_deterministic_and_resumes_exactly(members):
    dataset = mixed(members)
    dataset.epoch = 1
    full = keys_of(dataset)
    again = mixed(members)
    again.epoch = 1
    assert keys_of(again) == full
    dataset.skip = 7
    assert keys_of(dataset) == full[7:]
    dataset.skip, dataset.epoch = 0, 2
    assert keys_of(dataset) != full


def test_two_loader_workers_give_the_same_order(members):
    assert keys_of(make_loader(mixed(members), num_workers=2)) == keys_of(mixed(members))


FAST = ["problem=mixture", "problem.members=[algorithmic_reverse,algorithmic_copy]",
        "model=tiny", "trainer.enable_progress_bar=false", "data.num_workers=0",
        "datagen.max_samples=3000", "data.max_tokens=256", "trainer.val_check_interval=1000"]


def test_config_errors_are_one_line(tmp_path):
    result = run_command("t2t-datagen", "problem=mixture", "problem.members=[algoritmic_copy]",
                         f"data_dir={tmp_path}")
    assert result.returncode == 1
    assert "unknown problem 'algoritmic_copy'; did you mean algorithmic_copy" in result.stderr
    result = run_command("t2t-datagen", "problem=mixture", f"data_dir={tmp_path}")
    assert result.returncode == 1 and "problem.members" in result.stderr


@pytest.mark.timeout(400)
def test_resumed_mixture_run_continues_the_schedule(tmp_path):
    def train(steps: int, run: str) -> list[tuple[int, int, str]]:
        seen = tmp_path / f"seen-{run}"
        command = [str(Path(sys.executable).parent / "t2t-train"), *FAST,
                   f"trainer.max_steps={steps}", "checkpoint_every=10",
                   f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / run}",
                   f"record_samples={seen}"]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = (seen / "rank0.tsv").read_text().splitlines()
        return [(int(r.split("\t")[1]), int(r.split("\t")[2]), r.split("\t")[3]) for r in rows]

    straight = train(30, "straight")
    first = train(20, "resumed")
    assert first == straight[:20]
    (tmp_path / "seen-resumed" / "rank0.tsv").unlink()
    rest = train(30, "resumed")  # the same run directory: resumes from step 20
    assert rest == straight[20:]
    assert {problem for _, problem, _ in straight} == {0, 1}

    decoded = run_command("t2t-decode", "problem=algorithmic_copy",
                          f"ckpt={tmp_path / 'resumed' / 'checkpoints' / 'last.ckpt'}",
                          "input=1234", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    assert set(decoded.stdout.strip()) <= set("0123456789")


def test_joint_vs_single_table_reads_the_recorded_scores(tmp_path):
    """benchmarks/joint_vs_single.py --table prints member x {single, joint} from the scores a
    run appended (mean ± sd over the seeds asked for, + where the joint model is better by
    the metric's direction), and trains nothing; a member not yet measured shows '-'."""
    import json

    from .conftest import REPO

    scores = [  # (seed, member, kind, steps, metric, value)
        (1, "algorithmic_reverse", "single", 400, "exact_match", 0.9),
        (2, "algorithmic_reverse", "single", 410, "exact_match", 1.0),
        (1, "algorithmic_reverse", "joint", 400, "exact_match", 0.95),
        (2, "algorithmic_reverse", "joint", 410, "exact_match", 0.95),
        (1, "ocr_rendered_text", "single", 900, "cer", 0.02),
        (1, "ocr_rendered_text", "joint", 900, "cer", 0.01),
        (3, "ocr_rendered_text", "joint", 905, "cer", 0.5),  # a seed not asked for
    ]
    fields = ("seed", "member", "kind", "steps", "metric", "value")
    (tmp_path / "scores.jsonl").write_text("".join(
        json.dumps(dict(zip(fields, row, strict=True))) + "\n" for row in scores))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "joint_vs_single.py"), "--mixture",
         "quickstart", "--seeds", "1", "2", "--run-root", str(tmp_path), "--table"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in result.stdout.splitlines()
            if line.startswith("| ")}
    assert rows["algorithmic_reverse"] == ("| algorithmic_reverse | exact_match (higher) | "
                                           "400, 410 | 0.950 ± 0.071 | 0.950 ± 0.000 | +0.0% |")
    assert rows["ocr_rendered_text"] == ("| ocr_rendered_text | cer (lower) | 900 | "
                                         "0.020 ± 0.000 | 0.010 ± 0.000 | +50.0% |")
    assert rows["morse_code"] == "| morse_code | cer (lower) | - | - | - | - |"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]
