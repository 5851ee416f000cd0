"""Datagen: a problem's raw samples -> WebDataset shards under data_dir/<problem>/.

Datagen runs in two stages. (1) The raw samples of a split are cut into chunks of
`chunk_size`; worker processes encode each chunk and save it under .work/ (a killed run
replays the problem's deterministic generator and skips finished chunks). (2) The kept
samples are dealt into shards of equal size (counts differ by at most one) so that every
DDP rank sees the same number of samples; the training split is shuffled on the way (seeded).
Shards are deterministic tar files (fixed mtime and owner), written under a temporary name
and renamed when complete. The layout is described in `t2t.data`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import itertools
import json
import os
import pickle
import random
import shutil
import tarfile
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from t2t.data import ROLES, fingerprint, read_meta, restore_vocabularies, shards_intact
from t2t.errors import UserError
from t2t.files import sha256_file, write_atomic
from t2t.modality import Modality
from t2t.problem import Problem


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
) -> Path:
    """Write the shards of every split of `problem` under data_dir/<problem.name>/.

    Does nothing when shards with the same fingerprint exist; resumes an interrupted run.
    max_samples keeps only the first samples of each split (for smoke tests).
    Returns the problem directory. The problem's modalities hold their vocabularies after.
    """
    if on_bad_example not in ("error", "skip"):
        raise UserError(f"datagen.on_bad_example={on_bad_example!r}: use error or skip")
    problem_dir = Path(data_dir) / problem.name
    print_fn = _printer(progress)
    with _exclusive(problem_dir, print_fn):
        return _generate(problem, problem_dir, samples_per_shard=samples_per_shard,
                         chunk_size=chunk_size, max_length=max_length, compress=compress,
                         max_samples=max_samples, on_bad_example=on_bad_example,
                         workers=workers, progress=progress, print_fn=print_fn)


@contextlib.contextmanager
def _exclusive(problem_dir: Path, print_fn):
    """One datagen per problem directory at a time, across processes: a second run (a sweep
    launched in parallel, another rank) waits, then finds the shards up to date. Without it
    both wrote the same scratch files and one crashed on the other's rename."""
    problem_dir.mkdir(parents=True, exist_ok=True)
    # "a": a no-op run touches nothing. Closing the file releases the lock, error or not.
    with open(problem_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print_fn(f"{problem_dir}: another datagen is writing here; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _generate(problem: Problem, problem_dir: Path, *, samples_per_shard: int, chunk_size: int,
              max_length: int | None, compress: bool, max_samples: int | None,
              on_bad_example: str, workers: int, progress: bool, print_fn) -> Path:
    settings = {"samples_per_shard": samples_per_shard, "max_length": max_length,
                "compress": compress, "max_samples": max_samples,
                "on_bad_example": on_bad_example}
    fp = fingerprint(problem, settings)

    if (problem_dir / "meta.json").is_file():
        meta = read_meta(problem_dir)
        if meta.get("fingerprint") == fp and shards_intact(problem_dir, meta):
            restore_vocabularies(problem, problem_dir, meta)
            print_fn(f"{problem.name}: shards in {problem_dir} are up to date ({fp})")
            return problem_dir
        print_fn(f"{problem.name}: fingerprint changed or shards missing; regenerating")
        _remove_outputs(problem_dir)

    work = problem_dir / ".work"
    recipe = f"{fp} chunk_size={chunk_size}"  # chunk files are only valid for one chunk size
    if (work / "fingerprint").is_file() and (work / "fingerprint").read_text() != recipe:
        shutil.rmtree(work)  # scratch of a different recipe: useless
    work.mkdir(parents=True, exist_ok=True)
    (work / "fingerprint").write_text(recipe)

    vocab_files = _fit_vocabularies(problem, problem_dir, work, max_samples, print_fn)
    meta: dict[str, Any] = {
        "problem": problem.name,
        "options": problem.options,
        "fingerprint": fp,
        "settings": settings,
        "modalities": {
            role: {"key": getattr(problem, role).key, "kind": getattr(problem, role).kind,
                   "describe": getattr(problem, role).describe(),
                   "extension": getattr(problem, role).extension,
                   "vocab": vocab_files.get(role)}
            for role in ROLES
        },
        "splits": {},
    }
    worker_args = (problem, max_length, on_bad_example)
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=worker_args
                               ) if workers > 1 else None
    if pool is None:
        _init_worker(*worker_args)
    try:
        for split in problem.splits:
            chunks, dropped, bad = _encode_split(problem, split, work, chunk_size, max_samples,
                                                 pool, workers, progress)
            shards = _write_shards(problem, split, chunks, problem_dir, samples_per_shard,
                                   compress)
            meta["splits"][split] = {
                "count": sum(s["count"] for s in shards),
                "dropped": dropped,
                "bad_examples": bad[:100],  # the first reasons, when on_bad_example=skip
                "lengths": f"{split}-lengths.npy",
                "shards": shards,
            }
            print_fn(f"{problem.name}/{split}: {meta['splits'][split]['count']} samples in "
                     f"{len(shards)} shard(s), dropped {dropped}")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_atomic(problem_dir / "meta.json",
                 json.dumps(meta, indent=2, default=str, ensure_ascii=False).encode())
    shutil.rmtree(work)
    return problem_dir


def _printer(enabled: bool):
    if not enabled:
        return lambda message: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True)


def _remove_outputs(problem_dir: Path) -> None:
    (problem_dir / "meta.json").unlink(missing_ok=True)
    for output in problem_dir.glob("*-*.*"):  # shards and length files
        output.unlink()
    shutil.rmtree(problem_dir / "vocab", ignore_errors=True)


def _fit_vocabularies(
    problem: Problem, problem_dir: Path, work: Path, max_samples: int | None, print_fn
) -> dict:
    """Fit each modality that needs a vocabulary on the training split; reuse a saved one.

    A modality serving both roles (a joint vocabulary) is fitted once on both sides.
    """
    record_path = work / "vocab.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    files: dict[str, str] = {}
    for role in ROLES:
        modality: Modality = getattr(problem, role)
        roles = [r for r in ROLES if getattr(problem, r) is modality]
        if role in record:
            modality.restore(problem_dir / record[role])
        elif modality.needs_fit:
            print_fn(f"{problem.name}: learning the {'+'.join(roles)} vocabulary "
                     f"({modality.describe()}) from the training split")
            samples = itertools.islice(problem.generate_samples("train"), max_samples)
            values = (sample[r] for sample in samples for r in roles)
            path = modality.fit(values, problem_dir / "vocab")
            for r in roles:
                record[r] = str(path.relative_to(problem_dir))
            write_atomic(record_path, json.dumps(record).encode())
        if role in record:
            files[role] = record[role]
    return files


# Worker-side state: set once per process by the pool initializer (or in-process).
_worker: dict[str, Any] = {}


def _init_worker(problem: Problem, max_length: int | None, on_bad_example: str) -> None:
    _worker.update(problem=problem, max_length=max_length, on_bad_example=on_bad_example)


def _encode_chunk(split: str, first_index: int, raws: list[dict], path: Path) -> dict[str, int]:
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
        if min(lengths) == 0:
            dropped["empty"] += 1
        elif max_length is not None and limited and max(limited) > max_length:
            dropped["too_long"] += 1
        else:
            references = raw.get("references")
            samples.append((index, encoded["inputs"], encoded["targets"],
                            json.dumps(list(references)).encode() if references else None))
    write_atomic(path, pickle.dumps({"samples": samples, "dropped": dropped, "bad": bad}))
    return dropped


def _encode_split(
    problem: Problem, split: str, work: Path, chunk_size: int, max_samples: int | None,
    pool: ProcessPoolExecutor | None, workers: int, progress: bool,
) -> tuple[list[Path], dict[str, int], list[str]]:
    """Stage 1: encode the split chunk by chunk, in parallel; skip chunks already on disk."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    chunks: list[Path] = []
    pending: list[Future] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"),
               TextColumn("{task.completed} samples"), TimeElapsedColumn())
    console = Console(stderr=True)
    # A live bar only on a terminal; logs get the per-split summary lines instead.
    with Progress(*columns, console=console, transient=True,
                  disable=not (progress and console.is_terminal)) as bar:
        task = bar.add_task(f"{problem.name}/{split}", total=None)
        samples = itertools.islice(problem.generate_samples(split), max_samples)
        for chunk_index in itertools.count():
            raws = list(itertools.islice(samples, chunk_size))
            if not raws:
                break
            path = work / f"{split}-{chunk_index:06d}.pkl"
            chunks.append(path)
            if not path.is_file():
                args = (split, chunk_index * chunk_size, raws, path)
                if pool is None:
                    _encode_chunk(*args)
                else:
                    pending.append(pool.submit(_encode_chunk, *args))
                    # Bound the raw samples held in memory by the pool's queue.
                    while len(pending) >= 2 * workers:
                        pending.pop(0).result()
            bar.advance(task, len(raws))
        for future in pending:
            future.result()
    dropped, bad = {"empty": 0, "too_long": 0, "bad": 0}, []
    for path in chunks:
        chunk = pickle.loads(path.read_bytes())
        for reason, count in chunk["dropped"].items():
            dropped[reason] += count
        bad += chunk["bad"]
    return chunks, dropped, bad


def _chunk_samples(chunks: list[Path], shuffle: bool) -> Iterator[tuple]:
    """The kept samples chunk by chunk; shuffled (chunk order and within chunks, seeded) for
    training, since sources are often sorted and readers shuffle only within a window."""
    rng = random.Random(0)
    for path in rng.sample(chunks, len(chunks)) if shuffle else chunks:
        samples = pickle.loads(path.read_bytes())["samples"]
        yield from rng.sample(samples, len(samples)) if shuffle else samples


def _write_shards(
    problem: Problem, split: str, chunks: list[Path], problem_dir: Path, samples_per_shard: int,
    compress: bool,
) -> list[dict[str, Any]]:
    """Stage 2: deal the kept samples, in order, into shards of equal size.

    Tar spends 1 KiB of headers and padding per sample, more than a sentence's ids, so by
    default shards are gzipped (`.tar.gz`; WebDataset reads both). Fixed mtimes in the gzip
    and tar headers make the bytes depend on the samples only.
    """
    total = sum(len(pickle.loads(p.read_bytes())["samples"]) for p in chunks)
    if total == 0:
        raise UserError(f"problem {problem.name}: split {split} has no samples left "
                        f"(all empty or longer than max_length)")
    num_shards = max(1, round(total / samples_per_shard))
    sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
    extensions = {r: getattr(problem, r).extension for r in ROLES}
    samples = _chunk_samples(chunks, shuffle=split == "train")
    shards, lengths = [], []
    for shard_index, size in enumerate(sizes):
        name = f"{split}-{shard_index:06d}.tar" + (".gz" if compress else "")
        tmp = problem_dir / (name + ".tmp")
        with open(tmp, "wb") as f, (gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="")
                                    if compress else contextlib.nullcontext(f)) as stream:
            writer = wds.TarWriter(stream, user="t2t", group="t2t", mtime=0.0, encoder=False,
                                   format=tarfile.USTAR_FORMAT)
            for index, inputs, targets, references in itertools.islice(samples, size):
                lengths.append([getattr(problem, r).length(v) for r, v in
                                (("inputs", inputs), ("targets", targets))])
                sample = {"__key__": f"{index:09d}", f"inputs.{extensions['inputs']}": inputs,
                          f"targets.{extensions['targets']}": targets}
                if references is not None:
                    sample["references.json"] = references
                writer.write(sample)
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


