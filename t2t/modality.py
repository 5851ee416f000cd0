"""Modality base class: how one kind of data becomes stored bytes, tensors, and back."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from t2t.errors import UserError, unknown_name


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
    # Suffixes of the files a raw input may be (media): t2t-decode then takes files, folders
    # and lists of them; none: a raw input is a line of text.
    file_suffixes: ClassVar[tuple[str, ...]] = ()
    # Whether a value of length 0 is a sample like any other (a problem without inputs);
    # otherwise datagen drops and counts it as empty.
    may_be_empty: ClassVar[bool] = False
    # The most tokens a target of this modality has, where the modality bounds it (a picture:
    # height x max_width): decoding then stops there by default (decode.max_length=null).
    longest_target: int | None = None

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


    def top(self, d_model: int, bottom: nn.Module) -> nn.Module:
        """Module mapping (B, T, d_model) hidden states to (B, T, vocab) logits; it may share
        weights with this modality's `bottom` (tied embeddings)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short human-readable form for listings, e.g. 'text(sentencepiece 8000)'."""
        return self.kind


@runtime_checkable
class ProjectsLinearly(Protocol):
    """A top (`Modality.top`'s module) whose logits are hidden @ weight.T and nothing else:
    the training loss then fuses the projection with its cross-entropy (t2t.losses)."""

    weight: torch.Tensor  # (V, C)


@runtime_checkable
class SavesPredictions(Protocol):
    """A target modality whose predictions are files (a picture): t2t-decode writes each one
    and prints its path."""

    output_suffix: str  # e.g. ".png"

    def save(self, value: Any, path: Path) -> None:
        """Write a decoded prediction to `path`."""
        ...


@runtime_checkable
class ConstrainsOutput(Protocol):
    """A target modality whose outputs have a shape of their own (a picture ends only after a
    whole column): every decoding of it keeps to `output_constraint`, as to a problem's
    t2t.problem.ConstrainedDecoding."""

    def output_constraint(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`allowed(prefix) -> mask`: for (N, step) tokens so far, the (N, vocab_size) bool
        mask of the tokens that may come next (see t2t.decoding)."""
        ...


def call_with_settings(method: Callable[..., Any], settings: Mapping[str, Any], where: str,
                       *args: Any) -> Any:
    """`method(*args, **settings)` for a modality's `augmentation` or `bottom`, where a
    setting it does not take, or a value of the wrong type, is one error line, not a
    TypeError."""
    parameters = {name: parameter for name, parameter in inspect.signature(method).parameters
                  .items() if parameter.kind is parameter.KEYWORD_ONLY}
    hints = typing.get_type_hints(method)
    for name, value in settings.items():
        if name not in parameters:
            raise unknown_name("setting", name, parameters,
                               f"it takes: {', '.join(parameters) or 'none'}",
                               where=f" in {where}")
        if not _fits(value, hints.get(name, Any)):
            raise UserError(f"{where}.{name}={value!r}: expected {_type_name(hints[name])}")
    return method(*args, **settings)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a config value has the type a setting declares (ints pass as floats; the
    types settings use: numbers, booleans, strings, sequences of them, optional ones)."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return (isinstance(value, Sequence) and not isinstance(value, str)
                and all(_fits(item, args[0] if args else Any) for item in value))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_name(annotation: Any) -> str:
    args = [_type_name(arg) for arg in typing.get_args(annotation)]
    if typing.get_origin(annotation) in (list, tuple, collections.abc.Sequence):
        return f"a list of {args[0]}" if args else "a list"
    if args:
        return " or ".join(args)
    return getattr(annotation, "__name__", str(annotation))
