"""TextModality: byte, char and SentencePiece vocabularies, exact round trips, reserved ids,
saving/restoring/pickling a learned vocabulary, and the errors a user meets."""

from __future__ import annotations

import gzip
import itertools
import pickle
from pathlib import Path

import pytest
import torch

from modalities import TextModality
from t2t.errors import UserError
from t2t.tokens import BOS, EOS, NUM_RESERVED, PAD, UNK

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "multi30k"

# Text a user may well feed in: accents, CJK, emoji (outside the BMP), a combining accent,
# tabs, and leading / trailing / doubled spaces that must survive untouched.
VARIED = [
    "Zwei junge Männer überqueren die Straße.",
    "Ça coûte 12,50 € — très cher!",
    "漢字とかなの文、中文句子。",
    "emoji 😀🚀 and a flag 🇩🇪",
    "e\u0301 (combining accent) and ñ",
    "tab\tseparated\tvalues",
    " leading space",
    "trailing space ",
    "double  space   and triple",
    "  ",
    "Ελληνικά, русский, עברית, العربية",
]


def _reserved(ids) -> list[int]:
    return [i for i in ids if i < NUM_RESERVED]


# -- byte -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", VARIED)
def test_byte_round_trip_is_exact(text):
    modality = TextModality(vocab="byte")
    data = modality.encode(text)
    ids = modality.load(data)
    assert ids.dtype == torch.int64
    assert ids.tolist() == modality.encode_ids(text)
    assert len(ids) == len(text.encode("utf-8")) == modality.length(data)
    assert _reserved(ids.tolist()) == []
    assert int(ids.max()) < modality.vocab_size
    assert modality.decode(ids) == text


def test_byte_needs_no_fit_and_has_a_fixed_identity():
    modality = TextModality(vocab="byte")
    assert not modality.needs_fit
    assert modality.vocab_size == NUM_RESERVED + 256
    assert modality.key == TextModality(vocab="byte").key == "text:byte"
    # Every byte value maps to a real (non-reserved) id inside the vocabulary.
    ids = modality.encode_ids(bytes(range(128)).decode("ascii") + "ÿ")
    assert min(ids) >= NUM_RESERVED and max(ids) < modality.vocab_size


# -- char -------------------------------------------------------------------------------------


def test_char_round_trip_after_fit(tmp_path):
    modality = TextModality(vocab="char")
    assert modality.needs_fit
    path = modality.fit(iter(VARIED), tmp_path / "vocab")
    assert path.is_file() and path.parent == tmp_path / "vocab"
    assert not modality.needs_fit
    assert modality.vocab_size == NUM_RESERVED + len(set("".join(VARIED)))
    for text in VARIED:
        ids = modality.encode_ids(text)
        assert len(ids) == len(text)  # one id per code point
        assert _reserved(ids) == [], text
        assert modality.decode(torch.tensor(ids)) == text


def test_char_unknown_characters_map_to_unk(tmp_path):
    modality = TextModality(vocab="char")
    modality.fit(["abc def"], tmp_path)
    ids = modality.encode_ids("ab?x 😀c")
    assert ids[0] != UNK and ids[1] != UNK and ids[4] != UNK and ids[6] != UNK
    assert [ids[2], ids[3], ids[5]] == [UNK, UNK, UNK]
    # UNK cannot come back as the original character; it is visibly a replacement.
    assert modality.decode(ids) == "ab\ufffd\ufffd \ufffdc"


def test_char_alphabet_fixes_the_vocabulary_without_fitting():
    modality = TextModality(vocab="char", alphabet="ACGU")
    assert not modality.needs_fit
    assert modality.vocab_size == NUM_RESERVED + 4
    ids = modality.encode_ids("GAUC")
    assert sorted(ids) == list(range(NUM_RESERVED, NUM_RESERVED + 4))
    assert modality.decode(ids) == "GAUC"
    assert modality.encode_ids("GAXC")[2] == UNK
    # The vocabulary is the *set* of characters: order and repeats do not change ids or key.
    same = TextModality(vocab="char", alphabet="UUGCAA")
    assert same.encode_ids("GAUC") == ids and same.key == modality.key
    assert TextModality(vocab="char", alphabet="ACGT").key != modality.key


def test_char_vocabulary_saves_and_restores(tmp_path):
    fitted = TextModality(vocab="char")
    path = fitted.fit(VARIED, tmp_path)
    restored = TextModality(vocab="char")
    restored.restore(path)
    assert not restored.needs_fit
    assert restored.key == fitted.key
    for text in VARIED:
        assert restored.encode(text) == fitted.encode(text)


def test_alphabet_only_applies_to_char_and_unknown_vocab_is_rejected():
    with pytest.raises(UserError, match="alphabet"):
        TextModality(vocab="byte", alphabet="abc")
    with pytest.raises(UserError, match="sentencepiece, char or byte"):
        TextModality(vocab="word")


# -- decode: EOS / PAD / BOS ----------------------------------------------------------------


@pytest.mark.parametrize("vocab", ["byte", "char"])
def test_decode_stops_at_eos_and_skips_pad_and_bos(vocab):
    modality = TextModality(vocab=vocab, **({"alphabet": "abcdefgh "} if vocab == "char" else {}))
    head, tail = modality.encode_ids("abc de"), modality.encode_ids("fgh")
    assert modality.decode([BOS, *head, EOS, *tail, EOS]) == "abc de"
    assert modality.decode([BOS, *head[:2], PAD, *head[2:], PAD, PAD]) == "abc de"
    assert modality.decode(torch.tensor([BOS, *head, EOS, PAD, PAD])) == "abc de"
    assert modality.decode([EOS, *head]) == ""
    assert modality.decode([]) == ""


# -- type and state errors ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"bytes", 42, None, ["a", "b"]])
@pytest.mark.parametrize("vocab", ["byte", "char", "sentencepiece"])
def test_encoding_a_non_string_raises_type_error(vocab, bad):
    # A type error must win even before the vocabulary is checked (sentencepiece unfitted).
    modality = TextModality(vocab=vocab, **({"alphabet": "ab"} if vocab == "char" else {}))
    with pytest.raises(TypeError, match="expects str"):
        modality.encode(bad)


def test_fitting_on_non_strings_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="expects str"):
        TextModality(vocab="char").fit(["ok", b"not ok"], tmp_path)


def test_fitting_on_no_text_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no text"):
        TextModality(vocab="char").fit(["", ""], tmp_path)


def test_unfitted_sentencepiece_says_to_fit_or_restore():
    modality = TextModality(vocab="sentencepiece", vocab_size=2000)
    assert modality.needs_fit
    for use in (lambda: modality.encode("hallo"), lambda: modality.decode([5, 6]),
                lambda: modality.key, lambda: modality.vocab_size):
        with pytest.raises(RuntimeError, match=r"fit it.*restore it"):
            use()


def test_too_small_sentencepiece_vocab_suggests_raising_vocab_size(tmp_path):
    # Byte fallback alone needs 256 pieces, so 100 can never work.
    modality = TextModality(vocab="sentencepiece", vocab_size=100)
    with pytest.raises(UserError, match="raise vocab_size") as error:
        modality.fit([f"sentence number {i} with some words" for i in range(50)], tmp_path)
    assert "100" in str(error.value)
    assert modality.needs_fit  # a failed fit leaves nothing half-built


# -- sentencepiece on Multi30k ----------------------------------------------------------------


def _lines(path: Path, count: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in itertools.islice(f, count)]


@pytest.fixture(scope="module")
def multi30k() -> Path:
    if not (MULTI30K / "train.de.gz").is_file():
        pytest.skip(f"local copy of Multi30k not found at {MULTI30K} "
                    f"(see ../shared/datasets/README.md)")
    return MULTI30K


@pytest.fixture(scope="module")
def spm(multi30k, tmp_path_factory):
    """A ~2000-piece joint German+English vocabulary fitted on 2000+2000 training lines."""
    samples = _lines(multi30k / "train.de.gz", 2000) + _lines(multi30k / "train.en.gz", 2000)
    modality = TextModality(vocab="sentencepiece", vocab_size=2000)
    vocab_dir = tmp_path_factory.mktemp("spm") / "vocab"
    path = modality.fit(samples, vocab_dir)
    return modality, path, samples


@pytest.fixture(scope="module")
def held_out(multi30k) -> list[str]:
    return _lines(multi30k / "val.de.gz", 100) + _lines(multi30k / "val.en.gz", 100)


def test_sentencepiece_fit_writes_a_model_file(spm):
    modality, path, _ = spm
    assert path.is_file() and path.stat().st_size > 0
    assert not modality.needs_fit
    assert 1000 <= modality.vocab_size <= 2000
    assert modality.key.startswith("text:spm2000:")


def test_sentencepiece_round_trip_on_held_out_sentences(spm, held_out):
    modality, _, _ = spm
    total_ids = total_chars = 0
    for text in held_out:
        ids = modality.load(modality.encode(text)).tolist()
        assert _reserved(ids) == [], text  # never PAD/EOS/BOS, and no UNK thanks to bytes
        assert max(ids) < modality.vocab_size
        assert modality.decode(ids) == text
        total_ids, total_chars = total_ids + len(ids), total_chars + len(text)
    # Subwords, not characters: a real vocabulary compresses the text a lot.
    assert total_ids < total_chars / 2.5


@pytest.mark.parametrize("text", VARIED + ["Ω≈ç√∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00 ctrl", "new\nline and \r\n"])
def test_sentencepiece_round_trip_with_unseen_characters(spm, text):
    modality, _, _ = spm
    ids = modality.encode_ids(text)
    assert _reserved(ids) == [], "unseen characters must fall back to bytes, not UNK"
    assert modality.decode(ids) == text


@pytest.mark.parametrize("text", ["\u2581 block", "a\u2581b"])
def test_sentencepiece_space_marker_comes_back_as_a_space(spm, text):
    # The one documented exception to exact round trips (modalities/text.py).
    modality, _, _ = spm
    assert modality.decode(modality.encode_ids(text)) == text.replace("\u2581", " ")


def test_sentencepiece_decode_stops_at_eos_and_skips_pad_and_bos(spm):
    modality, _, _ = spm
    ids = modality.encode_ids("Ein Hund läuft.")
    assert modality.decode([BOS, *ids, EOS, *modality.encode_ids("Katze")]) == "Ein Hund läuft."
    assert modality.decode(torch.tensor([BOS, *ids, PAD, PAD])) == "Ein Hund läuft."


def test_sentencepiece_vocab_file_restores_into_a_new_instance(spm, held_out):
    modality, path, _ = spm
    restored = TextModality(vocab="sentencepiece", vocab_size=2000)
    restored.restore(path)
    assert not restored.needs_fit
    assert restored.key == modality.key
    assert restored.vocab_size == modality.vocab_size
    for text in held_out[:50] + VARIED:
        assert restored.encode(text) == modality.encode(text)
        assert restored.decode(restored.encode_ids(text)) == text


def test_sentencepiece_key_changes_with_the_vocabulary(spm, tmp_path):
    modality, _, samples = spm
    english_only = TextModality(vocab="sentencepiece", vocab_size=2000)
    english_only.fit(samples[2000:], tmp_path)  # different data -> different vocabulary
    assert english_only.key != modality.key
    assert english_only.key.startswith("text:spm2000:")
    smaller = TextModality(vocab="sentencepiece", vocab_size=1000)
    smaller.fit(samples, tmp_path / "smaller")
    assert smaller.key != modality.key and smaller.vocab_size < modality.vocab_size


def test_sentencepiece_modality_pickles_for_worker_processes(spm, held_out):
    modality, _, _ = spm
    text = held_out[0]
    expected = modality.encode(text)  # builds the (unpicklable) processor first
    clone = pickle.loads(pickle.dumps(modality))
    assert clone.key == modality.key
    assert clone.encode(text) == expected
    assert clone.decode(clone.load(expected)) == text
    assert modality.encode(text) == expected  # pickling does not break the original
