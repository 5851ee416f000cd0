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
from t2t.tokens import BOS, EOS, NUM_RESERVED, PAD, UNK


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class TextModality(Modality):
    """Text targets or inputs.

    vocab: "sentencepiece" (subwords learned from the training split, `vocab_size` pieces),
           "char" (the characters of `alphabet`, or of the training split when not given),
           "byte" (UTF-8 bytes, 260 ids, nothing to learn).
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
        size = "" if self.vocab == "byte" else f" {self.requested_vocab_size}"
        if self.vocab == "char":
            size = f" {len(self._alphabet)}" if self._alphabet else ""
        return f"text({self.vocab}{size})"

    # -- vocabulary ------------------------------------------------------------------------

    def fit(self, samples: Iterable[str], vocab_dir: Path) -> Path:
        vocab_dir.mkdir(parents=True, exist_ok=True)
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

    def restore(self, vocab_file: Path) -> None:
        data = Path(vocab_file).read_bytes()
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
        kept = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                kept.append(int(i))
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

