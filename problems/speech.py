"""Bring-your-own speech recognition data: JSONL manifests in the NeMo convention.

    {"audio_filepath": "clips/a.wav", "text": "hello world", "duration": 1.3}

one utterance per line; relative paths resolve against the manifest's folder; `duration` is
optional and unused (lengths come from the audio). Give `manifest=` (a seeded hold-out is the
validation split) or `train_manifest=` with optional `validation_manifest=`/`test_manifest=`.
Audio in any format soundfile reads, at any sample rate (resampled to `sample_rate`).
A missing or unreadable audio file stops datagen with its path; `datagen.on_bad_example=skip`
skips such utterances instead and counts them in meta.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from modalities import AudioModality, TextModality
from problems.text_pairs import read_json_lines
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.problem import holdout


def read_manifest(path: str | Path, audio_key: str = "audio_filepath",
                  text_key: str = "text") -> list[tuple[Path, str]]:
    """(audio path, transcript) per line of a JSONL manifest; a bad line names path:line."""
    path = Path(path)
    records = []
    for number, record in read_json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get(audio_key), str):
            raise UserError(f"{path}:{number}: no '{audio_key}' field")
        if not isinstance(record.get(text_key), str):
            raise UserError(f"{path}:{number}: no '{text_key}' string field")
        records.append((path.parent / record[audio_key], record[text_key]))
    return records


@register_problem("speech_manifest")
class SpeechManifest(Problem):
    """Your own speech: JSONL manifests of audio_filepath and text (the NeMo convention)."""

    metrics = ("wer", "cer")
    targets_in_input_order = True  # words in the order spoken

    def __init__(
        self,
        *,
        manifest: str | None = None,
        train_manifest: str | None = None,
        validation_manifest: str | None = None,
        test_manifest: str | None = None,
        audio_key: str = "audio_filepath",
        text_key: str = "text",
        sample_rate: int = 16000,
        num_mels: int = 80,
        vocab: Literal["char", "sentencepiece", "byte"] = "char",
        vocab_size: int = 1000,
        holdout_size: int = 500,
        seed: int = 1,
    ):
        if manifest and train_manifest:
            raise UserError("speech_manifest: give problem.manifest or problem.train_manifest, "
                            "not both")
        self.manifests = {"train": train_manifest or manifest,
                          "validation": validation_manifest, "test": test_manifest}
        self.keys = (audio_key, text_key)
        self.holdout_size, self.seed = holdout_size, seed
        self.splits = ("train", "validation") + (("test",) if test_manifest else ())
        self.inputs = AudioModality(sample_rate=sample_rate, num_mels=num_mels)
        self.targets = TextModality(vocab=vocab, vocab_size=vocab_size)

    def _records(self, split: str) -> list[tuple[Path, str]]:
        if self.manifests["train"] is None:
            raise UserError("speech_manifest needs problem.manifest=PATH (JSONL lines with "
                            "audio_filepath and text), or problem.train_manifest=PATH")
        if split != "train" and self.manifests.get(split):
            return read_manifest(self.manifests[split], *self.keys)
        if split not in ("train", "validation"):
            raise UserError(f"speech_manifest has no {split} manifest; pass "
                            f"problem.{split}_manifest=PATH")
        records = read_manifest(self.manifests["train"], *self.keys)
        if self.manifests["validation"]:
            return records
        # No validation manifest: validation is a seeded hold-out of the training utterances.
        return holdout(records, split, self.holdout_size, self.seed)

    def generate_samples(self, split: str) -> Iterator[dict]:
        for path, text in self._records(split):
            yield {"inputs": path, "targets": text}
