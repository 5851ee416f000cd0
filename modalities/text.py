"""Text as token ids: SentencePiece subwords, characters, or UTF-8 bytes.

Reserved ids are those of every vocabulary (t2t.tokens: PAD 0, EOS 1, BOS 2, UNK 3); real
symbols start at NUM_RESERVED = 4. UNK is a character the vocabulary cannot express: never
for "byte", rare for "sentencepiece", which falls back to bytes. Shards store ids as
little-endian int32 without BOS/EOS.

Round trips (decode(encode(text)) == text) are exact for every vocabulary, with one known
exception: SentencePiece writes spaces as U+2581 ("▁"), so a literal U+2581 in the input
comes back as a space.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from t2t.errors import UserError
from t2t.files import write_atomic
from t2t.modality import Modality
from t2t.tokens import BOS, EOS, NUM_RESERVED, PAD, UNK, content_ids


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class TextModality(Modality):
    """Text targets or inputs.

    vocab: "sentencepiece" (subwords learned from the training split, `vocab_size` pieces),
           "char" (the characters of `alphabet`, or of the training split when not given),
           "byte" (UTF-8 bytes, 260 ids, nothing to learn).
    vocab_file: instead of learning a vocabulary, use a trained model's (to fine-tune it on
           new data with every embedding kept): a t2t-train checkpoint (.ckpt) holding one
           learned text vocabulary, or a vocabulary file of a data_dir's vocab/ folder
           (.model: SentencePiece, .json: characters). It sets `vocab` and `vocab_size`.
    """

    kind = "text"
    packable = True  # one embedding per token id
    extension = "ids"

    def __init__(
        self,
        vocab: Literal["sentencepiece", "char", "byte"] = "sentencepiece",
        vocab_size: int = 8000,
        alphabet: str | None = None,
        max_fit_sentences: int = 1_000_000,
        vocab_file: str | None = None,
    ):
        if vocab not in ("sentencepiece", "char", "byte"):
            raise UserError(f"TextModality vocab={vocab!r}: use sentencepiece, char or byte")
        if alphabet is not None and vocab != "char":
            raise UserError("TextModality: alphabet only applies to vocab='char'")
        self.vocab = vocab
        self.requested_vocab_size = vocab_size
        self.max_fit_sentences = max_fit_sentences
        self._alphabet: list[str] | None = None
        self._char_ids: dict[str, int] = {}
        self._spm_proto: bytes | None = None
        self._spm = None  # SentencePieceProcessor, built lazily (it does not pickle)
        # Read when t2t-datagen fits the vocabulary, not here: a checkpoint keeps the
        # vocabulary itself, and rebuilding its problem elsewhere must not need the file.
        self.vocab_file = vocab_file
        if alphabet is not None:
            self._set_alphabet(sorted(set(alphabet)))

    # -- identity ---------------------------------------------------------------------------

    @property
    def needs_fit(self) -> bool:
        return (self.vocab == "sentencepiece" and self._spm_proto is None) or (
            self.vocab == "char" and self._alphabet is None
        )

    @property
    def key(self) -> str:
        self._require_vocab()
        if self.vocab == "byte":
            return "text:byte"
        if self.vocab == "char":
            return f"text:char:{_digest(''.join(self._alphabet).encode())}"
        return f"text:spm{self.requested_vocab_size}:{_digest(self._spm_proto)}"

    @property
    def vocab_size(self) -> int:
        """Number of ids including the reserved ones."""
        self._require_vocab()
        if self.vocab == "byte":
            return NUM_RESERVED + 256
        if self.vocab == "char":
            return NUM_RESERVED + len(self._alphabet)
        return self._processor().vocab_size()

    def describe(self) -> str:
        if self.vocab_file and self.needs_fit:
            return f"text(the vocabulary of {self.vocab_file})"
        size = "" if self.vocab == "byte" else f" {self.requested_vocab_size}"
        if self.vocab == "char":
            size = f" {len(self._alphabet)}" if self._alphabet else ""
        return f"text({self.vocab}{size})"

    # -- vocabulary ------------------------------------------------------------------------

    def fit(self, samples: Iterable[str], vocab_dir: Path) -> Path:
        vocab_dir.mkdir(parents=True, exist_ok=True)
        if self.vocab_file:
            return self._adopt(Path(self.vocab_file), vocab_dir)
        sentences = _take(_checked_strings(samples), self.max_fit_sentences)
        if self.vocab == "char":
            self._set_alphabet(sorted(set("".join(sentences))))
            path = vocab_dir / f"{self.key.replace(':', '-')}.json"
            write_atomic(path, json.dumps(self._alphabet, ensure_ascii=False).encode())
        elif self.vocab == "sentencepiece":
            self._spm_proto = _train_sentencepiece(sentences, self.requested_vocab_size)
            self._spm = None
            path = vocab_dir / f"{self.key.replace(':', '-')}.model"
            write_atomic(path, self._spm_proto)
        else:
            raise NotImplementedError("byte vocabularies have nothing to fit")
        return path

    def _adopt(self, path: Path, vocab_dir: Path) -> Path:
        """Take the vocabulary of `path` (see vocab_file) and save it under vocab_dir."""
        if not path.is_file():
            raise UserError(f"vocab_file={path}: no such file; pass a t2t-train checkpoint "
                            f"(.ckpt) or a vocabulary file from a data_dir's vocab/ folder")
        if path.suffix == ".ckpt":
            key, data = _checkpoint_vocabulary(path)
            kind = key.split(":")[1]
            self.vocab = "char" if kind == "char" else "sentencepiece"
            if self.vocab == "sentencepiece":
                self.requested_vocab_size = int(kind.removeprefix("spm"))
        elif path.suffix in (".model", ".json"):
            key, data = None, path.read_bytes()
            self.vocab = "sentencepiece" if path.suffix == ".model" else "char"
        else:
            raise UserError(f"vocab_file={path}: not a checkpoint (.ckpt) or a vocabulary "
                            f"file (.model, .json)")
        try:
            self._set_vocabulary(data)
            processor = self._processor() if self.vocab == "sentencepiece" else None
        except (RuntimeError, ValueError) as error:  # not a SentencePiece model, not JSON
            raise UserError(f"vocab_file={path}: not a {self.vocab} vocabulary "
                            f"({str(error).strip()[:80]})") from None
        if processor is not None:
            _check_reserved_ids(processor, path)
            if key is None:  # t2t-datagen names its files text-spm<requested size>-<digest>
                size = path.stem.split("-")[1].removeprefix("spm") if path.stem.startswith(
                    "text-spm") else ""
                self.requested_vocab_size = int(size) if size.isdigit() else self.vocab_size
        if key is not None and self.key != key:
            raise UserError(f"vocab_file={path}: its vocabulary {key} came back as "
                            f"{self.key}; was the text modality's code changed since?")
        suffix = ".model" if self.vocab == "sentencepiece" else ".json"
        saved = vocab_dir / f"{self.key.replace(':', '-')}{suffix}"
        write_atomic(saved, data)
        return saved

    def restore(self, vocab_file: Path) -> None:
        self._set_vocabulary(Path(vocab_file).read_bytes())

    def _set_vocabulary(self, data: bytes) -> None:
        if self.vocab == "char":
            self._set_alphabet(json.loads(data))
        elif self.vocab == "sentencepiece":
            self._spm_proto, self._spm = data, None
        else:
            raise NotImplementedError("byte vocabularies have nothing to restore")

    def _set_alphabet(self, alphabet: list[str]) -> None:
        self._alphabet = alphabet
        self._char_ids = {ch: NUM_RESERVED + i for i, ch in enumerate(alphabet)}

    def _require_vocab(self) -> None:
        if self.needs_fit:
            raise RuntimeError(
                f"{self.describe()} has no vocabulary yet: fit it on the training split "
                f"(t2t-datagen does) or restore it from the shards' vocab/ folder"
            )

    def _processor(self):
        if self._spm is None:
            import sentencepiece

            self._spm = sentencepiece.SentencePieceProcessor(model_proto=self._spm_proto)
        return self._spm

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spm": None}

    # -- data ------------------------------------------------------------------------------

    def encode_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text modality expects str, got {type(text).__name__}")
        self._require_vocab()
        if self.vocab == "byte":
            return [NUM_RESERVED + b for b in text.encode("utf-8")]
        if self.vocab == "char":
            return [self._char_ids.get(ch, UNK) for ch in text]
        return self._processor().encode(text, out_type=int)

    def encode(self, raw: str) -> bytes:
        return np.asarray(self.encode_ids(raw), dtype="<i4").tobytes()

    def load(self, data: bytes, augment: None = None) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(data, dtype="<i4").astype(np.int64))

    def length(self, data: bytes) -> int:
        return len(data) // 4

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids -> text; stops at the first EOS, skips PAD and BOS."""
        self._require_vocab()
        kept = content_ids(ids)
        if self.vocab == "byte":
            return bytes(i - NUM_RESERVED for i in kept if i >= NUM_RESERVED).decode(
                "utf-8", errors="replace"
            )
        if self.vocab == "char":
            last = NUM_RESERVED + len(self._alphabet)
            return "".join(
                self._alphabet[i - NUM_RESERVED] if NUM_RESERVED <= i < last else "\ufffd"
                for i in kept
            )
        return self._processor().decode(kept)

    # -- model side ------------------------------------------------------------------------

    def bottom(self, d_model: int) -> nn.Module:
        return TextEmbedding(self.vocab_size, d_model)

    def top(self, d_model: int, bottom: nn.Module) -> nn.Module:
        return TiedSoftmax(bottom.embedding)


class TextEmbedding(nn.Module):
    """Token ids (B, T) -> (B, T, C), scaled by sqrt(C) as in the original Transformer;
    the padding mask passes through unchanged."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        # std d^-0.5 times sqrt(d): unit-scale embeddings, comparable to the position signal.
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.scale = d_model**0.5

    def forward(self, ids: torch.Tensor, pad_mask: torch.Tensor | None = None):
        return self.embedding(ids) * self.scale, pad_mask  # (B, T, C), (B, T)


class TiedSoftmax(nn.Module):
    """Logits from the embedding matrix itself (weight tying, as tensor2tensor does)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    @property
    def weight(self) -> torch.Tensor:  # (V, C): t2t.modality.ProjectsLinearly
        return self.embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.embedding.weight)  # (B, T, V)


def _checked_strings(samples: Iterable[str]) -> Iterable[str]:
    for text in samples:
        if not isinstance(text, str):
            raise TypeError(f"text modality expects str samples, got {type(text).__name__}")
        yield text


def _take(samples: Iterable[str], limit: int) -> list[str]:
    out = []
    for text in samples:
        if len(out) >= limit:
            break
        if text:
            out.append(text)
    if not out:
        raise UserError("cannot learn a text vocabulary: the training split has no text")
    return out


def _checkpoint_vocabulary(path: Path) -> tuple[str, bytes]:
    """(modality key, vocabulary bytes) of the one learned text vocabulary of a checkpoint."""
    from t2t.inference import read_t2t_checkpoint

    found: dict[str, tuple[str, bytes]] = {}
    for spec in read_t2t_checkpoint(path)["t2t"]["problems"]:
        for role, key in spec["keys"].items():
            if key.startswith(("text:spm", "text:char")) and role in spec["vocab"]:
                found.setdefault(key, (f"{spec['name']} {role}", spec["vocab"][role]["data"]))
    if len(found) != 1:
        held = "; ".join(f"{where}: {key}" for key, (where, _) in found.items()) or "none"
        raise UserError(f"vocab_file={path}: a checkpoint with one learned text vocabulary is "
                        f"needed, it has {len(found)} ({held}); pass the vocabulary file "
                        f"(vocab/*.model or *.json) from its data_dir instead")
    key, (_, data) = next(iter(found.items()))
    return key, data


def _check_reserved_ids(processor, path: Path) -> None:
    reserved = (processor.pad_id(), processor.eos_id(), processor.bos_id(), processor.unk_id())
    if reserved != (PAD, EOS, BOS, UNK):
        raise UserError(f"vocab_file={path}: a SentencePiece model with pad, eos, bos, unk ids "
                        f"{reserved}; t2t needs {(PAD, EOS, BOS, UNK)} (train it with "
                        f"pad_id=0 eos_id=1 bos_id=2 unk_id=3)")


def _train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
            # Exact round trips: no normalisation, keep whitespace, bytes for rare characters.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            byte_fallback=True,
            split_digits=True,
            hard_vocab_limit=False,  # small training sets get a smaller vocabulary, not an error
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise UserError(
            f"sentencepiece could not build a {vocab_size}-piece vocabulary ({error}); "
            f"raise vocab_size or use vocab='char'"
        ) from None
    return model.getvalue()

