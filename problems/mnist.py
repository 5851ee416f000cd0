"""Handwritten digit strings made of real MNIST digits.

Source: the official MNIST IDX files (downloaded when `raw_dir` is not given), or in
`raw_dir` either those IDX files or a CSV (optionally gzipped) of 784 pixel values (28x28,
row-major, 0-255) then the label per row, such as `../shared/datasets/mnist/mnist_4k.csv.gz`.
Every split draws from its own digit images: test digits never appear in training images.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modalities import ImageModality, PixelModality, TextModality
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.files import download
from t2t.metrics import cer
from t2t.problem import resolve_raw_dir

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# The md5 sums the MNIST mirrors publish (torchvision checks the same).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    if data[2] != 0x08 or len(data) != 4 + 4 * dims + int(np.prod(shape)):
        raise UserError(f"{path}: not an MNIST IDX file of unsigned bytes (or truncated)")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels from rows of 784 pixels + label."""
    opener = gzip.open if path.suffix == ".gz" else open
    images, labels = [], []
    with opener(path, "rt") as f:
        for number, line in enumerate(f, start=1):
            fields = line.strip().split(",")
            if not line.strip():
                continue
            if len(fields) != 785:
                raise UserError(f"{path}:{number}: expected 785 values (784 pixels, label), "
                                f"found {len(fields)}")
            try:
                values = [int(v) for v in fields]
            except ValueError:
                raise UserError(f"{path}:{number}: values must be integers") from None
            images.append(values[:784])
            labels.append(values[784])
    return (np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28),
            np.asarray(labels, dtype=np.int64))


@register_problem("mnist_digit_strings")
class MnistDigitStrings(Problem):
    """Read a string of 1-6 handwritten MNIST digits placed side by side."""

    metrics = ("exact_match", "cer")
    targets_in_input_order = True  # digits read left to right

    def __init__(self, *, raw_dir: str | None = None, min_digits: int = 1, max_digits: int = 6,
                 train_size: int = 50_000, eval_size: int = 1000, seed: int = 1):
        self.raw_dir = resolve_raw_dir(raw_dir, "mnist")
        self.min_digits, self.max_digits, self.seed = min_digits, max_digits, seed
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        width = -(-36 * max_digits // 8) * 8  # room for max_digits, in whole 8-pixel patches
        # Full-height strips 8 pixels wide: ~3.5 per digit, a 27-token sequence for 6 digits,
        # a quarter of 8x8 squares' tokens; they also learned far faster
        # (benchmarks/results/mnist_digit_strings.md).
        self.inputs = ImageModality(height=32, max_width=width, channels=1,
                                    patch_size=(32, 8), augment=True)
        self.targets = TextModality(vocab="char", alphabet="0123456789")

    def digits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This split's own digit images and labels (disjoint from the other splits')."""
        csvs = sorted(self.raw_dir.glob("*.csv")) + sorted(self.raw_dir.glob("*.csv.gz"))
        if csvs:
            images, labels = read_csv(csvs[0])
            order = np.random.default_rng(0).permutation(len(labels))
            cut = {"train": (0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}[split]
            chosen = order[int(cut[0] * len(order)): int(cut[1] * len(order))]
            return images[chosen], labels[chosen]
        stem = "t10k" if split == "test" else "train"
        images, labels = (read_idx(self._file(f"{stem}-{kind}-idx{n}-ubyte.gz"))
                          for kind, n in (("images", 3), ("labels", 1)))
        if split != "test":  # the last 10% of the official training set is validation
            cut = int(0.9 * len(labels))
            part = slice(0, cut) if split == "train" else slice(cut, None)
            images, labels = images[part], labels[part]
        return images, labels

    def _file(self, name: str) -> Path:
        path = self.raw_dir / name
        if path.is_file():
            return path
        return download(MNIST_URL + name, path, md5=MNIST_FILES[name],
                        raw_dir_hint="problem.raw_dir=DIR (the MNIST IDX .gz files, or a CSV "
                                     "of 784 pixels + label per row)")

    def generate_samples(self, split: str) -> Iterator[dict]:
        images, labels = self.digits(split)
        rng = random.Random(f"mnist-{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            picks = [rng.randrange(len(labels))
                     for _ in range(rng.randint(self.min_digits, self.max_digits))]
            yield {"inputs": compose([images[i] for i in picks], rng),
                   "targets": "".join(str(int(labels[i])) for i in picks)}


def compose(digits: list[np.ndarray], rng: random.Random) -> np.ndarray:
    """Digits side by side on a 32-pixel-high canvas, with random gaps and vertical jitter."""
    gaps = [rng.randint(-4, 6) for _ in digits]
    width = sum(28 + max(g, 0) for g in gaps) + 8
    canvas = np.zeros((32, width), dtype=np.uint8)
    x = rng.randint(0, 4)
    for digit, gap in zip(digits, gaps, strict=True):
        y = rng.randint(0, 4)
        region = canvas[y:y + 28, x:x + 28]
        np.maximum(region, digit, out=region)  # overlapping strokes stay visible
        x += 28 + gap
    return canvas[:, : max(x + 4, 32)]


@register_problem("draw_digit_strings")
class DrawDigitStrings(MnistDigitStrings):
    """Draw a string of 1-3 handwritten digits: "4 0 7" -> a strip of MNIST digits.

    `reader`: a checkpoint of a model that reads digit strings (`mnist_digit_strings`). With
    it the problem is a t2t.problem.Verifier: a drawing is right when the reader reads the
    digits asked for, and decode.best_of=N draws N and keeps the first it reads back."""

    metrics = ("perplexity",)
    targets_in_input_order = False
    checking_options = ("reader",)

    def __init__(self, *, raw_dir: str | None = None, min_digits: int = 1, max_digits: int = 3,
                 train_size: int = 50_000, eval_size: int = 1000, seed: int = 1,
                 height: int = 16, levels: int = 8, reader: str | None = None):
        super().__init__(raw_dir=raw_dir, min_digits=min_digits, max_digits=max_digits,
                         train_size=train_size, eval_size=eval_size, seed=seed)
        # `compose` makes strips 32 pixels high and at most 34 a digit + 8 wide.
        widest = -(-(34 * max_digits + 8) * height // 32)
        self.inputs = TextModality(vocab="char", alphabet="0123456789 ")
        self.targets = PixelModality(height=height, levels=levels, max_width=widest)
        if reader is not None:
            self.verify = ReadBack(reader)

    def generate_samples(self, split: str) -> Iterator[dict]:
        for sample in super().generate_samples(split):
            yield {"inputs": " ".join(sample["targets"]), "targets": sample["inputs"]}


class ReadBack:
    """A verifier that is a model: `checkpoint`'s digit-string reader reads a drawing
    (greedy); the score is 1 less its character error rate against the digits asked for, so
    1.0 exactly when it reads them all. The reader is loaded on the first drawing."""

    def __init__(self, checkpoint: str):
        if not Path(checkpoint).is_file():
            raise UserError(f"problem.reader={checkpoint}: no such checkpoint; pass one of a "
                            f"model that reads digit strings (t2t-train "
                            f"problem=mnist_digit_strings: RUN/checkpoints/last.ckpt)")
        self.checkpoint = checkpoint
        self._reader: tuple[Any, Any, int] | None = None

    def __call__(self, inputs: str, drawing: np.ndarray) -> float:
        wanted = "".join(inputs.split())
        (read,) = self.read([drawing])
        return max(0.0, 1.0 - cer([read], [wanted]))

    def read(self, drawings: list[np.ndarray]) -> list[str]:
        """What the reader reads in each drawing ("" for one with nothing drawn)."""
        from t2t.inference import decode_raw, load_checkpoint, select_problem

        if self._reader is None:
            model, problems = load_checkpoint(self.checkpoint)
            index = select_problem(problems, "mnist_digit_strings", self.checkpoint)
            self._reader = model, problems[index], index
        model, problem, index = self._reader
        drawn = [i for i, d in enumerate(drawings) if d.shape[1] > 0]
        read = decode_raw(model, problem, index, [drawings[i] for i in drawn], beam_size=1,
                          max_length=2 * problem.max_digits + 2) if drawn else []
        texts = [""] * len(drawings)
        for i, text in zip(drawn, read, strict=True):
            texts[i] = text
        return texts
