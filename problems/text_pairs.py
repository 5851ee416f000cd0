"""Bring-your-own parallel text, and the readers other text problems share.

Each split is given as one of:
  - a TSV file: source in the first column, target in the second; a first line that is
    exactly `<source_key><TAB><target_key>` is a header and skipped;
  - a JSONL file: one object per line with `source_key` and `target_key` fields;
  - two aligned plain-text files, as a list `[source_file, target_file]`, one sentence a line.
Any of them may be gzipped (`.gz`). Without a validation file, a seeded hold-out of the
training pairs is the validation split.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from modalities import TextModality
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.problem import holdout


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) of a UTF-8 text file, gzipped or not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")  # BOM: Excel
            except UnicodeDecodeError as error:
                raise UserError(f"{path}:{number}: not UTF-8 ({error.reason} at byte "
                                f"{error.start}); convert the file to UTF-8") from None
            yield number, text.rstrip("\r\n")


def read_aligned(source: str | Path, target: str | Path) -> Iterator[dict[str, str]]:
    """Pairs from two files with one sentence per line; their line counts must agree."""
    for _, (_, src), (_, tgt) in _zip_counted(read_lines(source), read_lines(target), source,
                                              target):
        yield {"inputs": src, "targets": tgt}


def _zip_counted(sources, targets, source_path, target_path):
    count = 0
    while True:
        src, tgt = next(sources, None), next(targets, None)
        if src is None and tgt is None:
            return
        if src is None or tgt is None:
            longer, shorter = (target_path, source_path) if src is None else (source_path,
                                                                               target_path)
            raise UserError(f"{longer}:{count + 1}: has more lines than {shorter} ({count}); "
                            f"aligned files need one sentence per line on both sides")
        count += 1
        yield count, src, tgt


def read_tsv(path: str | Path, header: tuple[str, str]) -> Iterator[dict[str, str]]:
    for number, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and tuple(fields[:2]) == header:
            continue
        if len(fields) < 2:
            raise UserError(f"{path}:{number}: expected source<TAB>target, found "
                            f"{len(fields)} column(s): {line[:60]!r}")
        yield {"inputs": fields[0], "targets": fields[1]}


def read_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL file; invalid JSON stops
    with the file's path and line."""
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: invalid JSON ({error.msg})") from None


def read_jsonl(path: str | Path, source_key: str, target_key: str) -> Iterator[dict[str, str]]:
    for number, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object")
        for key in (source_key, target_key):
            if not isinstance(record.get(key), str):
                raise UserError(f"{path}:{number}: no string field '{key}' "
                                f"(fields: {', '.join(record) or 'none'})")
        yield {"inputs": record[source_key], "targets": record[target_key]}


def read_pairs(spec: Any, source_key: str, target_key: str) -> Iterator[dict[str, str]]:
    """Pairs from a split spec: a .tsv/.jsonl path, or [source_file, target_file]."""
    if isinstance(spec, list | tuple):
        if len(spec) != 2:
            raise UserError(f"a split given as a list needs two aligned files, got {list(spec)}")
        return read_aligned(*spec)
    name = str(spec).removesuffix(".gz")
    if name.endswith(".tsv"):
        return read_tsv(spec, (source_key, target_key))
    if name.endswith((".jsonl", ".json")):
        return read_jsonl(spec, source_key, target_key)
    raise UserError(f"{spec}: unknown format; give a .tsv or .jsonl file (optionally .gz), "
                    f"or two aligned files as [source_file, target_file]")


@register_problem("text_pairs")
class TextPairs(Problem):
    """Your own parallel text: a TSV or JSONL file, or two aligned files, per split."""

    metrics = ("bleu", "chrf")

    def __init__(
        self,
        *,
        train: Any = None,  # str path, or [source_file, target_file]
        validation: Any = None,
        test: Any = None,
        source_key: str = "source",
        target_key: str = "target",
        vocab: Literal["sentencepiece", "char", "byte"] = "sentencepiece",
        vocab_size: int = 8000,
        shared_vocab: bool = True,
        vocab_file: str | None = None,  # a trained model's vocabulary: its .ckpt (fine-tuning)
        holdout_size: int = 1000,
        seed: int = 1,
    ):
        self.files = {"train": train, "validation": validation, "test": test}
        self.keys = (source_key, target_key)
        self.holdout_size, self.seed = holdout_size, seed
        self.splits = ("train", "validation") + (("test",) if test else ())
        text = {"vocab": vocab, "vocab_size": vocab_size, "vocab_file": vocab_file}
        self.inputs = TextModality(**text)
        self.targets = self.inputs if shared_vocab else TextModality(**text)

    def generate_samples(self, split: str) -> Iterator[dict[str, str]]:
        if self.files["train"] is None:
            raise UserError("text_pairs needs problem.train=PATH (a .tsv or .jsonl file, or "
                            "[source_file,target_file])")
        if split in ("train", "validation") and self.files["validation"] is None:
            # No validation file: hold out a seeded sample of the training pairs.
            pairs = list(read_pairs(self.files["train"], *self.keys))
            yield from holdout(pairs, split, self.holdout_size, self.seed)
        elif self.files[split] is not None:
            yield from read_pairs(self.files[split], *self.keys)
