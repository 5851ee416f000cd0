"""Reading rendered text: procedural OCR, no download. For tests and the quickstart."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import numpy as np

from modalities import ImageModality, TextModality
from t2t import Problem, register_problem

ALPHABET = string.ascii_letters + string.digits + " .,-'"
SYLLABLES = ["ka", "to", "ri", "men", "sa", "lo", "ve", "nor", "pi", "da", "qu", "ex", "th",
             "ing", "an", "el", "ou", "st", "re", "wy", "zo", "bu", "fi", "gh"]


def random_text(rng: random.Random, max_chars: int) -> str:
    """A word, a number, or a few mixed-case words, at most max_chars long."""
    kind = rng.choice(["word", "number", "words", "mixed"])
    if kind == "number":
        text = str(rng.randint(0, 10 ** rng.randint(1, 8)))
        if rng.random() < 0.3:
            text = f"{text},{rng.randint(0, 99):02d}"
    else:
        words = []
        for _ in range(1 if kind == "word" else rng.randint(2, 4)):
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
            style = rng.random()
            word = word.upper() if style < 0.15 else word.title() if style < 0.5 else word
            if kind == "mixed" and rng.random() < 0.4:
                word += str(rng.randint(0, 99))
            words.append(word)
        text = " ".join(words) + (rng.choice(".,-'") if rng.random() < 0.2 else "")
    return text[:max_chars].strip() or "a"


def render(text: str, rng: random.Random, height: int) -> np.ndarray:
    """Dark text on a light, noisy background, at a random size, offset and slight rotation."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=rng.randint(int(height * 0.45), int(height * 0.8)))
    left, top, right, bottom = font.getbbox(text)
    margin_x, margin_y = rng.randint(1, 8), rng.randint(1, 6)
    canvas = Image.new("L", (right - left + 2 * margin_x, bottom - top + 2 * margin_y),
                       color=rng.randint(170, 255))
    ImageDraw.Draw(canvas).text((margin_x - left, margin_y - top), text, font=font,
                                fill=rng.randint(0, 90))
    canvas = canvas.rotate(rng.uniform(-3, 3), expand=True, fillcolor=canvas.getpixel((0, 0)))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0, 18),
                                                                pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@register_problem("ocr_rendered_text")
class OcrRenderedText(Problem):
    """Read a rendered line of text: words, numbers, mixed case, with noise and rotation."""

    metrics = ("cer", "exact_match")
    targets_in_input_order = True  # the text reads left to right

    def __init__(self, *, max_chars: int = 16, height: int = 32, train_size: int = 50_000,
                 eval_size: int = 500, seed: int = 1):
        self.max_chars, self.height, self.seed = max_chars, height, seed
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        # Full-height strips 8 pixels wide: the sequence reads along the line. Every one of
        # 500 validation lines has at least the frames CTC needs (labels plus a blank between
        # doubled letters; median 1.7x); narrower strips cost tokens and did worse
        # (benchmarks/results/ocr_rendered_text.md).
        self.inputs = ImageModality(height=height, max_width=16 * height, channels=1,
                                    patch_size=(height, 8), augment=True)
        self.targets = TextModality(vocab="char", alphabet=ALPHABET)

    def generate_samples(self, split: str) -> Iterator[dict]:
        rng = random.Random(f"ocr-{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            text = random_text(rng, self.max_chars)
            yield {"inputs": render(text, rng, self.height), "targets": text}
