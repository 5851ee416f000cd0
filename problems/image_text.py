"""Bring-your-own images with text (captions, OCR lines), in the Hugging Face ImageFolder layout:

    raw_dir/metadata.jsonl      {"file_name": "cat.png", "text": "a cat"} per line
    raw_dir/cat.png             ("text" may also be a list of strings: several captions)

or `metadata.csv` with `file_name,text` columns (several rows for one file = several texts).
The training images are in `train/` (laid out as above) or at the top of raw_dir; `validation/`
and `test/` subfolders, laid out the same way, are those splits. Without `validation/`, a
seeded hold-out of the training images is the validation split. Several texts for one
image are several training examples, and several references when evaluating.
A missing or unreadable image stops datagen with its path; `datagen.on_bad_example=skip`
skips such images instead and counts them in meta.json.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from modalities import ImageModality, TextModality
from problems.text_pairs import read_json_lines
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.problem import holdout


def read_metadata(folder: Path, text_column: str = "text") -> list[tuple[Path, list[str]]]:
    """(image path, texts) per image, in file order, from metadata.jsonl or metadata.csv."""
    texts: dict[str, list[str]] = {}
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        for number, record in read_json_lines(jsonl):
            _add(texts, record, text_column, f"{jsonl}:{number}")
    elif table.is_file():
        with open(table, newline="", encoding="utf-8-sig") as f:
            for number, record in enumerate(csv.DictReader(f), start=2):
                _add(texts, record, text_column, f"{table}:{number}")
    else:
        raise UserError(f"{folder}: no metadata.jsonl or metadata.csv (the Hugging Face "
                        f"ImageFolder layout: file_name and {text_column} per image)")
    return [(folder / name, values) for name, values in texts.items()]


def _add(texts: dict[str, list[str]], record: dict, text_column: str, where: str) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
        raise UserError(f"{where}: no 'file_name' field")
    value = record.get(text_column)
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise UserError(f"{where}: '{text_column}' must be a string or a list of strings")
    texts.setdefault(record["file_name"], []).extend(values)


@register_problem("image_text_folder")
class ImageTextFolder(Problem):
    """Your own images with captions or text lines: a folder in the ImageFolder layout."""

    metrics = ("bleu", "cer", "exact_match")

    def __init__(
        self,
        *,
        raw_dir: str | None = None,
        text_column: str = "text",
        vocab: Literal["sentencepiece", "char", "byte"] = "sentencepiece",
        vocab_size: int = 8000,
        height: int = 64,
        max_width: int = 256,
        channels: int = 3,
        patch_size: int = 8,
        holdout_size: int = 500,
        seed: int = 1,
    ):
        self.raw_dir = Path(raw_dir) if raw_dir else None
        self.text_column, self.holdout_size, self.seed = text_column, holdout_size, seed
        self.inputs = ImageModality(height=height, max_width=max_width, channels=channels,
                                    patch_size=patch_size, augment=True)
        self.targets = TextModality(vocab=vocab, vocab_size=vocab_size)
        self.splits = ("train", "validation")
        if self.raw_dir and (self.raw_dir / "test").is_dir():
            self.splits = ("train", "validation", "test")

    def _records(self, split: str) -> list[tuple[Path, list[str]]]:
        if self.raw_dir is None:
            raise UserError("image_text_folder needs problem.raw_dir=FOLDER (images + "
                            "metadata.jsonl with file_name and text)")
        if not self.raw_dir.is_dir():
            raise UserError(f"problem.raw_dir={self.raw_dir}: no such folder")
        if split != "train" and (self.raw_dir / split).is_dir():
            return read_metadata(self.raw_dir / split, self.text_column)
        if split not in ("train", "validation"):
            raise UserError(f"image_text_folder: no {split}/ folder in {self.raw_dir}")
        train = self.raw_dir / "train"
        records = read_metadata(train if train.is_dir() else self.raw_dir, self.text_column)
        if (self.raw_dir / "validation").is_dir():
            return records
        # No validation folder: validation is a seeded hold-out of the training images.
        return holdout(records, split, self.holdout_size, self.seed)

    def generate_samples(self, split: str) -> Iterator[dict]:
        for path, texts in self._records(split):
            if split == "train":
                for text in texts:
                    yield {"inputs": path, "targets": text}
            else:
                yield {"inputs": path, "targets": texts[0], "references": texts}
