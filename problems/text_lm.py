"""Language modelling of your own text (tensor2tensor's languagemodel_* problems): no inputs,
the lines of text files as targets. Perplexity is its metric; t2t-decode samples from it,
from nothing or after a prompt (the start of the text)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from modalities import NoInputs, TextModality
from problems.text_pairs import read_lines
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.problem import holdout


@register_problem("text_lm")
class TextLM(Problem):
    """A language model of your own text files, one sample a line (no inputs)."""

    metrics = ("perplexity",)
    inputs = NoInputs()

    def __init__(
        self,
        *,
        train: Any = None,  # a text file, or a list of them; gzipped or not
        validation: Any = None,
        test: Any = None,
        vocab: Literal["sentencepiece", "char", "byte"] = "sentencepiece",
        vocab_size: int = 8000,
        vocab_file: str | None = None,  # a trained model's vocabulary (see text_pairs)
        holdout_size: int = 1000,
        seed: int = 1,
    ):
        self.files = {"train": train, "validation": validation, "test": test}
        self.holdout_size, self.seed = holdout_size, seed
        self.splits = ("train", "validation") + (("test",) if test else ())
        self.targets = TextModality(vocab=vocab, vocab_size=vocab_size, vocab_file=vocab_file)

    def generate_samples(self, split: str) -> Iterator[dict[str, Any]]:
        if self.files["train"] is None:
            raise UserError("text_lm needs problem.train=PATH (a text file, one sample a line, "
                            "or a list of files)")
        if split in ("train", "validation") and self.files["validation"] is None:
            # No validation file: hold out a seeded sample of the training lines.
            lines = list(self._lines(self.files["train"]))
            yield from holdout(lines, split, self.holdout_size, self.seed)
        elif self.files[split] is not None:
            yield from self._lines(self.files[split])

    @staticmethod
    def _lines(spec: Any) -> Iterator[dict[str, Any]]:
        paths = list(spec) if isinstance(spec, list | tuple) else [spec]
        found = False
        for path in paths:
            for _, text in read_lines(path):
                if text.strip():
                    found = True
                    yield {"inputs": None, "targets": text}
        if not found:
            raise UserError(f"{', '.join(map(str, paths))}: no text (every line is empty); "
                            f"text_lm learns from the non-empty lines")
