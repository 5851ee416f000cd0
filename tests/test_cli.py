"""The commands as a user types them: t2t-problems and t2t-datagen, and the README."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from problems import translate
from t2t.cli.common import quote_free_text
from t2t.errors import UserError

from .conftest import REPO, run_command

README = (REPO / "README.md").read_text()


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_main_job_runs(tmp_path):
    main_job = fenced_blocks("bash")[0].strip()
    setup = "pip install -e . -c constraints.txt && "
    assert main_job.startswith(setup), "the first Quickstart command sets up, then runs"
    # The full quickstart takes minutes; here it runs as typed, but for 40 steps.
    shortened = main_job.removeprefix(setup) + (
        " trainer.max_steps=40 trainer.val_check_interval=40 trainer.enable_progress_bar=false")
    result = subprocess.run(["bash", "-c", shortened], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metrics after 40 steps" in result.stdout and "example decodes" in result.stdout
    assert data_count(tmp_path / "data" / "algorithmic_reverse", "train") > 0
    lines = result.stdout.splitlines()
    # Which way is better, on every metric's row.
    assert any(re.search(r"\bcer\b.*\blower\b", line) for line in lines)
    assert any(re.search(r"\bexact_match\b.*\bhigher\b", line) for line in lines)
    # An image or a sound is shown as the file it was, written next to the run.
    for extension, magic in (("png", b"\x89PNG"), ("flac", b"fLaC")):
        shown = re.findall(rf"(\S+/examples/\w+/\w+\.{extension})", result.stdout)
        assert shown, result.stdout[-3000:]
        assert (tmp_path / shown[0]).read_bytes().startswith(magic)
    # The next step it suggests works as printed.
    (suggested,) = [line.split("decode your own input: ", 1)[1] for line in lines
                    if "decode your own input: " in line]
    decoded = run_command(*shlex.split(suggested), cwd=tmp_path)
    # One input, one line: its prediction (after 40 steps, perhaps still empty).
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    assert len(decoded.stdout.splitlines()) == 1, decoded.stdout


def test_readme_test_command_is_what_ci_runs():
    test_command = fenced_blocks("bash")[1].strip()
    assert test_command in (REPO / ".ci" / "run").read_text()


def data_count(problem_dir, split) -> int:
    return json.loads((problem_dir / "meta.json").read_text())["splits"][split]["count"]


def test_readme_user_problem_example(tmp_path):
    example = next(b for b in fenced_blocks("python") if b.startswith("# my_problems.py"))
    (tmp_path / "my_problems.py").write_text(example)
    commands = next(b for b in fenced_blocks("bash") if "usr_dir=my_problems.py" in b)
    outputs = []
    for line in commands.strip().splitlines():
        result = run_command(*shlex.split(line), cwd=tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "reverse_words" in outputs[0] and "Reverse the order of the words" in outputs[0]
    assert data_count(tmp_path / "data" / "reverse_words", "train") == 5000


def test_problems_lists_built_ins():
    result = run_command("t2t-problems")
    assert result.returncode == 0, result.stderr
    for name in ("algorithmic_sort", "translate_deen_multi30k", "text_pairs"):
        assert name in result.stdout
    assert "text(char 10) -> text(char 10)" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["problem=algoritmic_sort"], "unknown problem 'algoritmic_sort'; did you mean "
                                      "algorithmic_sort"),
        ([], "no problem given; pass problem=NAME"),
        (["problem=algorithmic_sort", "problem.num_symbol=3"],
         "unknown option 'num_symbol' for problem algorithmic_sort; did you mean num_symbols?"),
        (["problem=algorithmic_sort", "problem.num_symbols=abc"],
         "bad value for problem.num_symbols: Value 'abc' of type 'str' could not be converted"),
        (["problem=algorithmic_sort", "dta_dir=x"], "unknown option 'dta_dir'; did you mean "
                                                   "data_dir"),
        (["problem=algorithmic_sort", "datagen=quick"], "unknown datagen 'quick'"),
        (["problem=translate_deen_multi30k", "problem.direction=fr-en"],
         "option direction='fr-en' is not one of: de-en, en-de"),
        (["problem=algorithmic_sort", "usr_dir=/no/such/file.py"], "usr_dir /no/such/file.py"),
    ],
)
def test_bad_arguments_give_one_clear_line(args, message, tmp_path):
    result = run_command("t2t-datagen", *args, f"data_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]


def test_missing_raw_data_offline_names_raw_dir_and_url(tmp_path, monkeypatch):
    monkeypatch.setattr(translate, "MULTI30K_URL", "http://127.0.0.1:9/")  # nothing listens
    problem = translate.TranslateDeenMulti30k(raw_dir=str(tmp_path))
    with pytest.raises(UserError) as error:
        next(problem.generate_samples("train"))
    assert "http://127.0.0.1:9/train.de.gz" in str(error.value)
    assert "problem.raw_dir=DIR" in str(error.value)


def test_multi30k_datagen_counts_vocab_and_idempotent_rerun(tmp_path, multi30k_dir):
    args = ("t2t-datagen", "problem=translate_deen_multi30k",
            f"problem.raw_dir={multi30k_dir}", f"data_dir={tmp_path}")
    result = run_command(*args)
    assert result.returncode == 0, result.stderr
    problem_dir = tmp_path / "translate_deen_multi30k"
    meta = json.loads((problem_dir / "meta.json").read_text())
    for split, expected in (("train", 29000), ("validation", 1014), ("test", 1000)):
        dropped = sum(meta["splits"][split]["dropped"].values())
        assert meta["splits"][split]["count"] + dropped == expected
    vocab = meta["modalities"]["targets"]["vocab"]
    assert vocab == meta["modalities"]["inputs"]["vocab"]  # one joint vocabulary
    assert (problem_dir / vocab).is_file()
    assert meta["modalities"]["targets"]["key"].startswith("text:spm8000:")

    stamps = {p.name: p.stat().st_mtime_ns for p in problem_dir.rglob("*")}
    again = run_command(*args)
    assert again.returncode == 0 and "up to date" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in problem_dir.rglob("*")} == stamps


def readme_command_lines() -> list[str]:
    """Every concrete t2t-* command in the README's bash blocks (synopses with [...] aside)."""
    lines = []
    for block in fenced_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("t2t-") and "[" not in line and "usr_dir=my_problems" not in line:
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", readme_command_lines())
def test_readme_commands_compose(line, tmp_path):
    """Commands too long to run in a test (training for real, GPUs) must at least compose."""
    result = run_command(*shlex.split(line), "--cfg", "job", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert ("output:" if line.startswith("t2t-average") else "problem:") in result.stdout


def test_free_text_input_is_quoted_for_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in ["((((....))))", "it's a (test), ok: [1, 2]", "plain"]:
        (override,) = quote_free_text([f"input={text}"])
        assert parser.parse_override(override).value() == text
    assert quote_free_text(["input='quoted'", "problem=x"]) == ["input='quoted'", "problem=x"]


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("t2t-train", ["optim.ctc_weight=abc"], "optim.ctc_weight='abc': use a share"),
        ("t2t-train", ["optim.ponder_weight=-1"], "optim.ponder_weight=-1: use a number from 0"),
        ("t2t-train", ["optim.loss_chunk_rows=-5"],
         "optim.loss_chunk_rows=-5: use a whole number of target positions"),
        ("t2t-train", ["optim.fused=maybe"], "optim.fused='maybe': use true"),
        ("t2t-train", ["model.recurrence=actt"],
         "model settings: recurrence='actt': use one of none, shared, act"),
        ("t2t-train", ["model.halt_threshold=0"], "model settings: halt_threshold=0"),
        ("t2t-train", ["data.augment.image.elastic=abc"],
         "data.augment.image.elastic='abc': expected float"),
        ("t2t-train", ["model.bottoms.image.stem_channels=1.5"],
         "model.bottoms.image.stem_channels=1.5: expected int"),
        ("t2t-train", ["model.bottoms.image.stem_channels=8", "model.bottoms.image.stem_layers=1"],
         "stem_layers must be at least 2"),
        ("t2t-train", ["experiment=quickstar"], "unknown experiment 'quickstar'; did you mean "
                                                "quickstart"),
        ("t2t-decode", ["experiment=quickstart", "ckpt=x"], "unknown option 'experiment'"),
        ("t2t-train", ["init_from=absent.ckpt"], "init_from=absent.ckpt: no such checkpoint"),
        ("t2t-decode", [], "t2t-decode needs ckpt=...; `t2t-decode --cfg job` prints every option"),
        ("t2t-serve", [], "t2t-serve needs ckpt=...; `t2t-serve --cfg job` prints every option"),
        ("t2t-export", ["ckpt=x"], "t2t-export needs output=...;"),
    ],
)
def test_bad_training_settings_are_one_line_before_any_datagen(command, args, message,
                                                               tmp_path):
    run = [f"run_dir={tmp_path / 'run'}", "model=tiny"] if command == "t2t-train" else []
    result = run_command(command, "problem=ocr_rendered_text", *run, *args,
                         f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert message in lines[0]
    assert not (tmp_path / "data").exists()  # told before datagen spent any time
