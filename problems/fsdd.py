"""Connected spoken digits from the Free Spoken Digit Dataset (FSDD).

FSDD holds single-digit recordings, 8 kHz mono, named `{digit}_{speaker}_{take}.wav` (50
takes of each digit by each speaker). An utterance here is 1-7 recordings of ONE speaker
joined with short random pauses; its target is the digits as words ("four two seven").

Splits: the `test_speakers` are held out entirely (a speaker-independent test); of the other
speakers, takes 0-44 make the training utterances and takes 45-49 the validation ones, so no
recording is in two splits. Source: the repository archive (downloaded when `raw_dir` is not
given), or `raw_dir` holding the WAV files anywhere below it (e.g. `recordings/`).
"""

from __future__ import annotations

import random
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modalities import AudioModality, TextModality
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.files import download
from t2t.problem import resolve_raw_dir

FSDD_URL = ("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/"
            "master.zip")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RECORDING = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")
VALIDATION_TAKES = range(45, 50)
SAMPLE_RATE = 8000


def read_recordings(raw_dir: Path) -> dict[tuple[str, int], list[tuple[int, np.ndarray]]]:
    """(speaker, digit) -> [(take, waveform)], from every FSDD-named WAV file below raw_dir."""
    import soundfile

    recordings: dict[tuple[str, int], list[tuple[int, np.ndarray]]] = {}
    for path in sorted(raw_dir.rglob("*.wav")):
        match = RECORDING.fullmatch(path.name)
        if not match:
            continue
        try:
            waveform, rate = soundfile.read(path, dtype="float32")
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise UserError(f"{path}: not a readable WAV file ({error})") from None
        if rate != SAMPLE_RATE or waveform.ndim != 1:
            raise UserError(f"{path}: expected 8 kHz mono like every FSDD recording, got "
                            f"{rate} Hz with shape {waveform.shape}")
        digit, speaker, take = int(match[1]), match[2], int(match[3])
        recordings.setdefault((speaker, digit), []).append((take, waveform))
    return recordings


@register_problem("spoken_digits_fsdd")
class SpokenDigitsFsdd(Problem):
    """Connected spoken digits: 1-7 FSDD recordings of one speaker -> the digits as words."""

    metrics = ("wer", "cer", "exact_match")
    targets_in_input_order = True  # words in the order spoken

    def __init__(self, *, raw_dir: str | None = None, test_speakers: list[str] = ("george",),
                 min_digits: int = 1, max_digits: int = 7, train_size: int = 20_000,
                 eval_size: int = 500, seed: int = 1):
        self.raw_dir = resolve_raw_dir(raw_dir, "fsdd")
        self.test_speakers = list(test_speakers)
        self.min_digits, self.max_digits, self.seed = min_digits, max_digits, seed
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        # Its few training speakers are few voices: experiment=spoken_digits_fsdd makes more
        # by speed perturbation (data.augment.audio), for the held-out speaker's sake.
        self.inputs = AudioModality(sample_rate=SAMPLE_RATE, num_mels=40)
        self.targets = TextModality(vocab="char", alphabet="".join(WORDS) + " ")
        self._recordings: dict | None = None

    def recordings(self) -> dict[tuple[str, int], list[tuple[int, np.ndarray]]]:
        if self._recordings is None:
            if not any(self.raw_dir.rglob("*.wav")):
                self._download()
            self._recordings = read_recordings(self.raw_dir)
            speakers = {speaker for speaker, _ in self._recordings}
            unknown = set(self.test_speakers) - speakers
            if unknown or not speakers - set(self.test_speakers):
                raise UserError(f"spoken_digits_fsdd: test_speakers {self.test_speakers} must "
                                f"be some, not all, of the speakers in {self.raw_dir}: "
                                f"{', '.join(sorted(speakers))}")
        return self._recordings

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_recordings": None}  # datagen workers need no copy

    def _download(self) -> None:
        archive = download(FSDD_URL, self.raw_dir / "fsdd.zip",
                           raw_dir_hint="problem.raw_dir=DIR (a folder with the FSDD "
                                        "recordings/*.wav)")
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.namelist() if RECORDING.fullmatch(Path(m).name)]
            zipped.extractall(self.raw_dir, members)

    def _pool(self, split: str) -> dict[str, dict[int, list[np.ndarray]]]:
        """speaker -> digit -> this split's recordings."""
        pool: dict[str, dict[int, list[np.ndarray]]] = {}
        for (speaker, digit), takes in sorted(self.recordings().items()):
            if (speaker in self.test_speakers) != (split == "test"):
                continue
            chosen = [w for take, w in takes
                      if split == "test" or (take in VALIDATION_TAKES) == (split == "validation")]
            if chosen:
                pool.setdefault(speaker, {})[digit] = chosen
        return pool

    def generate_samples(self, split: str) -> Iterator[dict]:
        pool = self._pool(split)
        rng = random.Random(f"fsdd-{self.seed}-{split}")
        speakers = sorted(pool)
        for _ in range(self.sizes[split]):
            takes = pool[rng.choice(speakers)]
            digits = [rng.choice(sorted(takes)) for _ in range(rng.randint(self.min_digits,
                                                                            self.max_digits))]
            pieces = [np.zeros(int(SAMPLE_RATE * rng.uniform(0.05, 0.2)), np.float32)]
            for digit in digits:
                pieces += [rng.choice(takes[digit]),
                           np.zeros(int(SAMPLE_RATE * rng.uniform(0.05, 0.3)), np.float32)]
            yield {"inputs": (np.concatenate(pieces), SAMPLE_RATE),
                   "targets": " ".join(WORDS[d] for d in digits)}
