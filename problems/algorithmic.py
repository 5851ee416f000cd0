"""Algorithmic problems: procedural, no download, exact answers. For tests and the quickstart.

Symbols are characters ("0123456789abc..."), so inputs and targets are short strings with a
character vocabulary: "3719" -> copy "3719", reverse "9173", sort "1379"; "123+45" -> "168".
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

from modalities import TextModality
from t2t import Problem, register_problem
from t2t.errors import UserError

SYMBOLS = string.digits + string.ascii_lowercase + string.ascii_uppercase


class AlgorithmicProblem(Problem):
    """Base for the symbol-sequence problems: shared options and sampling."""

    splits = ("train", "validation", "test")
    metrics = ("exact_match", "cer")

    def __init__(
        self,
        *,
        num_symbols: int = 10,
        min_length: int = 1,
        max_length: int = 20,
        train_size: int = 20_000,
        eval_size: int = 500,
        seed: int = 1,
    ):
        if not 2 <= num_symbols <= len(SYMBOLS):
            raise UserError(f"num_symbols must be in 2..{len(SYMBOLS)}, got {num_symbols}")
        if not 1 <= min_length <= max_length:
            raise UserError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        self.symbols = SYMBOLS[:num_symbols]
        self.min_length, self.max_length = min_length, max_length
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        self.seed = seed
        # One vocabulary for both sides: the symbols are the same.
        self.inputs = self.targets = TextModality(vocab="char", alphabet=self.alphabet())

    def alphabet(self) -> str:
        return self.symbols

    def generate_samples(self, split: str) -> Iterator[dict[str, str]]:
        rng = random.Random(f"{self.name}-{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            length = rng.randint(self.min_length, self.max_length)
            sequence = "".join(rng.choice(self.symbols) for _ in range(length))
            yield {"inputs": sequence, "targets": self.solve(sequence)}

    def solve(self, sequence: str) -> str:
        raise NotImplementedError


@register_problem("algorithmic_copy")
class AlgorithmicCopy(AlgorithmicProblem):
    """Copy a sequence of symbols."""

    def solve(self, sequence: str) -> str:
        return sequence


@register_problem("algorithmic_reverse")
class AlgorithmicReverse(AlgorithmicProblem):
    """Reverse a sequence of symbols."""

    def solve(self, sequence: str) -> str:
        return sequence[::-1]


@register_problem("algorithmic_sort")
class AlgorithmicSort(AlgorithmicProblem):
    """Sort a sequence of symbols."""

    def solve(self, sequence: str) -> str:
        return "".join(sorted(sequence, key=self.symbols.index))


@register_problem("algorithmic_addition")
class AlgorithmicAddition(AlgorithmicProblem):
    """Add two multi-digit numbers written in base num_symbols: '123+45' -> '168'."""

    def alphabet(self) -> str:
        return self.symbols + "+"

    def generate_samples(self, split: str) -> Iterator[dict[str, str]]:
        rng = random.Random(f"{self.name}-{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            a, b = (self._number(rng) for _ in range(2))
            yield {"inputs": f"{a}+{b}", "targets": self.solve(f"{a}+{b}")}

    def _number(self, rng: random.Random) -> str:
        digits = [rng.choice(self.symbols) for _ in range(rng.randint(self.min_length,
                                                                       self.max_length))]
        return "".join(digits).lstrip(self.symbols[0]) or self.symbols[0]

    def solve(self, sequence: str) -> str:
        total = sum(self._parse(number) for number in sequence.split("+"))
        out = ""
        while True:
            total, digit = divmod(total, len(self.symbols))
            out = self.symbols[digit] + out
            if total == 0:
                return out

    def _parse(self, number: str) -> int:
        value = 0
        for ch in number:
            value = value * len(self.symbols) + self.symbols.index(ch)
        return value
