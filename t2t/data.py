"""Shards: the layout datagen writes (`t2t.datagen`), and reading them back.

Layout of `data_dir/<problem>/`:

    meta.json            written last; its presence means the shards are complete
    vocab/               vocabulary files of the modalities that learn one
    train-000000.tar.gz  WebDataset shards (gzipped tar); sample `<key>` holds
    ...                  `<key>.inputs.<ext>` and `<key>.targets.<ext>` as encoded
    train-lengths.npy    (N, 2) int32: inputs and targets length of each sample, shard order

A data_dir is a local folder or a URL (`http(s)://`, `s3://`, `gs://`, ... read through
fsspec): training and evaluation stream the shards from it, each checked against its sha256.

The life cycle is the same on every process (Lightning's prepare_data/setup split):
*prepare* writes the shards once (`t2t.datagen.generate`, by the first process of a run or by
`t2t-datagen` beforehand); *setup* (`open_shards`) waits for a meta.json whose fingerprint is
this process's own, then restores the problem's vocabularies from it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import inspect
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from t2t.errors import UserError
from t2t.files import sha256_file
from t2t.problem import Problem

ROLES = ("inputs", "targets")

@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """The datagen settings the shards depend on (their fingerprint covers them); datagen's
    others (workers, progress, chunk_size, num_tasks, task_id) say how the work is done."""

    samples_per_shard: int = 10_000  # all shards of a split but the last hold this many
    max_length: int | None = 256  # longer examples (tokens, per side) are dropped
    compress: bool = True  # .tar.gz, else .tar
    max_samples: int | None = None  # only the first samples of each split
    on_bad_example: str = "error"  # or "skip" (and count) an unreadable example

    def __post_init__(self) -> None:
        if self.on_bad_example not in ("error", "skip"):
            raise UserError(f"datagen.on_bad_example={self.on_bad_example!r}: use error or skip")

    @classmethod
    def of(cls, datagen_options: Mapping[str, Any]) -> ShardSettings:
        """These settings among all of datagen's options (defaults where not given)."""
        return cls(**{field.name: datagen_options[field.name]
                      for field in dataclasses.fields(cls) if field.name in datagen_options})


# -- where shards live: a local folder or a URL -----------------------------------------------


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, name: str) -> str | Path:
    """`location/name`, for a local folder (a Path) or a URL (a string)."""
    if is_url(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location) / name


def read_bytes(location: str | Path) -> bytes:
    """A local file's or a URL's bytes. FileNotFoundError when there is none."""
    if not is_url(location):
        return Path(location).read_bytes()
    import fsspec

    try:
        with fsspec.open(str(location), "rb") as f:
            return f.read()
    except FileNotFoundError as error:
        # fsspec's HTTP file system reports an unreachable server as a missing file too.
        if isinstance(error.__cause__, OSError):
            raise UserError(f"cannot read {location}: {error.__cause__}") from None
        raise
    except ImportError as error:  # s3:// without s3fs, say: fsspec names the package
        raise UserError(f"cannot read {location}: {error}") from None
    except Exception as error:  # refused connection, DNS, permissions: say which and where
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot read {location}: {message}") from None


# -- fingerprint and meta.json ----------------------------------------------------------------


def _source_files(problem: Problem) -> list[str]:
    classes = [*type(problem).__mro__, *(type(getattr(problem, r)) for r in ROLES)]
    files = set()
    for cls in classes:
        if cls is object or cls.__module__ == "builtins":
            continue
        try:
            files.add(inspect.getsourcefile(cls))
        except TypeError:
            continue
    return sorted(f for f in files if f)


def fingerprint(problem: Problem, settings: ShardSettings) -> str:
    """Hash of what determines the shards: the problem's and modalities' source, the
    problem options, the datagen settings and the t2t version."""
    import t2t

    digest = hashlib.sha256()
    for path in _source_files(problem):
        digest.update(Path(path).read_bytes())
    recipe = {"problem": problem.name, "options": problem.options,
              "settings": dataclasses.asdict(settings),
              "version": t2t.__version__}
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def read_meta(problem_dir: str | Path) -> dict[str, Any]:
    meta = _meta_if_present(problem_dir)
    if meta is None:
        name = str(problem_dir).rstrip("/").rpartition("/")[2]
        how = (f"write them with `t2t-datagen problem={name} data_dir=LOCAL_DIR` and copy "
               f"LOCAL_DIR/{name}/ there" if is_url(problem_dir) else
               f"run `t2t-datagen problem={name} data_dir=...` first")
        raise UserError(f"no shards in {problem_dir} (no meta.json); {how}")
    return meta


def _meta_if_present(problem_dir: str | Path) -> dict[str, Any] | None:
    path = join(problem_dir, "meta.json")
    try:
        text = read_bytes(path).decode()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: corrupt meta.json ({error.msg}); "
                        f"delete it and run t2t-datagen again") from None


def restore_vocabularies(problem: Problem, problem_dir: str | Path, meta: dict[str, Any]
                         ) -> None:
    """Give the problem's modalities the vocabularies that datagen learned."""
    for role in ROLES:
        vocab = meta["modalities"][role].get("vocab")
        if not vocab:
            continue
        if not is_url(problem_dir):
            getattr(problem, role).restore(Path(problem_dir) / vocab)
            continue
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / Path(vocab).name
            local.write_bytes(read_bytes(join(problem_dir, vocab)))
            getattr(problem, role).restore(local)


def open_shards(problem: Problem, data_dir: str | Path, datagen_options: Mapping[str, Any], *,
                wait_s: float = 0.0, poll_s: float = 2.0,
                say: Callable[[str], Any] = lambda message: None) -> str | Path:
    """Setup, on every process: where the problem's shards are, once a meta.json with the
    problem's own fingerprint is there (waiting up to `wait_s` for another process or node to
    write it: a stale meta.json does not count), with the problem's vocabularies restored
    from them. One clear error when they do not come."""
    location = join(data_dir, problem.name)
    expected = fingerprint(problem, ShardSettings.of(datagen_options))
    deadline, told = time.monotonic() + wait_s, False
    while True:
        meta = _meta_if_present(location)
        if meta is not None and meta.get("fingerprint") == expected:
            restore_vocabularies(problem, location, meta)
            return location
        if time.monotonic() >= deadline:
            break
        if not told:
            say(f"{problem.name}: waiting up to {wait_s:.0f} s for the shards in {location} "
                f"(fingerprint {expected}) that the first process writes")
            told = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    found = ("no meta.json" if meta is None else
             f"its meta.json has fingerprint {meta.get('fingerprint')}, made with other "
             f"options or code")
    waited = f" after waiting {wait_s:.0f} s" if wait_s else ""
    raise UserError(
        f"no shards of {problem.name} with fingerprint {expected} in {location}{waited} "
        f"({found}); write them with `t2t-datagen` and the same problem and datagen options"
        + ("" if is_url(location) else ", on storage that every node of the run reads"))


def shards_intact(problem_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether every shard of a local problem folder is there with its recorded size."""
    for split in meta["splits"].values():
        for shard in split["shards"]:
            path = problem_dir / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return False
    return True


# -- reading ----------------------------------------------------------------------------------


class CorruptShardError(UserError):
    pass


_verified: set[tuple[str, int, float]] = set()


def verify_shard(path: str | Path, sha256: str) -> None:
    """Raise CorruptShardError naming the file when its sha256 is not the recorded one."""
    path = Path(path)
    if not path.is_file():
        raise CorruptShardError(f"shard {path} is missing; run t2t-datagen again to rebuild it")
    stat = path.stat()
    if (str(path), stat.st_size, stat.st_mtime) in _verified:
        return  # once per process and file version: epochs re-read shards
    _check_sha256(path, sha256_file(path), sha256,
                  "delete it and run t2t-datagen again to rebuild it")
    _verified.add((str(path), stat.st_size, stat.st_mtime))


def _check_sha256(shard: str | Path, actual: str, recorded: str, fix: str) -> None:
    if actual != recorded:
        raise CorruptShardError(f"shard {shard} is corrupt or truncated (sha256 {actual[:16]}..., "
                                f"meta.json says {recorded[:16]}...); {fix}")


def split_shards(problem_dir: str | Path, split: str, meta: dict[str, Any] | None = None
                 ) -> list[dict]:
    """[{"url": path, "sha256": ..., "count": ...}] for one split, in order."""
    meta = meta or read_meta(problem_dir)
    if split not in meta["splits"]:
        raise UserError(f"problem {meta['problem']} has no split '{split}'; "
                        f"it has: {', '.join(meta['splits'])}")
    return [{"url": str(join(problem_dir, s["file"])), "sha256": s["sha256"],
             "count": s["count"]} for s in meta["splits"][split]["shards"]]


class _ShardList(IterableDataset):
    """Pipeline source: shard records (url, sha256, count) rather than bare URLs."""

    def __init__(self, shards: list[dict]):
        self.shards = shards

    def __iter__(self) -> Iterator[dict]:
        return iter([dict(shard) for shard in self.shards])


def _opened_shards(shards: Iterable[dict]) -> Iterator[dict]:
    """{"url", "stream"} of each shard, checked against its sha256 before a sample is read: a
    local file once per process (epochs re-read it), a remote one as it is fetched."""
    for shard in shards:
        url = shard["url"]
        if is_url(url):
            try:
                data = read_bytes(url)
            except FileNotFoundError:
                raise CorruptShardError(f"shard {url} is missing; copy the problem's shards "
                                        f"there again") from None
            _check_sha256(url, hashlib.sha256(data).hexdigest(), shard["sha256"],
                          "copy the problem's shards there again")
            yield {"url": url, "stream": _uncompressed(url, io.BytesIO(data))}
        else:
            verify_shard(url, shard["sha256"])
            with open(url, "rb") as stream:
                yield {"url": url, "stream": _uncompressed(url, stream)}


def _uncompressed(url: str, stream: Any) -> Any:
    # tarfile would decompress a .tar.gz itself, in small pieces: 2.5x slower than gzip's
    # reader on shards of small samples.
    return gzip.GzipFile(fileobj=stream, mode="rb") if url.endswith(".gz") else stream


def _fields(samples: Iterable[dict]) -> Iterator[dict[str, Any]]:
    """WebDataset sample {"__key__", "inputs.ids", ...} -> {"key", "inputs", "targets"} bytes
    (and "references": list of strings, for samples that carry several)."""
    for sample in samples:
        out = {"key": sample["__key__"]}
        for name, value in sample.items():
            role = name.split(".", 1)[0]
            if role in ROLES:
                out[role] = value
            elif role == "references":
                out[role] = json.loads(value)
        yield out


def shard_pipeline(
    shards: list[dict], *, split_by_node: bool = True, split_by_worker: bool = True
) -> wds.DataPipeline:
    """Stream raw samples from shards, each checked against its sha256 before it is read;
    by default split across DDP ranks and data-loader workers."""
    stages: list[Any] = [_ShardList(shards)]
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages += [_opened_shards, wds.tariterators.tar_file_expander,
               wds.tariterators.group_by_keys, _fields]
    return wds.DataPipeline(*stages)


def read_split(problem: Problem, problem_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """All samples of a split in order, as tensors: {"key", "inputs", "targets"}. For
    evaluation and tests; training uses the DataModule."""
    meta = read_meta(problem_dir)
    restore_vocabularies(problem, problem_dir, meta)
    for sample in shard_pipeline(split_shards(problem_dir, split, meta), split_by_node=False):
        yield {**sample, **{r: getattr(problem, r).load(sample[r]) for r in ROLES}}

