"""Property-based tests (hypothesis): vocabularies, dot-bracket parsing and the readers of
user files take anything without crashing, round-trip what they promise to, and reject the
rest with a UserError that names where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modalities import TextModality
from modalities.rna import pair_table, parse_design_input
from problems.image_text import read_metadata
from problems.speech import read_manifest
from t2t.errors import UserError

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text())
def test_byte_vocabulary_round_trips_any_unicode(text):
    modality = TextModality(vocab="byte")
    ids = modality.encode_ids(text)
    assert modality.decode(ids) == text
    assert modality.length(modality.encode(text)) == len(text.encode("utf-8"))


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=50))
def test_char_vocabulary_round_trips_its_alphabet_and_marks_the_rest(text):
    modality = TextModality(vocab="char", alphabet="abc xyz0123456789é")
    expected = "".join(ch if ch in "abc xyz0123456789é" else "\ufffd" for ch in text)
    assert modality.decode(modality.encode_ids(text)) == expected


@pytest.fixture(scope="module")
def subword(tmp_path_factory) -> TextModality:
    modality = TextModality(vocab="sentencepiece", vocab_size=320)
    corpus = [f"the {word} sat on the mat number {n}" for n in range(200)
              for word in ("cat", "dog", "bird")]
    modality.fit(corpus, tmp_path_factory.mktemp("vocab"))
    return modality


@FUZZ
@given(text=st.text(max_size=80))
def test_subword_vocabulary_takes_any_unicode(subword, text):
    ids = subword.encode_ids(text)
    assert all(0 <= i < subword.vocab_size for i in ids)
    assert isinstance(subword.decode(ids), str)


@FUZZ
@given(st.text(alphabet="abcdehmnorstu ", max_size=60))
def test_subword_vocabulary_round_trips_single_spaced_text_of_its_alphabet(subword, text):
    text = " ".join(text.split())  # SentencePiece normalises runs of spaces
    assert subword.decode(subword.encode_ids(text)) == text


def dot_brackets() -> st.SearchStrategy[str]:
    """Balanced dot-bracket structures: unpaired, a hairpin around one, or two side by side."""
    return st.recursive(
        st.text(alphabet=".", min_size=1, max_size=5),
        lambda inner: st.one_of(inner.map(lambda s: f"({s})"),
                                st.tuples(inner, inner).map("".join)),
        max_leaves=20)


@FUZZ
@given(dot_brackets())
def test_balanced_structures_parse_into_a_symmetric_pairing(structure):
    partner = pair_table(structure)
    assert len(partner) == len(structure)
    for i, j in enumerate(partner):
        assert (j == -1) == (structure[i] == ".")
        if j != -1:
            assert partner[j] == i and (structure[min(i, j)], structure[max(i, j)]) == ("(", ")")
    assert parse_design_input(structure) == (structure, "N" * len(structure))


@FUZZ
@given(st.text(alphabet="().x[ ", min_size=1, max_size=30))
def test_any_other_string_is_parsed_or_rejected_naming_a_position(text):
    try:
        partner = pair_table(text)
    except UserError as error:
        assert "structure position " in str(error)
        position = int(str(error).split("structure position ")[1].split(":")[0])
        assert 1 <= position <= len(text)
    else:
        assert set(text) <= set("().") and len(partner) == len(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)
lines = st.one_of(
    st.text(max_size=40),  # anything, mostly not JSON
    json_values.map(json.dumps),
    st.fixed_dictionaries({"audio_filepath": st.text(min_size=1, max_size=10),
                           "text": st.text(max_size=10)}).map(json.dumps),
    st.fixed_dictionaries({"file_name": st.text(min_size=1, max_size=10),
                           "text": st.text(max_size=10) | st.lists(st.text(max_size=5),
                                                                    max_size=3)}).map(json.dumps))


def check_reader(read, folder: Path, file: Path, rows: list[str]) -> None:
    """The reader returns one record per non-blank line, or one UserError naming file:line."""
    file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    try:
        records = read()
    except UserError as error:
        message = str(error)
        assert message.startswith(f"{file}:"), message
        number = int(message[len(str(file)) + 1:].split(":")[0])
        assert 1 <= number <= len(rows)
    else:
        assert len(records) <= sum(1 for row in rows if row.strip())


@FUZZ
@given(st.lists(lines.filter(lambda line: "\n" not in line and "\r" not in line), max_size=6))
def test_manifest_reader_takes_any_lines(tmp_path, rows):
    manifest = tmp_path / "manifest.jsonl"
    check_reader(lambda: read_manifest(manifest), tmp_path, manifest, rows)


@FUZZ
@given(st.lists(lines.filter(lambda line: "\n" not in line and "\r" not in line), max_size=6))
def test_image_metadata_reader_takes_any_lines(tmp_path, rows):
    metadata = tmp_path / "metadata.jsonl"
    check_reader(lambda: read_metadata(tmp_path), tmp_path, metadata, rows)
