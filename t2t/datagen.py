"""Datagen: a problem's raw samples -> WebDataset shards under data_dir/<problem>/.

Datagen runs in two stages. (1) The raw samples of a split are cut into chunks of
`chunk_size`; worker processes encode each chunk and save it under .work/ (a killed run
replays the problem's deterministic generator and skips finished chunks). (2) The kept
samples are dealt into shards of equal size (counts differ by at most one) so that every
DDP rank sees the same number of samples; the training split is shuffled on the way (seeded).
Shards are deterministic tar files (fixed mtime and owner), written under a temporary name
and renamed when complete. The layout is described in `t2t.data`.

Work chunks are plain data, never pickles: the work folder may sit on shared storage, and a
file there must not be able to run code in whoever reads it. Chunk `<split>-<NNNNNN>` is a
gzipped tar in the shards' own layout (`<index>.inputs.<ext>`, `<index>.targets.<ext>`,
`<index>.references.json`; the key is the sample's index in the split) and a JSON written
after it (samples kept, examples dropped and why, the tar's size and sha256, checked when
the tar is read back); a chunk is finished when its JSON is there and the tar has its size.

Across machines (tensor2tensor's --task_id), stage (1) is cut into `num_tasks` slices that
share data_dir/<problem>/.work/:
    task_id=vocab   once, first: learns the vocabularies into vocab/ (what .work/vocab.json
                    lists), so that every slice encodes with the same bytes. SentencePiece's
                    output depends on its thread count, which follows the machine's cores:
                    slices fitting their own could disagree.
    task_id=I       on each machine, 0 <= I < num_tasks: encodes the chunks whose number,
                    counted over all splits in order, is I modulo num_tasks, into
                    .work/slice-I-of-N/, and writes done.json there when all are finished.
                    Resumable; several slices run at once (a job array).
    task_id=merge   once, last: checks every slice is done with the same options and
                    vocabulary, then runs stage (2) over their chunks, in chunk order.
The shards and meta.json are those of a run on one machine (num_tasks unset), byte for byte:
slicing decides only where a chunk is encoded, not what it holds or where it goes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from t2t.data import (
    ROLES,
    ShardSettings,
    fingerprint,
    is_url,
    read_meta,
    restore_vocabularies,
    shards_intact,
)
from t2t.errors import UserError
from t2t.files import sha256_file, write_atomic
from t2t.modality import Modality
from t2t.problem import Problem
from t2t.progress import PeriodicReporter, format_duration

STEPS = ("vocab", "merge")  # the task_ids of a sliced run that are not slices


def prepare(problem: Problem, data_dir: str | Path, **settings: Any) -> None:
    """Write the shards a run needs where they may be missing: a local data_dir. A URL is
    read-only to t2t: its shards were copied there beforehand (`t2t.data.open_shards`
    checks them)."""
    if not is_url(data_dir):
        generate(problem, data_dir, **settings)


def generate(
    problem: Problem,
    data_dir: str | Path,
    *,
    samples_per_shard: int = 10_000,
    chunk_size: int = 1000,
    max_length: int | None = 256,
    compress: bool = True,
    max_samples: int | None = None,
    on_bad_example: str = "error",
    workers: int = 1,
    progress: bool = True,
    num_tasks: int | None = None,
    task_id: int | str | None = None,
    command: str | None = None,
) -> Path:
    """Write the shards of every split of `problem` under data_dir/<problem.name>/.

    Does nothing when shards with the same fingerprint exist; resumes an interrupted run.
    max_samples keeps only the first samples of each split (for smoke tests).
    num_tasks and task_id cut the work across machines (see the module docstring): task_id
    is "vocab", a slice number or "merge"; `command`, the t2t-datagen command line without
    task_id, is what error messages tell the user to run with another task_id.
    Returns the problem directory. The problem passed in is left as it was: every process,
    this one included, reads the vocabularies back with `t2t.data.open_shards`, so that no
    process depends on having been the one that wrote the shards.
    """
    if is_url(data_dir):
        raise UserError(f"datagen writes to a local data_dir, not {data_dir}: write the shards "
                        f"locally and copy data_dir/{problem.name}/ there")
    problem = copy.deepcopy(problem)
    settings = ShardSettings(samples_per_shard=samples_per_shard, max_length=max_length,
                             compress=compress, max_samples=max_samples,
                             on_bad_example=on_bad_example)
    task = _check_task(num_tasks, task_id)
    fp = fingerprint(problem, settings)
    job = _Job(problem=problem, problem_dir=Path(data_dir) / problem.name, settings=settings,
               fingerprint=fp, recipe=f"{fp} chunk_size={chunk_size}", chunk_size=chunk_size,
               workers=workers, progress=progress, print_fn=_printer(progress),
               num_tasks=num_tasks or 1,
               command=command or (f"t2t-datagen problem={problem.name} [the same options] "
                                   f"datagen.num_tasks={num_tasks}"))
    lock = job.problem_dir / ".lock"
    if task is None:
        with _locked(lock, job.print_fn):
            _generate(job)
    elif task == "vocab":
        with _locked(lock, job.print_fn):
            _vocab_step(job)
    elif task == "merge":
        with _locked(lock, job.print_fn):
            _merge(job)
    else:
        # Slices share the problem directory with each other, not with a whole run or a merge.
        with _locked(lock, job.print_fn, shared=True):
            if not _up_to_date(job):
                with _locked(job.slice_dir(task) / ".lock", job.print_fn):
                    _slice(job, task)
    return job.problem_dir


@dataclasses.dataclass
class _Job:
    """What one datagen call works with."""

    problem: Problem
    problem_dir: Path
    settings: ShardSettings
    fingerprint: str
    recipe: str  # what work chunks are valid for: the fingerprint and the chunk size
    chunk_size: int
    workers: int
    progress: bool
    print_fn: Callable[[str], None]
    num_tasks: int
    command: str  # t2t-datagen with the same options, without task_id

    @property
    def name(self) -> str:
        return self.problem.name

    @property
    def work(self) -> Path:
        return self.problem_dir / ".work"

    def slice_dir(self, task_id: int) -> Path:
        return self.work / f"slice-{task_id}-of-{self.num_tasks}"

    def run(self, task_id: int | str) -> str:
        return f"`{self.command} datagen.task_id={task_id}`"


def _check_task(num_tasks: Any, task_id: Any) -> int | str | None:
    """None for a whole run, "vocab", "merge" or a slice number; one line for a bad pair."""
    if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int)
                                  or num_tasks < 1):
        raise UserError(f"datagen.num_tasks={num_tasks!r}: give the number of slices the work "
                        f"is cut into (machines of a job array), 1 or more")
    if task_id is None:
        if num_tasks not in (None, 1):
            raise UserError(f"datagen.num_tasks={num_tasks} needs datagen.task_id: vocab "
                            f"(once, first), then 0 to {num_tasks - 1} (one per machine), then "
                            f"merge")
        return None
    if num_tasks is None:
        raise UserError(f"datagen.task_id={task_id} needs datagen.num_tasks=N, the number of "
                        f"slices the work is cut into")
    if isinstance(task_id, str) and task_id.isdigit():
        task_id = int(task_id)
    if task_id in STEPS:
        return task_id
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise UserError(f"datagen.task_id={task_id!r}: use vocab, a slice number from 0 to "
                        f"{num_tasks - 1}, or merge")
    if not 0 <= task_id < num_tasks:
        raise UserError(f"datagen.task_id={task_id} is out of range for datagen.num_tasks="
                        f"{num_tasks}: slices are numbered 0 to {num_tasks - 1} (a SLURM job "
                        f"array: --array=0-{num_tasks - 1})")
    return task_id


@contextlib.contextmanager
def _locked(path: Path, print_fn, shared: bool = False):
    """One datagen per problem directory at a time, across processes: a second run (a sweep
    launched in parallel, another rank) waits, then finds the shards up to date. Without it
    both wrote the same scratch files and one crashed on the other's rename. Slices take
    the problem's lock shared (they run side by side) and their own slice's exclusively."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    # "a": a no-op run touches nothing. Closing the file releases the lock, error or not.
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            print_fn(f"{path.parent}: another datagen is writing here; waiting for it")
            fcntl.flock(lock, mode)
        yield


# -- the four kinds of run --------------------------------------------------------------------


def _generate(job: _Job) -> None:
    """All of it on this machine."""
    if _up_to_date(job):
        return
    _remove_stale(job)
    work = _scratch(job.work, job.recipe)
    vocab_files = _fit_vocabularies(job.problem, job.problem_dir, work,
                                    job.settings.max_samples, job.print_fn)
    meta = _meta_header(job, vocab_files)
    with _encoding(job) as pool:
        for split in job.problem.splits:
            chunks, _ = _encode_split(job, split, work, pool)
            meta["splits"][split] = _write_split(job, split, chunks)
    _finish(job, meta)


def _vocab_step(job: _Job) -> None:
    """task_id=vocab: the vocabularies every slice then encodes with."""
    if _up_to_date(job):
        return
    _remove_stale(job)
    work = _scratch(job.work, job.recipe)
    files = _fit_vocabularies(job.problem, job.problem_dir, work, job.settings.max_samples,
                              job.print_fn)
    learned = ", ".join(sorted(set(files.values()))) or "none to learn"
    job.print_fn(f"{job.name}: vocabularies ready ({learned}); now run the slices, "
                 f"{job.run('I')} for I = 0 to {job.num_tasks - 1}, then {job.run('merge')}")


def _slice(job: _Job, task_id: int) -> None:
    """task_id=I: encode this slice's chunks of every split."""
    vocab = _shared_vocabulary(job)
    stamp = f"{job.recipe} vocab={json.dumps(vocab, sort_keys=True)}"
    folder = _scratch(job.slice_dir(task_id), stamp, keep={".lock"})
    (folder / "done.json").unlink(missing_ok=True)  # there only once every chunk is
    chunks: dict[str, int] = {}
    with _encoding(job) as pool:
        for split in job.problem.splits:
            first = sum(chunks.values())  # chunks are numbered on across splits

            def owned(index: int, first: int = first) -> bool:
                return (first + index) % job.num_tasks == task_id

            mine, chunks[split] = _encode_split(job, split, folder, pool, owned)
            job.print_fn(f"{job.name}/{split}: slice {task_id} of {job.num_tasks} encoded "
                         f"{len(mine)} of {chunks[split]} chunk(s)")
    done = {"recipe": job.recipe, "num_tasks": job.num_tasks, "task_id": task_id,
            "vocab": vocab, "chunks": chunks}
    write_atomic(folder / "done.json", json.dumps(done, indent=2).encode())
    job.print_fn(f"{job.name}: slice {task_id} of {job.num_tasks} done; when all are, run "
                 f"{job.run('merge')}")


def _merge(job: _Job) -> None:
    """task_id=merge: stage (2) over the chunks of every slice, once all are done."""
    if _up_to_date(job):
        return
    vocab = _shared_vocabulary(job)
    chunks = _check_slices(job, vocab)
    _remove_stale(job, keep={v["file"] for v in vocab.values()})
    meta = _meta_header(job, {role: v["file"] for role, v in vocab.items()})
    first = 0
    for split in job.problem.splits:
        total = chunks[split]
        stems = [job.slice_dir((first + index) % job.num_tasks) / _chunk_name(split, index)
                 for index in range(total)]
        first += total
        meta["splits"][split] = _write_split(job, split, stems)
    _finish(job, meta)


def _check_slices(job: _Job, vocab: dict[str, dict[str, str]]) -> dict[str, int]:
    """The number of chunks of each split, once every slice is done with this merge's
    options and vocabulary; else one error naming the slices to run (again)."""
    n = job.num_tasks
    missing: list[int] = []
    other_options: list[tuple[int, str]] = []
    other_vocab: list[int] = []
    counts: dict[str, dict[str, int]] = {}
    for task_id in range(n):
        path = job.slice_dir(task_id) / "done.json"
        done = (_read_json(path, f"run slice {task_id} again: {job.run(task_id)}")
                if path.is_file() else None)
        if not isinstance(done, dict) or not isinstance(done.get("chunks"), dict):
            missing.append(task_id)
        elif done.get("recipe") != job.recipe:
            other_options.append((task_id, str(done.get("recipe"))))
        elif done.get("vocab") != vocab:
            other_vocab.append(task_id)
        else:
            counts[json.dumps(done["chunks"], sort_keys=True)] = done["chunks"]
    if not (missing or other_options or other_vocab):
        if len(counts) > 1:
            raise UserError(f"{job.name}: the slices in {job.work} count different numbers of "
                            f"chunks per split; generate_samples must yield the same samples on "
                            f"every machine (the same raw files, deterministic)")
        missing = _slices_with_missing_chunks(job, next(iter(counts.values())))
    problems = []
    if missing:
        problems.append(
            f"slice(s) {', '.join(map(str, missing))} of {n} are not done in {job.work}; run "
            f"them first, with the same options: {job.run(missing[0])}"
            + (" and likewise the others" if len(missing) > 1 else ""))
    if other_options:
        made = ", ".join(f"{task_id} ({recipe})" for task_id, recipe in other_options)
        problems.append(f"slice(s) {made} were made with other options or code than this "
                        f"merge ({job.recipe}); run them again with the merge's options: "
                        f"{job.run(other_options[0][0])}")
    if other_vocab:
        problems.append(f"slice(s) {', '.join(map(str, other_vocab))} encoded with another "
                        f"vocabulary than the one .work/vocab.json lists now (the vocab step "
                        f"ran again since); run them again: {job.run(other_vocab[0])}")
    if problems:
        raise UserError(f"{job.name}: " + "; ".join(problems))
    return next(iter(counts.values()))


def _slices_with_missing_chunks(job: _Job, chunks: dict[str, int]) -> list[int]:
    """Slices whose done.json is there but a chunk is not (deleted by hand, say)."""
    incomplete, first = set(), 0
    for split in job.problem.splits:
        for index in range(chunks[split]):
            task_id = (first + index) % job.num_tasks
            if not _chunk_done(job.slice_dir(task_id) / _chunk_name(split, index)):
                incomplete.add(task_id)
        first += chunks[split]
    return sorted(incomplete)


# -- shared steps -----------------------------------------------------------------------------


def _up_to_date(job: _Job) -> bool:
    """Whether shards with this fingerprint are complete (their vocabularies then restored)."""
    if not (job.problem_dir / "meta.json").is_file():
        return False
    meta = read_meta(job.problem_dir)
    if meta.get("fingerprint") != job.fingerprint or not shards_intact(job.problem_dir, meta):
        return False
    restore_vocabularies(job.problem, job.problem_dir, meta)
    job.print_fn(f"{job.name}: shards in {job.problem_dir} are up to date ({job.fingerprint})")
    return True


def _remove_stale(job: _Job, keep: set[str] = frozenset()) -> None:
    if (job.problem_dir / "meta.json").is_file():
        job.print_fn(f"{job.name}: fingerprint changed or shards missing; regenerating")
        _remove_outputs(job.problem_dir, keep)


def _scratch(folder: Path, stamp: str, keep: set[str] = frozenset()) -> Path:
    """`folder`, holding work for `stamp` (the recipe) only: the files of another recipe are
    useless there, and removed (sub-folders, the slices, see to themselves)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fingerprint"
    if path.is_file() and path.read_text() != stamp:
        for entry in folder.iterdir():
            if entry.is_file() and entry.name not in keep:
                entry.unlink()
    path.write_text(stamp)
    return folder


def _shared_vocabulary(job: _Job) -> dict[str, dict[str, str]]:
    """A slice's or merge's vocabularies: those the vocab step learned (restored into the
    problem's modalities), {role: {"file", "sha256"}}; {} when there is nothing to learn."""
    stamp, record_path = job.work / "fingerprint", job.work / "vocab.json"
    record: dict[str, str] = {}
    if stamp.is_file() and stamp.read_text() == job.recipe and record_path.is_file():
        record = _read_json(record_path, f"run {job.run('vocab')} again")
        record = {role: file for role, file in record.items()
                  if (job.problem_dir / file).is_file()}
    if any(role not in record and getattr(job.problem, role).needs_fit for role in ROLES):
        other = (f" (it holds the vocab step's of {stamp.read_text()})"
                 if stamp.is_file() and stamp.read_text() != job.recipe else "")
        raise UserError(f"{job.name}: no vocabulary for these options and code ({job.recipe}) "
                        f"in {job.work}{other}: the slices share one, learned once before "
                        f"them; run {job.run('vocab')} first")
    for role, file in record.items():
        getattr(job.problem, role).restore(job.problem_dir / file)
    return {role: {"file": file, "sha256": sha256_file(job.problem_dir / file)}
            for role, file in sorted(record.items())}


def _read_json(path: Path, then: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise UserError(f"{path}: unreadable ({error}); delete it and {then}") from None


def _meta_header(job: _Job, vocab_files: dict[str, str]) -> dict[str, Any]:
    problem = job.problem
    return {
        "problem": problem.name,
        "options": problem.options,
        "fingerprint": job.fingerprint,
        "settings": dataclasses.asdict(job.settings),
        "modalities": {
            role: {"key": getattr(problem, role).key, "kind": getattr(problem, role).kind,
                   "describe": getattr(problem, role).describe(),
                   "extension": getattr(problem, role).extension,
                   "vocab": vocab_files.get(role)}
            for role in ROLES
        },
        "splits": {},
    }


def _finish(job: _Job, meta: dict[str, Any]) -> None:
    write_atomic(job.problem_dir / "meta.json",
                 json.dumps(meta, indent=2, default=str, ensure_ascii=False).encode())
    shutil.rmtree(job.work)


def _printer(enabled: bool):
    if not enabled:
        return lambda message: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True)


def _remove_outputs(problem_dir: Path, keep: set[str] = frozenset()) -> None:
    """Remove meta.json, shards, length files and the vocabularies but those in `keep`
    (paths relative to problem_dir)."""
    (problem_dir / "meta.json").unlink(missing_ok=True)
    for output in problem_dir.glob("*-*.*"):  # shards and length files
        output.unlink()
    vocab = problem_dir / "vocab"
    if not keep:
        shutil.rmtree(vocab, ignore_errors=True)
        return
    for path in vocab.iterdir() if vocab.is_dir() else ():
        if str(path.relative_to(problem_dir)) not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _fit_vocabularies(
    problem: Problem, problem_dir: Path, work: Path, max_samples: int | None, print_fn
) -> dict:
    """Fit each modality that needs a vocabulary on the training split; reuse a saved one.

    A modality serving both roles (a joint vocabulary) is fitted once on both sides.
    Returns {role: vocabulary file relative to problem_dir}, also saved as work/vocab.json.
    """
    record_path = work / "vocab.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record = {role: file for role, file in record.items() if (problem_dir / file).is_file()}
    files: dict[str, str] = {}
    for role in ROLES:
        modality: Modality = getattr(problem, role)
        roles = [r for r in ROLES if getattr(problem, r) is modality]
        if role in record:
            modality.restore(problem_dir / record[role])
        elif modality.needs_fit:
            print_fn(f"{problem.name}: fitting the {'+'.join(roles)} vocabulary "
                     f"({modality.describe()})")
            samples = itertools.islice(problem.generate_samples("train"), max_samples)
            values = (sample[r] for sample in samples for r in roles)
            path = modality.fit(values, problem_dir / "vocab")
            for r in roles:
                record[r] = str(path.relative_to(problem_dir))
        if role in record:
            files[role] = record[role]
    write_atomic(record_path, json.dumps(record).encode())
    return files


# -- stage 1: encoding chunks -----------------------------------------------------------------

# Worker-side state: set once per process by the pool initializer (or in-process).
_worker: dict[str, Any] = {}


def _init_worker(problem: Problem, max_length: int | None, on_bad_example: str) -> None:
    _worker.update(problem=problem, max_length=max_length, on_bad_example=on_bad_example)


@contextlib.contextmanager
def _encoding(job: _Job) -> Iterator[ProcessPoolExecutor | None]:
    """The encoding workers (None: encode in this process), given the fitted modalities."""
    args = (job.problem, job.settings.max_length, job.settings.on_bad_example)
    pool = ProcessPoolExecutor(job.workers, initializer=_init_worker, initargs=args
                               ) if job.workers > 1 else None
    if pool is None:
        _init_worker(*args)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _chunk_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def _chunk_files(stem: Path) -> tuple[Path, Path]:
    """The chunk's samples (a tar) and its summary (JSON, written last)."""
    return stem.with_name(stem.name + ".tar.gz"), stem.with_name(stem.name + ".json")


def _chunk_done(stem: Path) -> bool:
    tar, summary = _chunk_files(stem)
    if not summary.is_file():
        return False
    try:
        size = json.loads(summary.read_text()).get("bytes")
    except ValueError:
        return False  # cut short: encode the chunk again
    return tar.is_file() and tar.stat().st_size == size


def _encode_chunk(split: str, first_index: int, raws: list[dict], stem: Path) -> dict[str, int]:
    """Encode raw samples; drop (and count) empty, over-long and, under on_bad_example=skip,
    unreadable ones. A sample may carry "references" (all acceptable targets, for metrics)."""
    problem: Problem = _worker["problem"]
    max_length, skip_bad = _worker["max_length"], _worker["on_bad_example"] == "skip"
    samples, dropped, bad = [], {"empty": 0, "too_long": 0, "bad": 0}, []
    for offset, raw in enumerate(raws):
        index = first_index + offset
        if not isinstance(raw, dict) or not all(r in raw for r in ROLES):
            raise UserError(f"problem {problem.name}: sample {index} of split {split} is "
                            f"{type(raw).__name__} {str(raw)[:80]!r}; generate_samples must "
                            f"yield dicts with 'inputs' and 'targets'")
        try:
            encoded = {r: getattr(problem, r).encode(raw[r]) for r in ROLES}
        except UserError as error:
            if not skip_bad:
                raise UserError(f"{error} (datagen.on_bad_example=skip skips such examples "
                                f"and counts them)") from None
            dropped["bad"] += 1
            bad.append(f"{split} sample {index}: {error}")
            continue
        lengths = [getattr(problem, r).length(encoded[r]) for r in ROLES]
        limited = [n for r, n in zip(ROLES, lengths, strict=True)
                   if getattr(problem, r).length_limited]
        if any(n == 0 and not getattr(problem, r).may_be_empty
               for r, n in zip(ROLES, lengths, strict=True)):
            dropped["empty"] += 1
        elif max_length is not None and limited and max(limited) > max_length:
            dropped["too_long"] += 1
        else:
            references = raw.get("references")
            samples.append((index, encoded["inputs"], encoded["targets"],
                            json.dumps(list(references)).encode() if references else None))
    _save_chunk(problem, stem, samples, dropped, bad)
    return dropped


def _save_chunk(problem: Problem, stem: Path, samples: list[tuple], dropped: dict[str, int],
                bad: list[str]) -> None:
    buffer = io.BytesIO()
    writer = wds.TarWriter(buffer, user="t2t", group="t2t", mtime=0.0, encoder=False,
                           format=tarfile.USTAR_FORMAT)
    for sample in samples:
        writer.write(_tar_sample(problem, *sample))
    writer.close()
    # Level 1: tar's headers and padding (1 KiB a sample, ~20x a sentence's ids) shrink to
    # less than the pickles chunks once were, at ~15 ms for 1000 sentences.
    data = gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)
    tar, summary = _chunk_files(stem)
    write_atomic(tar, data)
    write_atomic(summary, json.dumps({
        "count": len(samples), "dropped": dropped, "bad": bad, "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}, ensure_ascii=False).encode())


def _tar_sample(problem: Problem, index: int, inputs: bytes, targets: bytes,
                references: bytes | None) -> dict[str, Any]:
    """A sample as shards (and work chunks) hold it; the key is its index in the split."""
    sample = {"__key__": f"{index:09d}", f"inputs.{problem.inputs.extension}": inputs,
              f"targets.{problem.targets.extension}": targets}
    if references is not None:
        sample["references.json"] = references
    return sample


def _chunk_summary(stem: Path) -> dict[str, Any]:
    return _read_json(_chunk_files(stem)[1], "run datagen again (it encodes that chunk again)")


def _load_chunk(stem: Path) -> list[tuple]:
    """A chunk's kept samples, (index, inputs, targets, references or None), in order."""
    tar, _ = _chunk_files(stem)
    expected = _chunk_summary(stem)
    data = tar.read_bytes() if tar.is_file() else b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise UserError(f"{tar}: work chunk corrupt or missing (sha256 {digest[:16]}..., its "
                        f".json says {expected['sha256'][:16]}...); delete both and run datagen "
                        f"again (it encodes that chunk again)")
    samples: list[dict[str, Any]] = []
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, _, field = member.name.partition(".")
            if not samples or samples[-1]["key"] != key:
                samples.append({"key": key, "references": None})
            samples[-1][field.partition(".")[0]] = archive.extractfile(member).read()
    return [(int(s["key"]), s["inputs"], s["targets"], s["references"]) for s in samples]


def _encode_split(
    job: _Job, split: str, folder: Path, pool: ProcessPoolExecutor | None,
    owned: Callable[[int], bool] = lambda index: True,
) -> tuple[list[Path], int]:
    """Stage 1: encode the split chunk by chunk, in parallel; skip chunks already on disk
    and those not `owned` (another slice's). Returns the owned chunks and the number of all."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    problem, chunk_size = job.problem, job.chunk_size
    chunks: list[Path] = []
    pending: list[Future] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"),
               TextColumn("{task.completed} samples"), TimeElapsedColumn())
    console = Console(stderr=True)
    total = read = encoded = 0
    # A live bar on a terminal; elsewhere (a cluster job's log) a plain line every 30 s, and
    # the per-split summary lines.
    reporter = (PeriodicReporter(30.0, job.print_fn)
                if job.progress and not console.is_terminal else None)

    def line() -> str:
        return (f"{problem.name}/{split}: {read:,} samples read, {encoded:,} chunk(s) encoded "
                f"here, elapsed {format_duration(reporter.elapsed)}")

    with Progress(*columns, console=console, transient=True,
                  disable=not (job.progress and console.is_terminal)) as bar:
        task = bar.add_task(f"{problem.name}/{split}", total=None)
        samples = itertools.islice(problem.generate_samples(split),
                                   job.settings.max_samples)
        for chunk_index in itertools.count():
            raws = list(itertools.islice(samples, chunk_size))
            if not raws:
                break
            total += 1
            stem = folder / _chunk_name(split, chunk_index)
            if owned(chunk_index):
                chunks.append(stem)
                if not _chunk_done(stem):
                    encoded += 1
                    args = (split, chunk_index * chunk_size, raws, stem)
                    if pool is None:
                        _encode_chunk(*args)
                    else:
                        pending.append(pool.submit(_encode_chunk, *args))
                        # Bound the raw samples held in memory by the pool's queue.
                        while len(pending) >= 2 * job.workers:
                            pending.pop(0).result()
            bar.advance(task, len(raws))
            read += len(raws)
            if reporter is not None:
                reporter.maybe(line)
        for future in pending:
            future.result()
    return chunks, total


# -- stage 2: shards --------------------------------------------------------------------------


def _write_split(job: _Job, split: str, chunks: list[Path]) -> dict[str, Any]:
    """Deal a split's encoded chunks into shards; its entry in meta.json."""
    dropped, bad, total = {"empty": 0, "too_long": 0, "bad": 0}, [], 0
    for stem in chunks:
        summary = _chunk_summary(stem)
        for reason, count in summary["dropped"].items():
            dropped[reason] += count
        bad += summary["bad"]
        total += summary["count"]
    shards = _write_shards(job.problem, split, chunks, total, job.problem_dir,
                           job.settings.samples_per_shard, job.settings.compress)
    entry = {
        "count": sum(s["count"] for s in shards),
        "dropped": dropped,
        "bad_examples": bad[:100],  # the first reasons, when on_bad_example=skip
        "lengths": f"{split}-lengths.npy",
        "shards": shards,
    }
    job.print_fn(f"{job.name}/{split}: {entry['count']} samples in {len(shards)} shard(s), "
                 f"dropped {dropped}")
    return entry


def _chunk_samples(chunks: list[Path], shuffle: bool) -> Iterator[tuple]:
    """The kept samples chunk by chunk; shuffled (chunk order and within chunks, seeded) for
    training, since sources are often sorted and readers shuffle only within a window."""
    rng = random.Random(0)
    for stem in rng.sample(chunks, len(chunks)) if shuffle else chunks:
        samples = _load_chunk(stem)
        yield from rng.sample(samples, len(samples)) if shuffle else samples


def _write_shards(
    problem: Problem, split: str, chunks: list[Path], total: int, problem_dir: Path,
    samples_per_shard: int, compress: bool,
) -> list[dict[str, Any]]:
    """Stage 2: deal the `total` kept samples, in order, into shards of equal size.

    Tar spends 1 KiB of headers and padding per sample, more than a sentence's ids, so by
    default shards are gzipped (`.tar.gz`; WebDataset reads both). Fixed mtimes in the gzip
    and tar headers make the bytes depend on the samples only.
    """
    if total == 0:
        raise UserError(f"problem {problem.name}: split {split} has no samples left "
                        f"(all empty or longer than max_length)")
    num_shards = max(1, round(total / samples_per_shard))
    sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
    samples = _chunk_samples(chunks, shuffle=split == "train")
    shards, lengths = [], []
    for shard_index, size in enumerate(sizes):
        name = f"{split}-{shard_index:06d}.tar" + (".gz" if compress else "")
        tmp = problem_dir / (name + ".tmp")
        with open(tmp, "wb") as f, (gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="")
                                    if compress else contextlib.nullcontext(f)) as stream:
            writer = wds.TarWriter(stream, user="t2t", group="t2t", mtime=0.0, encoder=False,
                                   format=tarfile.USTAR_FORMAT)
            for sample in itertools.islice(samples, size):
                lengths.append([getattr(problem, r).length(v) for r, v in
                                (("inputs", sample[1]), ("targets", sample[2]))])
                writer.write(_tar_sample(problem, *sample))
            writer.close()
        os.replace(tmp, problem_dir / name)
        path = problem_dir / name
        shards.append({"file": name, "count": size, "bytes": path.stat().st_size,
                       "sha256": sha256_file(path)})
    # Lengths of every sample in shard order: lets each DDP rank plan all ranks' token-budget
    # batches without reading the shards.
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(lengths, dtype=np.int32).reshape(-1, 2))
    write_atomic(problem_dir / f"{split}-lengths.npy", buffer.getvalue())
    return shards
