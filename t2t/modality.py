"""Modality base class: how one kind of data becomes stored bytes, tensors, and back."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from t2t.errors import unknown_name


class Modality:
    """One kind of data (text, image, audio, ...).

    A modality instance belongs to one problem instance (problems copy their class-level
    modalities, see `Problem.__new__`), so `fit` may store a vocabulary on it.

    Life cycle: `fit` (optional, once, on the training split) -> `encode` in datagen ->
    `load` in data workers -> `bottom`/`top` on the device -> `decode` of predictions.
    """

    kind: ClassVar[str] = ""  # short name: "text", "image", ...
    extension: ClassVar[str] = "bin"  # suffix of the stored value inside a shard
    # Whether datagen drops samples longer than max_length (False where `load` scales every
    # value to a bounded size anyway, as images are).
    length_limited: ClassVar[bool] = True
    # Whether samples may share a batch row (data.packed_length): token ids whose bottom
    # embeds each position on its own, so that neighbours in a row do not mix.
    packable: ClassVar[bool] = False

    @property
    def key(self) -> str:
        """Stable identity (kind + options + vocabulary hash): equal keys share weights."""
        raise NotImplementedError

    @property
    def needs_fit(self) -> bool:
        """True when `encode` needs a vocabulary learned from the training split first."""
        return False

    def fit(self, samples: Iterable[Any], vocab_dir: Path) -> Path:
        """Learn a vocabulary from raw training values, save it under vocab_dir, return its path."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to fit")

    def restore(self, vocab_file: Path) -> None:
        """Load the vocabulary that `fit` saved."""
        raise NotImplementedError(f"{type(self).__name__} has no vocabulary to restore")

    def encode(self, raw: Any) -> bytes:
        """Raw value -> the compact bytes stored in a shard."""
        raise NotImplementedError

    def augmentation(self) -> Any:
        """What `load` needs to change training values at random, made once from the run's
        `data.augment.<kind>` settings (keyword-only arguments a subclass declares); None:
        no augmentation."""
        return None

    def load(self, data: bytes, augment: Any = None) -> torch.Tensor:
        """Stored bytes -> tensor; runs in data-loader workers. `augment` is what
        `augmentation` made, for training batches, or None."""
        raise NotImplementedError

    def length(self, data: bytes) -> int:
        """Sequence length the model sees for this stored value (for filtering and bucketing)."""
        return len(self.load(data))

    def decode(self, ids: Any) -> Any:
        """Model output ids -> raw value (only for modalities used as targets)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be a target")

    def collate(self, values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loaded tensors -> one batch tensor and its (B, T) padding mask (True = padding).

        The default right-pads along the first dimension with zeros (PAD for token ids)."""
        lengths = torch.tensor([len(v) for v in values])
        padded = nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=0)
        mask = torch.arange(padded.shape[1])[None, :] >= lengths[:, None]
        return padded, mask

    def bottom(self, d_model: int, **settings: Any) -> nn.Module:
        """Module mapping (batch, padding mask) to ((B, T, d_model) embeddings, (B, T) mask).

        Runs on the device: feature extraction that is a tensor op belongs here. `settings`
        are the model config's `bottoms.<kind>` (keyword arguments a subclass declares)."""
        raise NotImplementedError


def call_with_settings(method: Callable[..., Any], settings: Mapping[str, Any], where: str
                       ) -> Any:
    """`method(**settings)` for a modality's `augmentation` or `bottom`, where a setting it
    does not take is one error line with close matches, not a TypeError."""
    known = [name for name, parameter in inspect.signature(method).parameters.items()
             if parameter.kind is parameter.KEYWORD_ONLY]
    for name in settings:
        if name not in known:
            raise unknown_name("setting", name, known,
                               f"it takes: {', '.join(known) or 'none'}", where=f" in {where}")
    return method(**settings)

    def top(self, d_model: int, bottom: nn.Module) -> nn.Module:
        """Module mapping (B, T, d_model) hidden states to (B, T, vocab) logits; it may share
        weights with this modality's `bottom` (tied embeddings)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short human-readable form for listings, e.g. 'text(sentencepiece 8000)'."""
        return self.kind
