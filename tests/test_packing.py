"""Sequence packing (data.packed_length): several samples a row, kept apart by the masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from problems.algorithmic import AlgorithmicAddition, AlgorithmicReverse
from t2t import data, datagen
from t2t.datamodule import PlannedBatches, PlanSettings, epoch_plan, pack, packed_rows
from t2t.errors import UserError
from t2t.lit_module import T2TLitModule
from t2t.model import PRESETS, T2TModel
from t2t.tokens import PAD


def random_samples(count: int, seed: int, vocab: int = 14) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        n, m = (int(x) for x in torch.randint(1, 9, (2,), generator=g))
        samples.append({"inputs": torch.randint(4, vocab, (n,), generator=g),
                        "targets": torch.randint(4, vocab, (m,), generator=g)})
    return samples


def test_packed_rows_compute_what_each_sample_computes_alone():
    problem = AlgorithmicReverse(num_symbols=10)
    torch.manual_seed(0)
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)])
    lit = T2TLitModule(model, [problem]).eval()  # eval: no dropout, so both see one function
    samples = random_samples(12, seed=0)
    inputs, inputs_pad = problem.inputs.collate([s["inputs"] for s in samples])
    targets, _ = problem.targets.collate([s["targets"] for s in samples])
    unpacked = {"problem": 0, "inputs": inputs, "inputs_pad": inputs_pad, "targets": targets}
    packed = {"problem": 0, **packed_rows(samples, capacity=24)}
    packing = packed["packing"]
    rows = pack(np.array([[len(s["inputs"]), len(s["targets"])] for s in samples]), 24)
    assert len(rows) == len(packed["inputs"]) < len(samples) / 2  # rows hold several samples
    with torch.no_grad():
        memory, memory_pad = model.encode(0, inputs, inputs_pad)
        states = model.decoder_states(0, memory, memory_pad, targets)
        packed_memory, packed_pad = model.encode(0, packed["inputs"], packed["inputs_pad"],
                                                 packing)
        packed_states = model.decoder_states(0, packed_memory, packed_pad, packed["targets"],
                                             packing=packing)
        loss, tokens = lit.loss(unpacked, label_smoothing=0.1)
        packed_loss, packed_tokens = lit.loss(packed, label_smoothing=0.1)
    for r, row in enumerate(rows):
        for segment, i in enumerate(row, start=1):
            # The problem token + the inputs, BOS + the targets: the same positions alone.
            n, m = len(samples[i]["inputs"]) + 1, len(samples[i]["targets"]) + 1
            at = packing["inputs_segments"][r] == segment
            torch.testing.assert_close(packed_memory[r, at], memory[i, :n], atol=1e-5, rtol=0)
            at = packing["targets_segments"][r] == segment
            torch.testing.assert_close(packed_states[r, at], states[i, :m], atol=1e-5, rtol=0)
    assert packed_tokens == tokens == sum(len(s["targets"]) + 1 for s in samples)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=0)


def test_packed_rows_lay_out_bos_tokens_and_labels():
    samples = [{"inputs": torch.tensor([5, 6]), "targets": torch.tensor([7])},
               {"inputs": torch.tensor([8]), "targets": torch.tensor([9, 10])}]
    batch = packed_rows(samples, capacity=8)
    bos, eos = 2, 1
    assert batch["inputs"].tolist() == [[bos, 5, 6, bos, 8]]
    assert batch["targets"].tolist() == [[bos, 7, bos, 9, 10]]
    assert batch["labels"].tolist() == [[7, eos, 9, 10, eos]]
    assert batch["packing"]["inputs_segments"].tolist() == [[1, 1, 1, 2, 2]]
    assert batch["packing"]["targets_positions"].tolist() == [[0, 1, 0, 1, 2]]
    assert not batch["inputs_pad"].any()


def test_pack_fills_rows_first_fit_within_capacity():
    lengths = np.random.default_rng(0).integers(1, 12, size=(200, 2))
    rows = pack(lengths, capacity=32)
    assert sorted(i for row in rows for i in row) == list(range(200))
    for row in rows:
        assert (lengths[row] + 1).sum(axis=0).max() <= 32
    assert len(rows) <= 1.3 * (lengths + 1).sum(axis=0).max() / 32  # rows are mostly full


@pytest.mark.parametrize("world", [1, 2])
def test_packed_plan_sees_every_sample_once_within_the_budget(world):
    rng = np.random.default_rng(3)
    counts = [50, 47, 61]
    lengths = rng.integers(1, 20, size=(sum(counts), 2)).astype(np.int32)
    settings = PlanSettings(max_tokens=128, window=64, packed_length=32)
    plans = [epoch_plan(counts, lengths, 0, world, rank, settings) for rank in range(world)]
    seen = np.concatenate([b for p in plans for b in p if b is not None])
    assert sorted(seen.tolist()) == list(range(sum(counts)))
    for plan in plans:
        for batch in plan:
            if batch is not None:
                assert len(pack(lengths[batch], 32)) <= 128 // 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    problem = AlgorithmicReverse(train_size=300, eval_size=20, max_length=10)
    return datagen.generate(problem, tmp_path_factory.mktemp("data"), samples_per_shard=100,
                         progress=False)


def test_loader_yields_packed_rows_of_the_plan(shards):
    problem = AlgorithmicReverse(train_size=300, eval_size=20, max_length=10)
    settings = PlanSettings(max_tokens=96, window=128, packed_length=32)
    dataset = PlannedBatches(problem, shards, "train", 0, settings)
    plan = epoch_plan(dataset.counts, dataset.lengths, 0, 1, 0, settings)
    key_at = [sample["key"] for sample in data.read_split(problem, shards, "train")]
    batches = list(dataset)
    assert [b["keys"] for b in batches] == [[key_at[i] for i in batch] for batch in plan]
    for batch, indices in zip(batches, plan, strict=True):
        assert batch["inputs"].shape[1] <= 32 and batch["targets"].shape[1] <= 32
        assert len(batch["inputs"]) <= 96 // 32
        # Every sample's target tokens and its EOS are labelled, nothing else.
        assert int((batch["labels"] != PAD).sum()) == int(dataset.lengths[indices, 1].sum()
                                                          + len(indices))
    padding = sum(int((b["labels"] == PAD).sum()) for b in batches) / sum(
        b["labels"].numel() for b in batches)
    assert padding < 0.15  # reversal pairs have equal sides: packed rows are nearly full


def test_packing_errors_name_the_fix(shards, tmp_path):
    problem = AlgorithmicReverse(train_size=300, eval_size=20, max_length=10)
    with pytest.raises(UserError, match=r"packed_length=8 is shorter .* at least 11"):
        PlannedBatches(problem, shards, "train", 0, PlanSettings(packed_length=8))
    addition = AlgorithmicAddition(train_size=50, eval_size=10)
    addition.targets.packable = False  # stands in for an image or audio modality
    directory = datagen.generate(addition, tmp_path, progress=False)
    with pytest.raises(UserError, match="packing needs token sequences on both sides"):
        PlannedBatches(addition, directory, "train", 0, PlanSettings(packed_length=64))
