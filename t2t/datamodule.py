"""Batches for training: token-budget batching with length bucketing, exact across DDP ranks.

Every rank computes the same *plan* for an epoch from the per-sample lengths that datagen
wrote (no shard is read for it):

  1. shards are shuffled (seed, epoch) and split across ranks: whole shards when their number
     divides by the world size, else sample by sample (global position % world == rank);
  2. each rank's samples, in reading order, are cut into windows; inside a window samples are
     sorted by length and cut into batches holding at most `max_tokens` (padded) tokens, then
     the window's batches are shuffled;
  3. ranks whose plan has fewer batches split their largest batches until all ranks have the
     same count, so every sample is seen exactly once per epoch and no rank waits forever.

Data-loader workers take batches round-robin (batch j -> worker j % num_workers), which is
the order PyTorch's DataLoader yields them in, so "the first k batches of the epoch" is well
defined: a resumed run skips exactly those.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from t2t.data import ROLES, read_meta, restore_vocabularies, shard_pipeline, split_shards
from t2t.problem import Problem


@dataclass(frozen=True)
class PlanSettings:
    max_tokens: int = 4096  # padded tokens per batch (max of inputs and targets length x rows)
    max_rows: int = 512  # rows per batch at most
    window: int = 4096  # samples sorted together when bucketing by length
    seed: int = 1
    shuffle: bool = True


def rank_order(counts: list[int], epoch: int, world: int, rank: int, s: PlanSettings
               ) -> np.ndarray:
    """Global sample indices (shard order) this rank reads, in reading order."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    shards = np.arange(len(counts))
    if s.shuffle:
        shards = np.random.default_rng([s.seed, epoch]).permutation(len(counts))
    if len(counts) % world == 0:
        mine = shards[rank::world]
        return np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in mine])
    everything = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in shards])
    return everything[rank::world]


def plan_rank(order: np.ndarray, lengths: np.ndarray, epoch: int, rank: int, s: PlanSettings
              ) -> list[np.ndarray]:
    """Token-budget batches (arrays of global indices) over one rank's samples."""
    sizes = lengths.max(axis=1)
    batches: list[np.ndarray] = []
    for w, start in enumerate(range(0, len(order), s.window)):
        window = order[start:start + s.window]
        window = window[np.argsort(sizes[window], kind="stable")]
        window_batches, begin = [], 0
        for end in range(1, len(window) + 1):
            rows, longest = end - begin, sizes[window[end - 1]]
            if end - begin > 1 and (rows * longest > s.max_tokens or rows > s.max_rows):
                window_batches.append(window[begin:end - 1])
                begin = end - 1
        window_batches.append(window[begin:])
        if s.shuffle:
            rng = np.random.default_rng([s.seed, epoch, rank, w])
            window_batches = [window_batches[i] for i in rng.permutation(len(window_batches))]
        batches += window_batches
    return batches


def equalize(plans: list[list[np.ndarray]], lengths: np.ndarray) -> list[list[np.ndarray]]:
    """Split the largest batches of short plans until every plan has the same length.

    A plan that cannot grow by splitting (single-row batches) is padded with repeats of its
    first batch; those are marked (as None) and the trainer gives them zero loss weight.
    """
    target = max(len(p) for p in plans)
    out = []
    for plan in plans:
        plan = list(plan)
        while len(plan) < target:
            cost = [len(b) * lengths[b].max() if len(b) > 1 else -1 for b in plan]
            i = int(np.argmax(cost))
            if cost[i] < 0:
                break
            half = len(plan[i]) // 2
            plan[i:i + 1] = [plan[i][:half], plan[i][half:]]
        out.append(plan + [None] * (target - len(plan)))
    return out


def epoch_plan(counts: list[int], lengths: np.ndarray, epoch: int, world: int, rank: int,
               s: PlanSettings) -> list[np.ndarray | None]:
    plans = [plan_rank(rank_order(counts, epoch, world, r, s), lengths, epoch, r, s)
             for r in range(world)]
    return equalize(plans, lengths)[rank]


class PlannedBatches(IterableDataset):
    """Yields the batches of one rank's epoch plan, from shards, in plan order."""

    def __init__(self, problem: Problem, problem_dir: Path, split: str, problem_index: int,
                 settings: PlanSettings, world: int = 1, rank: int = 0, augment: bool = False):
        self.problem, self.problem_index, self.settings = problem, problem_index, settings
        self.augment = augment
        meta = read_meta(problem_dir)
        restore_vocabularies(problem, problem_dir, meta)
        self.shards = split_shards(problem_dir, split, meta)
        self.counts = [s["count"] for s in self.shards]
        self.lengths = np.load(Path(problem_dir) / meta["splits"][split]["lengths"])
        self.world, self.rank = world, rank
        self.epoch, self.skip = 0, 0
        self._len = len(epoch_plan(self.counts, self.lengths, 0, world, rank, settings))

    def __len__(self) -> int:
        return self._len  # the same for every epoch and every rank (see `equalize`)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = epoch_plan(self.counts, self.lengths, self.epoch, self.world, self.rank,
                          self.settings)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # Counting from the resume point keeps the round-robin order equal to plan order.
        mine = [(j, b) for j, b in enumerate(plan)
                if j >= self.skip and (j - self.skip) % workers == worker]
        needed = {int(i) for _, b in mine if b is not None for i in b}
        # A window's batches may come in any order: load the samples they need, in reading
        # order, and emit each batch once all of its samples are in.
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        loaded: dict[int, dict] = {}
        samples = self._read(self.rank_shards(), starts, needed)
        for _, batch in mine:
            indices = batch if batch is not None else plan[0]
            while any(int(i) not in loaded for i in indices):
                index, sample = next(samples)
                loaded[index] = sample
            yield self._collate([loaded[int(i)] for i in indices], weight=float(batch is not None))
            if batch is not None:
                for i in batch:
                    loaded.pop(int(i), None)

    def rank_shards(self) -> list[int]:
        order = rank_order(self.counts, self.epoch, self.world, self.rank, self.settings)
        starts = np.concatenate([[0], np.cumsum(self.counts)])
        shard_of = np.searchsorted(starts, order, side="right") - 1
        return list(dict.fromkeys(shard_of.tolist()))  # in reading order, each once

    def _read(self, shard_ids: list[int], starts: np.ndarray, needed: set[int]
              ) -> Iterator[tuple[int, dict]]:
        shards = [self.shards[i] for i in shard_ids]
        stream = shard_pipeline(shards, split_by_node=False, split_by_worker=False)
        offsets = itertools.chain.from_iterable(
            range(starts[i], starts[i] + self.counts[i]) for i in shard_ids)
        for index, raw in zip(offsets, stream, strict=True):
            if index in needed:
                yield index, {"key": raw["key"], "references": raw.get("references"),
                              **{r: getattr(self.problem, r).load(raw[r], augment=self.augment)
                                 for r in ROLES}}

    def _collate(self, samples: list[dict], weight: float) -> dict[str, Any]:
        inputs, inputs_pad = self.problem.inputs.collate([s["inputs"] for s in samples])
        targets, _ = self.problem.targets.collate([s["targets"] for s in samples])
        return {"problem": self.problem_index, "inputs": inputs, "inputs_pad": inputs_pad,
                "targets": targets, "keys": [s["key"] for s in samples], "weight": weight,
                "references": [s["references"] for s in samples]}


class PlannedLoader(DataLoader):
    """A DataLoader over PlannedBatches that Lightning checkpoints (its Stateful protocol):
    a resumed run continues its epoch where it stopped instead of replaying batches."""

    def __init__(self, dataset: PlannedBatches, trainer_progress=None, **kwargs: Any):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._progress = trainer_progress  # () -> (epoch, batches trained in that epoch)
        self._resume: dict[str, int] | None = None

    def __iter__(self):
        dataset: PlannedBatches = self.dataset
        epoch = self._progress()[0] if self._progress else dataset.epoch
        resume, self._resume = self._resume, None
        dataset.epoch = epoch
        dataset.skip = resume["batches"] if resume and resume["epoch"] == epoch else 0
        return super().__iter__()

    def __len__(self) -> int:
        return len(self.dataset)

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._progress() if self._progress else (self.dataset.epoch, 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


def make_loader(dataset: PlannedBatches, num_workers: int, trainer_progress=None) -> PlannedLoader:
    return PlannedLoader(dataset, trainer_progress=trainer_progress, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of padded positions in a batch's targets (reported, to tune max_tokens/window)."""
    targets = batch["targets"]
    return 1.0 - (targets != 0).sum().item() / max(1, targets.numel())



class T2TDataModule(L.LightningDataModule):
    """Training and validation batches of one problem's shards, for any number of ranks."""

    def __init__(self, problem: Problem, problem_dir: Path, *, max_tokens: int = 4096,
                 max_rows: int = 512, window: int = 4096, seed: int = 1, num_workers: int = 1,
                 val_split: str = "validation"):
        super().__init__()
        self.problem, self.problem_dir = problem, problem_dir
        self.settings = PlanSettings(max_tokens=max_tokens, max_rows=max_rows, window=window,
                                     seed=seed)
        self.num_workers, self.val_split = num_workers, val_split

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> PlannedLoader:
        world, rank = self._ranks()
        dataset = PlannedBatches(self.problem, self.problem_dir, "train", 0, self.settings,
                                 world, rank, augment=True)
        return make_loader(dataset, self.num_workers,
                           trainer_progress=self._progress if self.trainer else None)

    def val_dataloader(self) -> PlannedLoader:
        world, rank = self._ranks()
        settings = dataclasses.replace(self.settings, shuffle=False)
        dataset = PlannedBatches(self.problem, self.problem_dir, self.val_split, 0, settings,
                                 world, rank)
        return make_loader(dataset, min(self.num_workers, 1))
