"""Morse code by ear: procedural audio, no download. For tests and quick audio runs.

Random groups of letters and digits are keyed as a sine tone (standard timing: dot 1 unit,
dash 3, gaps 1 within a character, 3 between characters, 7 between words) at a random speed,
pitch and loudness, with soft key edges and white noise at a random signal-to-noise ratio.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import numpy as np

from modalities import AudioModality, TextModality
from t2t import Problem, register_problem
from t2t.errors import UserError

CODE = {
    "A": ".-", "B": "-...", "C": "-.-.", "D": "-..", "E": ".", "F": "..-.", "G": "--.",
    "H": "....", "I": "..", "J": ".---", "K": "-.-", "L": ".-..", "M": "--", "N": "-.",
    "O": "---", "P": ".--.", "Q": "--.-", "R": ".-.", "S": "...", "T": "-", "U": "..-",
    "V": "...-", "W": ".--", "X": "-..-", "Y": "-.--", "Z": "--..", "0": "-----",
    "1": ".----", "2": "..---", "3": "...--", "4": "....-", "5": ".....", "6": "-....",
    "7": "--...", "8": "---..", "9": "----.",
}
ALPHABET = string.ascii_uppercase + string.digits


def keying(text: str) -> list[tuple[bool, int]]:
    """(tone on?, units) runs for a text of CODE characters and spaces."""
    runs: list[tuple[bool, int]] = []
    for w, word in enumerate(text.split()):
        if w:
            runs.append((False, 7))
        for c, char in enumerate(word):
            if c:
                runs.append((False, 3))
            for s, symbol in enumerate(CODE[char]):
                if s:
                    runs.append((False, 1))
                runs.append((True, 1 if symbol == "." else 3))
    return runs


def synthesize(text: str, rng: random.Random, sample_rate: int, wpm: float, pitch: float,
               snr_db: float) -> np.ndarray:
    """The keyed tone of `text` at `wpm` words per minute (PARIS timing), with noise."""
    unit = round(sample_rate * 1.2 / wpm)  # samples per dot
    ramp = np.sin(np.linspace(0, np.pi / 2, max(2, sample_rate // 200))) ** 2  # 5 ms edges
    envelope = [np.zeros(rng.randint(unit, 4 * unit))]
    for on, units in keying(text):
        piece = np.full(units * unit, float(on))
        if on:
            piece[: len(ramp)] *= ramp
            piece[-len(ramp):] *= ramp[::-1]
        envelope.append(piece)
    envelope.append(np.zeros(rng.randint(unit, 4 * unit)))
    signal = np.concatenate(envelope)
    time = np.arange(len(signal)) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    tone = signal * np.sin(2 * np.pi * pitch * time + phase) * rng.uniform(0.2, 0.6)
    # Noise power relative to the tone's power while keyed (amplitude^2 / 2).
    tone_power = np.mean(tone[signal > 0.99] ** 2)
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise = noise_rng.standard_normal(len(tone)) * np.sqrt(tone_power / 10 ** (snr_db / 10))
    return np.clip(tone + noise, -1, 1).astype(np.float32)


@register_problem("morse_code")
class MorseCode(Problem):
    """Transcribe Morse code audio: letters and digits at varied speed, pitch and noise.

    alphabet: the characters keyed (a subset of letters and digits); min/max_pitch_hz: the
    tone's pitch range (equal: a fixed pitch, an easier task)."""

    metrics = ("cer", "exact_match")
    targets_in_input_order = True  # letters in the order keyed

    def __init__(self, *, min_chars: int = 1, max_chars: int = 6, min_wpm: float = 18.0,
                 max_wpm: float = 30.0, min_snr_db: float = 5.0, max_snr_db: float = 20.0,
                 min_pitch_hz: float = 400.0, max_pitch_hz: float = 900.0,
                 alphabet: str = ALPHABET, sample_rate: int = 8000, train_size: int = 20_000,
                 eval_size: int = 500, seed: int = 1):
        if not alphabet or not set(alphabet) <= set(ALPHABET):
            raise UserError(f"morse_code: alphabet must be letters A-Z and digits 0-9, got "
                            f"{alphabet!r}")
        if not 0 < min_pitch_hz <= max_pitch_hz < sample_rate / 2:
            raise UserError(f"morse_code: pitches must satisfy 0 < min_pitch_hz <= max_pitch_hz "
                            f"< sample_rate / 2 ({sample_rate / 2:g}), got {min_pitch_hz} and "
                            f"{max_pitch_hz}")
        self.alphabet = "".join(dict.fromkeys(alphabet))  # each character once, in order
        self.chars, self.wpm = (min_chars, max_chars), (min_wpm, max_wpm)
        self.pitch_hz = (min_pitch_hz, max_pitch_hz)
        self.snr_db, self.sample_rate, self.seed = (min_snr_db, max_snr_db), sample_rate, seed
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        # The tone is one loud mel bin: normalising per bin would scale every noise bin up to
        # its loudness, and SpecAugment's masks would erase it or a dot, changing the label.
        self.inputs = AudioModality(sample_rate=sample_rate, num_mels=40, spec_augment=False,
                                    normalize="utterance")
        self.targets = TextModality(vocab="char", alphabet=self.alphabet + " ")

    def generate_samples(self, split: str) -> Iterator[dict]:
        rng = random.Random(f"morse-{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            length = rng.randint(*self.chars)
            text = "".join(rng.choice(self.alphabet) for _ in range(length))
            if length > 3 and rng.random() < 0.5:  # sometimes two words
                cut = rng.randint(1, length - 1)
                text = f"{text[:cut]} {text[cut:]}"
            audio = synthesize(text, rng, self.sample_rate, rng.uniform(*self.wpm),
                               rng.uniform(*self.pitch_hz), rng.uniform(*self.snr_db))
            yield {"inputs": (audio, self.sample_rate), "targets": text}
