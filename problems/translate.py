"""Translation on public corpora."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from modalities import TextModality
from problems.text_pairs import read_aligned
from t2t import Problem, register_problem
from t2t.files import download
from t2t.problem import resolve_raw_dir

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"
# File stems per split and the sha256 of each gzipped file (multi30k/dataset, task1 raw).
MULTI30K_FILES = {
    "train": "train",
    "validation": "val",
    "test": "test_2016_flickr",
}
MULTI30K_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}


@register_problem("translate_deen_multi30k")
class TranslateDeenMulti30k(Problem):
    """Multi30k task 1 German->English image captions (direction=en-de for the reverse)."""

    metrics = ("bleu", "chrf")

    def __init__(
        self,
        *,
        raw_dir: str | None = None,  # folder with the .gz files; downloaded when not given
        direction: Literal["de-en", "en-de"] = "de-en",
        vocab_size: int = 8000,
    ):
        self.raw_dir = resolve_raw_dir(raw_dir, "multi30k")
        self.source, self.target = direction.split("-")
        # One joint subword vocabulary for both languages, as tensor2tensor did.
        self.inputs = self.targets = TextModality(vocab="sentencepiece", vocab_size=vocab_size)

    def generate_samples(self, split: str) -> Iterator[dict[str, str]]:
        stem = MULTI30K_FILES[split]
        source, target = (self._file(f"{stem}.{lang}.gz") for lang in (self.source, self.target))
        yield from read_aligned(source, target)

    def _file(self, name: str):
        path = self.raw_dir / name
        if path.is_file():
            return path
        return download(MULTI30K_URL + name, path, sha256=MULTI30K_SHA256[name],
                        raw_dir_hint="problem.raw_dir=DIR (a folder holding the Multi30k "
                                     f"task1 raw files, e.g. {name})")
