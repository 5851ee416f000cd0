"""Shards: the layout datagen writes (`t2t.datagen`), and reading them back.

Layout of `data_dir/<problem>/`:

    meta.json            written last; its presence means the shards are complete
    vocab/               vocabulary files of the modalities that learn one
    train-000000.tar.gz  WebDataset shards (gzipped tar); sample `<key>` holds
    ...                  `<key>.inputs.<ext>` and `<key>.targets.<ext>` as encoded
    train-lengths.npy    (N, 2) int32: inputs and targets length of each sample, shard order
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from t2t.errors import UserError
from t2t.files import sha256_file
from t2t.problem import Problem

ROLES = ("inputs", "targets")


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


def fingerprint(problem: Problem, settings: dict[str, Any]) -> str:
    """Hash of what determines the shards: the problem's and modalities' source, the
    problem options, the datagen settings and the t2t version."""
    import t2t

    digest = hashlib.sha256()
    for path in _source_files(problem):
        digest.update(Path(path).read_bytes())
    options = {k: v for k, v in problem.options.items() if k not in problem.training_options}
    recipe = {"problem": problem.name, "options": options, "settings": settings,
              "version": t2t.__version__}
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def read_meta(problem_dir: Path) -> dict[str, Any]:
    path = Path(problem_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"no shards in {problem_dir} (no meta.json); run "
                        f"`t2t-datagen problem={Path(problem_dir).name} data_dir=...` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: corrupt meta.json ({error.msg}); "
                        f"delete it and run t2t-datagen again") from None


def restore_vocabularies(problem: Problem, problem_dir: Path, meta: dict[str, Any]) -> None:
    """Give the problem's modalities the vocabularies that datagen learned."""
    for role in ROLES:
        vocab = meta["modalities"][role].get("vocab")
        if vocab:
            getattr(problem, role).restore(Path(problem_dir) / vocab)


def shards_intact(problem_dir: Path, meta: dict[str, Any]) -> bool:
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
    actual = sha256_file(path)
    if actual != sha256:
        raise CorruptShardError(
            f"shard {path} is corrupt or truncated (sha256 {actual[:16]}..., meta.json says "
            f"{sha256[:16]}...); delete it and run t2t-datagen again to rebuild it"
        )
    _verified.add((str(path), stat.st_size, stat.st_mtime))


def split_shards(problem_dir: Path, split: str, meta: dict[str, Any] | None = None) -> list[dict]:
    """[{"url": path, "sha256": ..., "count": ...}] for one split, in order."""
    meta = meta or read_meta(problem_dir)
    if split not in meta["splits"]:
        raise UserError(f"problem {meta['problem']} has no split '{split}'; "
                        f"it has: {', '.join(meta['splits'])}")
    return [{"url": str(Path(problem_dir) / s["file"]), "sha256": s["sha256"], "count": s["count"]}
            for s in meta["splits"][split]["shards"]]


class _ShardList(IterableDataset):
    """Pipeline source: shard records (url, sha256, count) rather than bare URLs."""

    def __init__(self, shards: list[dict]):
        self.shards = shards

    def __iter__(self) -> Iterator[dict]:
        return iter([dict(shard) for shard in self.shards])


def _verified_shards(shards: Iterable[dict]) -> Iterator[dict]:
    for shard in shards:
        verify_shard(shard["url"], shard["sha256"])
        yield shard


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
    stages += [_verified_shards, wds.tarfile_to_samples(), _fields]
    return wds.DataPipeline(*stages)


def read_split(problem: Problem, problem_dir: Path, split: str) -> Iterator[dict[str, Any]]:
    """All samples of a split in order, as tensors: {"key", "inputs", "targets"}. For
    evaluation and tests; training uses the DataModule."""
    meta = read_meta(problem_dir)
    restore_vocabularies(problem, problem_dir, meta)
    for sample in shard_pipeline(split_shards(problem_dir, split, meta), split_by_node=False):
        yield {**sample, **{r: getattr(problem, r).load(sample[r]) for r in ROLES}}

