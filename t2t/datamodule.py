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
import io
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from t2t.data import (
    ROLES,
    join,
    read_bytes,
    read_meta,
    restore_vocabularies,
    shard_pipeline,
    split_shards,
)
from t2t.errors import UserError
from t2t.modality import Modality, call_with_settings
from t2t.problem import Problem
from t2t.tokens import BOS, EOS, PAD


@dataclass(frozen=True)
class PlanSettings:
    max_tokens: int = 4096  # padded tokens per batch (max of inputs and targets length x rows)
    max_rows: int = 512  # rows per batch at most
    window: int = 4096  # samples sorted together when bucketing by length
    seed: int = 1
    shuffle: bool = True
    # > 0: several samples share a row of this many positions per side (tensor2tensor's
    # packed_length), each behind a BOS; the model keeps them apart (see `pack`).
    packed_length: int = 0


def rank_order(counts: list[int], epoch: int, world: int, rank: int, settings: PlanSettings
               ) -> np.ndarray:
    """Global sample indices (shard order) this rank reads, in reading order."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    shards = np.arange(len(counts))
    if settings.shuffle:
        shards = np.random.default_rng([settings.seed, epoch]).permutation(len(counts))
    if len(counts) % world == 0:
        mine = shards[rank::world]
        return np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in mine])
    everything = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in shards])
    return everything[rank::world]


def pack(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First fit: rows of sample positions (into `lengths`, (N, 2) inputs and targets
    lengths), in order, each sample placed in the first row where both sides still have room
    for its length + 1 (its BOS). `capacity` must hold every sample."""
    rows: list[list[int]] = []
    room: list[list[int]] = []  # per row: positions left on the inputs and the targets side
    open_rows: list[int] = []  # rows with room for the shortest sample (length 1) on both sides
    for i, (source, target) in enumerate(lengths.tolist()):
        for r in open_rows:
            if source < room[r][0] and target < room[r][1]:
                break
        else:
            r = len(rows)
            rows.append([])
            room.append([capacity, capacity])
            open_rows.append(r)
        rows[r].append(i)
        room[r][0] -= source + 1
        room[r][1] -= target + 1
        if min(room[r]) < 2:
            open_rows.remove(r)
    return rows


def plan_rank(order: np.ndarray, lengths: np.ndarray, epoch: int, rank: int, settings: PlanSettings
              ) -> list[np.ndarray]:
    """Token-budget batches (arrays of global indices) over one rank's samples."""
    sizes = lengths.max(axis=1)
    batches: list[np.ndarray] = []
    for w, start in enumerate(range(0, len(order), settings.window)):
        window = order[start:start + settings.window]
        window = window[np.argsort(sizes[window], kind="stable")]
        window_batches = (packed_batches(window[::-1], lengths, settings) if settings.packed_length
                          else bucketed_batches(window, sizes, settings))
        if settings.shuffle:
            rng = np.random.default_rng([settings.seed, epoch, rank, w])
            window_batches = [window_batches[i] for i in rng.permutation(len(window_batches))]
        batches += window_batches
    return batches


def bucketed_batches(window: np.ndarray, sizes: np.ndarray, settings: PlanSettings
                     ) -> list[np.ndarray]:
    """A window's samples (shortest first) cut into batches of at most max_tokens padded
    tokens (rows x longest) and max_rows rows."""
    batches, begin = [], 0
    for end in range(1, len(window) + 1):
        rows, longest = end - begin, sizes[window[end - 1]]
        if end - begin > 1 and (rows * longest > settings.max_tokens or rows > settings.max_rows):
            batches.append(window[begin:end - 1])
            begin = end - 1
    batches.append(window[begin:])
    return batches


def packed_batches(window: np.ndarray, lengths: np.ndarray, settings: PlanSettings
                   ) -> list[np.ndarray]:
    """A window's samples (longest first: first fit decreasing) packed into rows, then
    max_tokens // packed_length rows a batch. A batch lists its samples row after row, so that
    packing them again at collate time, in that order, gives back the same rows."""
    per_batch = max(1, min(settings.max_rows, settings.max_tokens // settings.packed_length))
    rows = [window[row] for row in pack(lengths[window], settings.packed_length)]
    return [np.concatenate(rows[i:i + per_batch]) for i in range(0, len(rows), per_batch)]


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
            cost = [len(b) * lengths[b].max() if b is not None and len(b) > 1 else -1
                    for b in plan]
            i = int(np.argmax(cost))
            if cost[i] < 0:
                break
            half = len(plan[i]) // 2
            plan[i:i + 1] = [plan[i][:half], plan[i][half:]]
        out.append(plan + [None] * (target - len(plan)))
    return out


def fit_length(plan: list[np.ndarray | None], target: int, lengths: np.ndarray
               ) -> list[np.ndarray | None]:
    """The plan with exactly `target` batches: fillers dropped and the two smallest batches
    merged (leftovers at window ends, well under budget) while it has more; the largest split
    (as in `equalize`) while it has fewer."""
    plan = [b for b in plan if b is not None]  # `equalize` adds fillers back where needed
    while len(plan) > target:
        first, second = sorted(range(len(plan)), key=lambda i: len(plan[i]))[:2]
        plan[first] = np.concatenate([plan[first], plan[second]])
        del plan[second]
    return equalize([plan, [None] * target], lengths)[0]


def epoch_plan(counts: list[int], lengths: np.ndarray, epoch: int, world: int, rank: int,
               settings: PlanSettings, target: int | None = None) -> list[np.ndarray | None]:
    """One rank's batches for an epoch. Bucketing gives each epoch a slightly different number
    of batches; with `target` (the first epoch's count) every epoch has the same, as the
    trainer counts an epoch by the loader's length."""
    plans = [plan_rank(rank_order(counts, epoch, world, r, settings), lengths, epoch, r, settings)
             for r in range(world)]
    plan = equalize(plans, lengths)[rank]
    return plan if target is None else fit_length(plan, target, lengths)


class PlannedBatches(IterableDataset):
    """Yields the batches of one rank's epoch plan, from shards, in plan order."""

    def __init__(self, problem: Problem, problem_dir: str | Path, split: str, problem_index: int,
                 settings: PlanSettings, world: int = 1, rank: int = 0,
                 augment: dict[str, Any] | None = None, keep_stored_inputs: bool = False):
        self.problem, self.problem_index, self.settings = problem, problem_index, settings
        self.augment = augment or {}  # role -> what its modality's load augments with
        # Validation keeps each input's stored bytes (a PNG, a FLAC file) beside the loaded
        # tensor: example decodes show an image or a sound as the file it was.
        self.keep_stored_inputs = keep_stored_inputs
        meta = read_meta(problem_dir)
        restore_vocabularies(problem, problem_dir, meta)
        self.shards = split_shards(problem_dir, split, meta)
        self.counts = [s["count"] for s in self.shards]
        lengths = read_bytes(join(problem_dir, meta["splits"][split]["lengths"]))
        self.lengths = np.load(io.BytesIO(lengths))
        if settings.packed_length:
            roles = (problem.inputs, problem.targets)
            if not all(modality.packable for modality in roles):
                raise UserError(
                    f"data.packed_length={settings.packed_length}: {problem.name} has "
                    f"{' -> '.join(m.describe() for m in roles)}; packing needs token sequences "
                    "on both sides (text). Use data.packed_length=0 for it")
            longest = int(self.lengths.max()) + 1 if len(self.lengths) else 0
            if longest > settings.packed_length:
                raise UserError(
                    f"data.packed_length={settings.packed_length} is shorter than the longest "
                    f"{split} sample of {problem.name} ({longest} positions with its BOS): "
                    f"raise it to at least {longest}, or lower the problem's max_length")
        self.world, self.rank = world, rank
        self.epoch, self.skip = 0, 0
        self._len = len(epoch_plan(self.counts, self.lengths, 0, world, rank, settings))

    def __len__(self) -> int:
        return self._len  # the same for every epoch and every rank (see `epoch_plan`)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # Counting from the resume point keeps the round-robin order equal to plan order.
        positions = [j for j in range(self._len)
                     if j >= self.skip and (j - self.skip) % workers == worker]
        return self.batches_at(self.epoch, positions)

    def batches_at(self, epoch: int, positions: list[int]) -> Iterator[dict[str, Any]]:
        """The batches at these positions (ascending) of an epoch's plan, in that order."""
        plan = epoch_plan(self.counts, self.lengths, epoch, self.world, self.rank, self.settings,
                          target=self._len)
        mine = [plan[j] for j in positions]
        # Filler batches (None, see `equalize`) repeat the plan's first batch at zero weight.
        filler = {int(i) for i in plan[0]} if any(b is None for b in mine) else set()
        needed = filler | {int(i) for b in mine if b is not None for i in b}
        # A window's batches may come in any order: read the samples they need, in reading
        # order, and emit each batch once all of its samples are in. Samples are decoded (and
        # augmented) as their batch is made, not as they are read: the first batch of a
        # window waits for the window's bytes only, and decoding is spread over its batches.
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        stored: dict[int, dict] = {}
        samples = self._read(self.rank_shards(epoch), starts, needed)
        for batch in mine:
            indices = batch if batch is not None else plan[0]
            while any(int(i) not in stored for i in indices):
                index, raw = next(samples)
                stored[index] = raw
            yield self._collate([self._load(stored[int(i)]) for i in indices],
                                weight=float(batch is not None))
            for i in batch if batch is not None else ():
                if int(i) not in filler:
                    stored.pop(int(i), None)

    def rank_shards(self, epoch: int) -> list[int]:
        order = rank_order(self.counts, epoch, self.world, self.rank, self.settings)
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
                yield index, raw

    def _load(self, raw: dict) -> dict:
        """A stored sample's values, decoded (and augmented in training)."""
        sample = {"key": raw["key"], "references": raw.get("references"),
                  **{r: getattr(self.problem, r).load(raw[r], augment=self.augment.get(r))
                     for r in ROLES}}
        if self.keep_stored_inputs:
            sample["stored_inputs"] = raw["inputs"]
        return sample

    def _collate(self, samples: list[dict], weight: float) -> dict[str, Any]:
        batch = {"problem": self.problem_index, "keys": [s["key"] for s in samples],
                 "weight": weight, "references": [s["references"] for s in samples]}
        if self.keep_stored_inputs:
            batch["stored_inputs"] = [s["stored_inputs"] for s in samples]
        if self.settings.packed_length:
            return {**batch, **packed_rows(samples, self.settings.packed_length)}
        inputs, inputs_pad = self.problem.inputs.collate([s["inputs"] for s in samples])
        targets, _ = self.problem.targets.collate([s["targets"] for s in samples])
        return {**batch, "inputs": inputs, "inputs_pad": inputs_pad, "targets": targets}


def packed_rows(samples: list[dict], capacity: int) -> dict[str, Any]:
    """Token-id samples packed into rows (`pack`, in the given order). Each segment is BOS +
    its tokens on both sides: the model puts the problem token on the inputs' BOS and the
    problem's BOS vector on the targets'. "targets" are the decoder's inputs, "labels" what
    each position predicts (the segment's tokens, then EOS); "packing" holds each position's
    segment (1, 2, ... in its row; 0 = padding) and its position within the segment."""
    lengths = np.array([[len(s["inputs"]), len(s["targets"])] for s in samples])
    rows = pack(lengths, capacity)
    inputs, inputs_segments, inputs_positions = _lay_out(rows, [s["inputs"] for s in samples])
    targets, targets_segments, targets_positions = _lay_out(rows,
                                                            [s["targets"] for s in samples])
    # Each position predicts the next token of its segment; a segment's last position, EOS.
    following = F.pad(targets[:, 1:], (0, 1))
    same_segment = F.pad(targets_segments[:, 1:], (0, 1)) == targets_segments
    labels = torch.where(same_segment, following, EOS).masked_fill(targets_segments == 0, PAD)
    return {"inputs": inputs, "inputs_pad": inputs_segments == 0, "targets": targets,
            "labels": labels,
            "packing": {"inputs_segments": inputs_segments, "inputs_positions": inputs_positions,
                        "targets_segments": targets_segments,
                        "targets_positions": targets_positions}}


def _lay_out(rows: list[list[int]], sequences: list[torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of BOS + sequence segments: ids, segment numbers and positions in the segment,
    (rows, widest row) each, 0 at padding."""
    width = max(sum(len(sequences[i]) + 1 for i in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    segments, positions = torch.zeros_like(ids), torch.zeros_like(ids)
    for r, row in enumerate(rows):
        start = 0
        for segment, i in enumerate(row, start=1):
            end = start + len(sequences[i]) + 1
            ids[r, start], ids[r, start + 1:end] = BOS, sequences[i]
            segments[r, start:end] = segment
            positions[r, start:end] = torch.arange(end - start)
            start = end
    return ids, segments, positions


def mixture_weights(rates: Any, sizes: list[int], temperature: float = 1.0) -> np.ndarray:
    """Probability that a batch comes from each member: `rates` (a weight per member) or, for
    "examples", the members' training sizes; raised to 1 / temperature (T5's temperature
    mixing: > 1 evens the members out) and normalised."""
    if isinstance(rates, str):
        if rates != "examples":
            raise UserError(f"mixture rates={rates!r}: give 'examples' or one weight per member")
        rates = sizes
    rates = np.asarray(list(rates), dtype=np.float64)
    if len(rates) != len(sizes) or (rates < 0).any() or rates.sum() <= 0:
        raise UserError(f"mixture rates {rates.tolist()}: need {len(sizes)} non-negative "
                        f"weights, not all zero (one per member)")
    if temperature <= 0:
        raise UserError(f"mixture temperature={temperature}: must be > 0")
    weights = rates ** (1.0 / temperature)
    return weights / weights.sum()


class MixedBatches(IterableDataset):
    """Batches of several problems for one rank. Each batch is one member's (a batch of that
    member's plan, with its own token budget); which member is drawn by a schedule seeded by
    (seed, epoch), the same on every rank. An epoch holds as many batches as the members' plans
    together; a member whose plan runs out goes on with its next epoch, so the schedule, the
    member epochs and the positions in them are all a function of (epoch, batch index): a
    resumed run skips exactly the batches it trained on."""

    def __init__(self, members: list[PlannedBatches], weights: np.ndarray, seed: int = 1):
        self.members, self.weights, self.seed = members, weights, seed
        self.epoch, self.skip = 0, 0
        self._len = sum(len(m) for m in members)

    def __len__(self) -> int:
        return self._len

    def schedule(self, epoch: int) -> np.ndarray:
        """(len,) member index of every batch of an epoch."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        return rng.choice(len(self.members), size=self._len, p=self.weights)

    def positions(self, epoch: int) -> list[tuple[int, int, int]]:
        """(member, member epoch, position in that epoch's plan) of every batch of an epoch."""
        used = np.zeros(len(self.members), dtype=np.int64)  # member batches before this epoch
        for earlier in range(epoch):
            used += np.bincount(self.schedule(earlier), minlength=len(self.members))
        out = []
        for m in self.schedule(epoch).tolist():
            size = len(self.members[m])
            out.append((m, int(used[m] // size), int(used[m] % size)))
            used[m] += 1
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        positions = self.positions(self.epoch)
        mine = [positions[j] for j in range(self._len)
                if j >= self.skip and (j - self.skip) % workers == worker]
        streams = [self._stream(m, [(e, i) for member, e, i in mine if member == m])
                   for m in range(len(self.members))]
        for member, _, _ in mine:
            yield next(streams[member])

    def _stream(self, m: int, requests: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
        for epoch, group in itertools.groupby(requests, key=lambda request: request[0]):
            yield from self.members[m].batches_at(epoch, [i for _, i in group])


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
    # Under DDP the process has threads (the process group's) when a loader forks its
    # workers: a worker could start with a lock some thread held, and hang before its first
    # batch (a two-process CPU run hung in ~1 of 80 such starts, rank 1 waiting on its worker,
    # rank 0 in a barrier). The forkserver starts workers from a clean single-thread process.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    context = "forkserver" if num_workers and distributed else None
    return PlannedLoader(dataset, trainer_progress=trainer_progress, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available(), multiprocessing_context=context)


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of padded positions in a batch's targets (reported, to tune max_tokens/window)."""
    targets = batch["targets"]
    return 1.0 - (targets != 0).sum().item() / max(1, targets.numel())



def augmentation(modality: Modality, augment: Mapping[str, Mapping[str, Any]]) -> Any:
    """What the modality's `load` augments training values with, from the settings for its
    kind (`data.augment.<kind>`)."""
    return call_with_settings(modality.augmentation, augment.get(modality.kind, {}),
                              f"data.augment.{modality.kind}")


class T2TDataModule(L.LightningDataModule):
    """Training and validation batches of one problem's shards, or of a mixture of problems
    (`rates`, `temperature`: see `mixture_weights`), for any number of ranks. `augment`:
    modality kind -> its training augmentation settings (the `augmentation` method's
    keyword arguments)."""

    def __init__(self, problems: list[Problem], problem_dirs: list[str | Path], *,
                 rates: Any = "examples", temperature: float = 1.0, max_tokens: int = 4096,
                 max_rows: int = 512, window: int = 4096, seed: int = 1, num_workers: int = 1,
                 val_split: str = "validation", packed_length: int = 0,
                 augment: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.problems, self.problem_dirs = problems, problem_dirs
        # Made (and checked) once, here, not in a loader's worker: role -> augmentation.
        self.augmentations = [{role: augmentation(getattr(problem, role), augment or {})
                               for role in ROLES} for problem in problems]
        self.rates, self.temperature = rates, temperature
        self.settings = PlanSettings(max_tokens=max_tokens, max_rows=max_rows, window=window,
                                     seed=seed, packed_length=packed_length)
        self.num_workers, self.val_split = num_workers, val_split

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _batches(self, split: str, settings: PlanSettings, augment: bool
                 ) -> list[PlannedBatches]:
        world, rank = self._ranks()
        return [PlannedBatches(problem, problem_dir, split, index,
                               self._member_settings(problem, settings), world, rank,
                               augment=self.augmentations[index] if augment else None,
                               keep_stored_inputs=not augment)
                for index, (problem, problem_dir) in enumerate(zip(self.problems,
                                                                   self.problem_dirs,
                                                                   strict=True))]

    def _member_settings(self, problem: Problem, settings: PlanSettings) -> PlanSettings:
        # A mixture packs the members that can be packed; a single problem that cannot is
        # told so (PlannedBatches raises).
        packable = problem.inputs.packable and problem.targets.packable
        if len(self.problems) > 1 and not packable:
            return dataclasses.replace(settings, packed_length=0)
        return settings

    def train_dataloader(self) -> PlannedLoader:
        members = self._batches("train", self.settings, augment=True)
        dataset = members[0]
        if len(members) > 1:
            sizes = [int(sum(m.counts)) for m in members]
            dataset = MixedBatches(members, mixture_weights(self.rates, sizes, self.temperature),
                                   seed=self.settings.seed)
        return make_loader(dataset, self.num_workers,
                           trainer_progress=self._progress if self.trainer else None)

    def val_dataloader(self) -> PlannedLoader | list[PlannedLoader]:
        """One loader per problem: validation reports every member on its own."""
        # Unpacked: validation decodes its batches, one input a row.
        settings = dataclasses.replace(self.settings, shuffle=False, packed_length=0)
        loaders = [make_loader(dataset, min(self.num_workers, 1))
                   for dataset in self._batches(self.val_split, settings, augment=False)]
        return loaders[0] if len(loaders) == 1 else loaders
