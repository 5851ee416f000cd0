"""The batch plan: token budgets, exact DDP splitting, loader order and resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from problems.algorithmic import AlgorithmicCopy
from t2t import data, datagen
from t2t.datamodule import PlannedBatches, PlanSettings, epoch_plan, make_loader


def random_split(seed: int, shards: int) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in rng.integers(40, 60, size=shards)]
    lengths = rng.integers(1, 40, size=(sum(counts), 2)).astype(np.int32)
    return counts, lengths


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shards", [4, 5])
def test_every_sample_once_per_epoch_and_equal_batch_counts(world, shards):
    counts, lengths = random_split(world * 10 + shards, shards)
    settings = PlanSettings(max_tokens=200, window=64)
    for epoch in (0, 1):
        plans = [epoch_plan(counts, lengths, epoch, world, rank, settings)
                 for rank in range(world)]
        assert len({len(p) for p in plans}) == 1  # no rank waits for another at the end
        seen = np.concatenate([b for p in plans for b in p if b is not None])
        assert sorted(seen.tolist()) == list(range(sum(counts)))
        for plan in plans:
            for batch in plan:
                if batch is not None and len(batch) > 1:
                    assert len(batch) * lengths[batch].max() <= 200


def test_plans_are_deterministic_and_differ_by_epoch():
    counts, lengths = random_split(0, 4)
    settings = PlanSettings(max_tokens=300, window=64)
    first = epoch_plan(counts, lengths, 0, 2, 1, settings)
    again = epoch_plan(counts, lengths, 0, 2, 1, settings)
    other = epoch_plan(counts, lengths, 1, 2, 1, settings)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert [b.tolist() for b in first] != [b.tolist() for b in other]


def test_length_bucketing_keeps_padding_low():
    counts, lengths = random_split(1, 4)
    plan = epoch_plan(counts, lengths, 0, 1, 0, PlanSettings(max_tokens=400, window=256))
    padded = sum(len(b) * lengths[b].max() for b in plan)
    assert lengths.max(axis=1).sum() / padded > 0.85


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    problem = AlgorithmicCopy(train_size=600, eval_size=20)
    directory = tmp_path_factory.mktemp("data")
    return datagen.generate(problem, directory, samples_per_shard=150, progress=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_the_plan_in_order_and_skips_on_resume(shards, num_workers):
    settings = PlanSettings(max_tokens=256, window=128)
    problem = AlgorithmicCopy(train_size=600, eval_size=20)
    dataset = PlannedBatches(problem, shards, "train", 0, settings)
    plan = epoch_plan(dataset.counts, dataset.lengths, 0, 1, 0, settings)
    # Plans hold positions in shard order; batches carry the samples' keys.
    key_at = [sample["key"] for sample in data.read_split(problem, shards, "train")]
    loader = make_loader(dataset, num_workers)
    got = [batch["keys"] for batch in loader]
    assert len(got) == len(loader) == len(plan)
    assert got == [[key_at[i] for i in batch] for batch in plan]
    loader.load_state_dict({"epoch": 0, "batches": 5})
    assert [batch["keys"] for batch in loader] == got[5:]
    assert [batch["keys"] for batch in loader] == got  # the next epoch starts from the top


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_epoch_has_the_first_epochs_batch_count(world):
    """Bucketing gives epochs slightly different batch counts; the trainer counts an epoch by
    the loader's length, so every epoch is fitted to the first one's, losing no sample."""
    counts, lengths = random_split(7 + world, 5)
    settings = PlanSettings(max_tokens=150, window=32)
    target = len(epoch_plan(counts, lengths, 0, world, 0, settings))
    natural = {len(epoch_plan(counts, lengths, e, world, 0, settings)) for e in range(12)}
    assert len(natural) > 1  # the case this guards against happens here
    for epoch in range(12):
        plans = [epoch_plan(counts, lengths, epoch, world, rank, settings, target=target)
                 for rank in range(world)]
        assert {len(p) for p in plans} == {target}
        seen = np.concatenate([b for p in plans for b in p if b is not None])
        assert sorted(seen.tolist()) == list(range(sum(counts)))


@pytest.mark.parametrize("family, augment", [
    ("image", {"image": {"elastic": 2.0, "thickness": 0.5}}),
    ("audio", {"audio": {"speed_perturb": [0.8, 1.25], "noise_snr_db": [10, 20]}}),
])
def test_training_samples_are_augmented_in_a_loader_worker_and_validation_ones_are_not(
        family, augment, tmp_path):
    from problems.morse import MorseCode
    from problems.ocr import OcrRenderedText
    from t2t.datamodule import T2TDataModule

    problem = (OcrRenderedText if family == "image" else MorseCode)(train_size=8, eval_size=8)
    datagen.generate(problem, tmp_path, progress=False)
    problem_dir = data.open_shards(problem, tmp_path, {})
    module = T2TDataModule([problem], [problem_dir], augment=augment)  # checks, builds them
    settings = PlanSettings(shuffle=False)

    def batches(augmentations):  # the train split in plan order, read in one worker process
        dataset = PlannedBatches(problem, problem_dir, "train", 0, settings,
                                 augment=augmentations)
        return list(make_loader(dataset, num_workers=1))

    augmented, plain = batches(module.augmentations[0]), batches(None)
    assert [b["keys"] for b in augmented] == [b["keys"] for b in plain]
    changed = [a.shape != p.shape or not torch.equal(a, p)
               for x, y in zip(augmented, plain, strict=True)
               for a, p in zip(x["inputs"], y["inputs"], strict=True)]
    assert len(changed) == 8 and all(changed)
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(plain, batches(None),
                                                                       strict=True))
