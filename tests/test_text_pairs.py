"""text_pairs: the TSV / JSONL / aligned-file readers, their `path:line` errors, and the
TextPairs problem's splits (a seeded hold-out when no validation file is given)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from problems.text_pairs import (
    TextPairs,
    read_aligned,
    read_jsonl,
    read_lines,
    read_pairs,
    read_tsv,
)
from t2t.errors import UserError

HEADER = ("source", "target")


def _write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _pairs(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [{"inputs": f"sentence {i}", "targets": f"Satz {i}"} for i in range(offset, offset + n)]


def _tsv(path: Path, pairs: list[dict[str, str]], header: bool = False) -> Path:
    lines = (["source\ttarget"] if header else []) + [
        f"{p['inputs']}\t{p['targets']}" for p in pairs
    ]
    return _write(path, "".join(line + "\n" for line in lines))


# -- read_lines -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain.txt", "packed.txt.gz"])
def test_read_lines_numbers_lines_and_strips_newlines(tmp_path, name):
    path = _write(tmp_path / name, "eins\r\nzwei  \n\n drei\tvier")
    assert list(read_lines(path)) == [(1, "eins"), (2, "zwei  "), (3, ""), (4, " drei\tvier")]


@pytest.mark.parametrize("name", ["bad.txt", "bad.tsv.gz"])
def test_invalid_utf8_names_path_and_line(tmp_path, name):
    path = _write(tmp_path / name, b"a\tb\nc\td\ne\xff\xfe\tf\ng\th\n")
    with pytest.raises(UserError, match="UTF-8") as error:
        list(read_lines(path))
    assert f"{path}:3:" in str(error.value)
    with pytest.raises(UserError) as error:  # and through a reader
        list(read_pairs(str(path), *HEADER) if name.endswith(".tsv.gz") else read_tsv(path, HEADER))
    assert f"{path}:3:" in str(error.value)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.tsv"
    for read in (lambda: list(read_lines(missing)), lambda: list(read_tsv(missing, HEADER)),
                 lambda: list(read_pairs(str(missing), *HEADER))):
        with pytest.raises(UserError, match="no such file") as error:
            read()
        assert str(missing) in str(error.value)


# -- TSV --------------------------------------------------------------------------------------


def test_tsv_without_header(tmp_path):
    path = _tsv(tmp_path / "pairs.tsv", _pairs(3))
    assert list(read_tsv(path, HEADER)) == _pairs(3)


def test_tsv_with_header_skips_it(tmp_path):
    path = _tsv(tmp_path / "pairs.tsv", _pairs(3), header=True)
    assert list(read_tsv(path, HEADER)) == _pairs(3)
    # The header is whatever the keys are named.
    path = _write(tmp_path / "de_en.tsv", "de\ten\nHallo\tHello\n")
    assert list(read_tsv(path, ("de", "en"))) == [{"inputs": "Hallo", "targets": "Hello"}]
    assert list(read_tsv(path, HEADER))[0] == {"inputs": "de", "targets": "en"}


def test_tsv_header_only_on_the_first_line(tmp_path):
    path = _write(tmp_path / "pairs.tsv", "a\tb\nsource\ttarget\n")
    assert list(read_tsv(path, HEADER)) == [
        {"inputs": "a", "targets": "b"}, {"inputs": "source", "targets": "target"}
    ]


def test_tsv_keeps_spaces_ignores_extra_columns_and_crlf(tmp_path):
    path = _write(tmp_path / "pairs.tsv", " Ein  Hund \t A dog \textra\r\nÜber\tOver\r\n")
    assert list(read_tsv(path, HEADER)) == [
        {"inputs": " Ein  Hund ", "targets": " A dog "}, {"inputs": "Über", "targets": "Over"}
    ]


def test_tsv_gzipped(tmp_path):
    path = _tsv(tmp_path / "pairs.tsv.gz", _pairs(5), header=True)
    assert list(read_pairs(str(path), *HEADER)) == _pairs(5)


def test_tsv_line_with_one_column_names_path_and_line(tmp_path):
    path = _write(tmp_path / "pairs.tsv", "a\tb\nno tab here\nc\td\n")
    with pytest.raises(UserError, match="1 column") as error:
        list(read_tsv(path, HEADER))
    assert f"{path}:2:" in str(error.value)


# -- JSONL ------------------------------------------------------------------------------------


def test_jsonl_reads_pairs_skipping_blank_lines(tmp_path):
    records = [{"source": "Hallo", "target": "Hello", "id": 1},
               {"target": "Tschüss 😀", "source": " Bye\t"}]
    text = json.dumps(records[0]) + "\n\n" + json.dumps(records[1], ensure_ascii=False) + "\n"
    for name in ("pairs.jsonl", "pairs.jsonl.gz"):
        path = _write(tmp_path / name, text)
        assert list(read_pairs(str(path), *HEADER)) == [
            {"inputs": "Hallo", "targets": "Hello"}, {"inputs": " Bye\t", "targets": "Tschüss 😀"}
        ]


def test_jsonl_custom_keys(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", '{"de": "Hund", "en": "dog"}\n')
    assert list(read_jsonl(path, "de", "en")) == [{"inputs": "Hund", "targets": "dog"}]


def test_jsonl_invalid_json_names_path_and_line(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", '{"source": "a", "target": "b"}\n{"source": "a",\n')
    with pytest.raises(UserError, match="invalid JSON") as error:
        list(read_jsonl(path, *HEADER))
    assert f"{path}:2:" in str(error.value)


@pytest.mark.parametrize("bad", ['{"source": "a"}', '{"source": "a", "target": 7}',
                                 '["a", "b"]'])
def test_jsonl_missing_key_names_path_and_line(tmp_path, bad):
    path = _write(tmp_path / "pairs.jsonl", '{"source": "a", "target": "b"}\n\n' + bad + "\n")
    with pytest.raises(UserError) as error:
        list(read_jsonl(path, *HEADER))
    assert f"{path}:3:" in str(error.value)
    if bad.startswith("{"):
        assert "'target'" in str(error.value)


# -- aligned files ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_aligned_files(tmp_path, suffix):
    src = _write(tmp_path / f"train.de{suffix}", "Ein Hund.\n Zwei  Katzen \n\nDrei.\n")
    tgt = _write(tmp_path / f"train.en{suffix}", "A dog.\n Two  cats \n\nThree.\n")
    expected = [{"inputs": "Ein Hund.", "targets": "A dog."},
                {"inputs": " Zwei  Katzen ", "targets": " Two  cats "},
                {"inputs": "", "targets": ""},
                {"inputs": "Drei.", "targets": "Three."}]
    assert list(read_aligned(src, tgt)) == expected
    assert list(read_pairs([str(src), str(tgt)], *HEADER)) == expected
    assert list(read_pairs((str(src), str(tgt)), *HEADER)) == expected


@pytest.mark.parametrize("longer_side", ["source", "target"])
def test_aligned_files_with_different_line_counts_name_the_longer(tmp_path, longer_side):
    src = _write(tmp_path / "a.src", "1\n2\n3\n" + ("4\n" if longer_side == "source" else ""))
    tgt = _write(tmp_path / "a.tgt", "1\n2\n3\n" + ("4\n" if longer_side == "target" else ""))
    longer, shorter = (src, tgt) if longer_side == "source" else (tgt, src)
    with pytest.raises(UserError, match="more lines") as error:
        list(read_aligned(src, tgt))
    message = str(error.value)
    assert message.startswith(f"{longer}:4:"), message
    assert str(shorter) in message


def test_aligned_missing_target_is_named(tmp_path):
    src = _write(tmp_path / "a.src", "1\n")
    with pytest.raises(UserError, match="no such file") as error:
        list(read_pairs([str(src), str(tmp_path / "a.tgt")], *HEADER))
    assert str(tmp_path / "a.tgt") in str(error.value)


def test_split_list_must_name_two_files(tmp_path):
    with pytest.raises(UserError, match="two aligned files"):
        read_pairs(["a", "b", "c"], *HEADER)


@pytest.mark.parametrize("name", ["pairs.csv", "pairs.txt", "pairs.csv.gz"])
def test_unknown_extension_is_a_clear_error(tmp_path, name):
    path = _write(tmp_path / name, "a,b\n")
    with pytest.raises(UserError, match=r"unknown format.*\.tsv.*\.jsonl") as error:
        list(read_pairs(str(path), *HEADER))
    assert str(path) in str(error.value)


# -- TextPairs --------------------------------------------------------------------------------


def _split(problem: TextPairs, split: str) -> list[tuple[str, str]]:
    return [(p["inputs"], p["targets"]) for p in problem.generate_samples(split)]


def test_holdout_validation_is_seeded_and_deterministic(tmp_path):
    pairs = _pairs(200)
    path = str(_tsv(tmp_path / "train.tsv", pairs, header=True))
    problem = TextPairs(train=path, vocab="byte")
    assert problem.splits == ("train", "validation")
    validation = _split(problem, "validation")
    everything = [(p["inputs"], p["targets"]) for p in pairs]
    assert len(validation) == 20  # min(holdout_size, 10% of the pairs)
    assert set(validation) <= set(everything)
    assert validation != everything[-20:]  # a seeded sample, not just the tail of the file
    # Same options -> same splits in another instance (datagen resumes by replaying).
    again = TextPairs(train=path, vocab="byte")
    assert _split(again, "validation") == validation
    assert _split(again, "train") == _split(problem, "train")
    # Another seed -> another hold-out; holdout_size caps it.
    assert _split(TextPairs(train=path, vocab="byte", seed=2), "validation") != validation
    assert len(_split(TextPairs(train=path, vocab="byte", holdout_size=7), "validation")) == 7


@pytest.mark.parametrize("layout", ["tsv", "aligned"])
def test_holdout_is_disjoint_from_train_and_together_they_are_the_file(tmp_path, layout):
    pairs = _pairs(200)
    if layout == "tsv":
        train = str(_tsv(tmp_path / "train.tsv", pairs, header=True))
    else:
        src = _write(tmp_path / "train.de.gz", "".join(p["inputs"] + "\n" for p in pairs))
        tgt = _write(tmp_path / "train.en.gz", "".join(p["targets"] + "\n" for p in pairs))
        train = [str(src), str(tgt)]
    problem = TextPairs(train=train, vocab="byte")
    train_pairs, validation = _split(problem, "train"), _split(problem, "validation")
    everything = [(p["inputs"], p["targets"]) for p in pairs]
    assert len(validation) == 20
    assert not set(train_pairs) & set(validation)
    assert sorted(train_pairs + validation) == sorted(everything)
    assert len(train_pairs) == 180


def test_validation_file_is_used_when_given(tmp_path):
    train = _tsv(tmp_path / "train.tsv", _pairs(50))
    validation = _write(tmp_path / "dev.jsonl", "".join(
        json.dumps({"source": p["inputs"], "target": p["targets"]}) + "\n"
        for p in _pairs(4, offset=1000)))
    problem = TextPairs(train=str(train), validation=str(validation), vocab="byte")
    assert _split(problem, "validation") == [(f"sentence {i}", f"Satz {i}")
                                             for i in range(1000, 1004)]
    assert len(_split(problem, "train")) == 50  # nothing held out of train


def test_test_split_only_when_given(tmp_path):
    train = str(_tsv(tmp_path / "train.tsv", _pairs(30)))
    assert "test" not in TextPairs(train=train).splits
    src = _write(tmp_path / "test.de", "Hund\nKatze\n")
    tgt = _write(tmp_path / "test.en", "dog\ncat\n")
    problem = TextPairs(train=train, test=[str(src), str(tgt)], vocab="byte")
    assert problem.splits == ("train", "validation", "test")
    assert _split(problem, "test") == [("Hund", "dog"), ("Katze", "cat")]


def test_train_from_aligned_files_and_custom_keys(tmp_path):
    src = _write(tmp_path / "train.src.gz", "".join(f"s{i}\n" for i in range(20)))
    tgt = _write(tmp_path / "train.tgt.gz", "".join(f"t{i}\n" for i in range(20)))
    problem = TextPairs(train=[str(src), str(tgt)], vocab="byte")
    validation = _split(problem, "validation")
    assert len(validation) == 2 and set(validation) <= {(f"s{i}", f"t{i}") for i in range(20)}
    jsonl = _write(tmp_path / "train.jsonl", '{"de": "Hund", "en": "dog"}\n')
    keyed = TextPairs(train=str(jsonl), source_key="de", target_key="en", vocab="byte")
    assert _split(keyed, "train") == [("Hund", "dog")]


def test_shared_vocab_option(tmp_path):
    train = str(_tsv(tmp_path / "train.tsv", _pairs(10)))
    shared = TextPairs(train=train, vocab="char")
    assert shared.inputs is shared.targets
    separate = TextPairs(train=train, vocab="char", shared_vocab=False)
    assert separate.inputs is not separate.targets
    assert TextPairs(train=train, vocab="sentencepiece", vocab_size=500).inputs.needs_fit


@pytest.mark.parametrize("split", ["train", "validation"])
def test_no_train_file_is_a_user_error(split):
    problem = TextPairs()
    with pytest.raises(UserError, match=r"problem\.train"):
        list(problem.generate_samples(split))


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises((UserError, TypeError), match="trian"):
        TextPairs(trian="pairs.tsv")


def test_tsv_skips_blank_lines_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("\ufeffsource\ttarget\nein\tone\n\nzwei\ttwo\n\n".encode())
    assert list(read_tsv(path, ("source", "target"))) == [
        {"inputs": "ein", "targets": "one"}, {"inputs": "zwei", "targets": "two"}]
