"""text_lm: a problem without inputs (a language model of a user's text file): it trains,
alone and in a mixture, reports perplexity in validation and t2t-eval alike, and t2t-decode
samples from it with and without a prompt."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from .conftest import run_command

pytestmark = pytest.mark.xdist_group("text_lm")  # one worker trains the model once

WORDS = "the cat sat on a mat and dog ran to big red house".split()
FAST = ["model=tiny", "optim.lr=0.005", "optim.warmup_steps=10", "data.num_workers=0",
        "trainer.enable_progress_bar=false", "eval.examples=0"]


def corpus(folder: Path) -> Path:
    rng = random.Random(0)
    path = folder / "corpus.txt"
    path.write_text("".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + "\n"
                            for _ in range(600)))
    return path


def problem(text: Path) -> list[str]:
    return ["problem=text_lm", f"problem.train={text}", "problem.vocab_size=320",
            "problem.holdout_size=50"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str], str]:
    """(checkpoint, the problem's options and data_dir, t2t-train's output)."""
    folder = tmp_path_factory.mktemp("text_lm")
    options = [*problem(corpus(folder)), f"data_dir={folder / 'data'}"]
    result = run_command("t2t-train", *options, *FAST, "trainer.max_steps=80",
                         "trainer.val_check_interval=80", f"run_dir={folder / 'run'}",
                         cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run" / "checkpoints" / "last.ckpt", options, result.stdout


def perplexity(output: str) -> float:
    (value,) = re.findall(r"perplexity\s+│\s+([\d.]+)", output)
    return float(value)


@pytest.mark.timeout(900)
def test_it_learns_the_text_and_eval_reports_the_perplexity_validation_did(trained, tmp_path):
    ckpt, options, output = trained
    learned = perplexity(output)
    assert learned < 320 / 4, learned  # well below guessing among the 320 pieces
    evaluated = run_command("t2t-eval", *options, f"ckpt={ckpt}", "split=validation",
                            cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "teacher-forced" in evaluated.stdout
    assert math.isclose(perplexity(evaluated.stdout), learned, rel_tol=1e-3)


@pytest.mark.timeout(600)
def test_decode_samples_from_nothing_and_continues_a_prompt(trained, tmp_path):
    ckpt, _, _ = trained

    def decode(*options: str) -> list[str]:
        result = run_command("t2t-decode", "problem=text_lm", f"ckpt={ckpt}",
                             "decode.max_length=30", *options, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()

    samples = decode("decode.sample=true", "decode.num_samples=4")
    assert len(samples) == 4 and len(set(samples)) > 1, samples
    continued = decode("input=the big", "decode.sample=true", "decode.num_samples=3")
    assert len(continued) == 3 and all(line.startswith("the big") for line in continued)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red\ndog ran\n")
    greedy = decode(f"input_file={prompts}")
    assert len(greedy) == 2 and greedy[0].startswith("a red") and greedy[1].startswith(
        "dog ran")


@pytest.mark.timeout(600)
def test_text_lm_trains_in_a_mixture(tmp_path):
    text = corpus(tmp_path)
    member = f"{{name:text_lm,train:'{text}',vocab_size:320,holdout_size:50}}"
    result = run_command("t2t-train", "problem=mixture",
                         f"problem.members=[{member},algorithmic_reverse]", *FAST,
                         "trainer.max_steps=4", "trainer.val_check_interval=4",
                         f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                         cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"│ text_lm\s+│ perplexity\s+│\s+[\d.]+ │", result.stdout), result.stdout


@pytest.mark.timeout(600)
def test_text_lm_bad_inputs_are_one_line(trained, tmp_path):
    ckpt, _, _ = trained
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    result = run_command("t2t-datagen", *problem(empty), f"data_dir={tmp_path / 'data'}",
                         cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {empty}: no text (every line is empty); text_lm learns from the non-empty "
        f"lines")

    def refused(*options: str) -> str:
        result = run_command("t2t-decode", "problem=text_lm", f"ckpt={ckpt}", *options,
                             cwd=tmp_path)
        assert result.returncode == 1, result.stdout[-2000:]
        return result.stderr.strip().splitlines()[-1]

    long_prompt = " ".join(["the cat"] * 3000)
    assert re.fullmatch(r"error: the prompt is \d+ tokens; this model reads at most 4095 "
                        r"\(model max_positions 4096, one for the start\)",
                        refused(f"input={long_prompt}")), refused(f"input={long_prompt}")
    assert re.fullmatch(r"error: the prompt is \d+ tokens, and decode.max_length=3 leaves "
                        r"nothing to add; raise decode.max_length or shorten the prompt",
                        refused("input=the cat sat on a mat", "decode.max_length=3"))


@pytest.mark.timeout(600)
def test_the_export_of_a_language_model_continues_a_prompt_as_the_model_does(trained,
                                                                           tmp_path):
    import torch

    from t2t import decoding
    from t2t.export import ExportedDecoder
    from t2t.inference import decode_ids, load_checkpoint

    ckpt, _, _ = trained
    result = run_command("t2t-export", f"ckpt={ckpt}", f"output={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model, (problem,) = load_checkpoint(ckpt)
    prompts = [problem.targets.load(problem.targets.encode(text))
               for text in ("the big", "a", "")]
    inputs, inputs_pad = problem.inputs.collate([problem.inputs.load(b"")] * len(prompts))
    padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    start = decoding.forced_start(padded, problem.targets.vocab_size)
    eager = decode_ids(model, 0, inputs, inputs_pad, beam_size=1, max_length=20,
                       allowed=start)
    program = ExportedDecoder.load(tmp_path / "text_lm")
    ids = decoding.greedy(program, program.start(inputs, inputs_pad, 20), batch_size=3,
                          max_length=20, allowed=start)
    assert decoding.strip(ids) == eager
    assert problem.targets.decode(eager[0]).startswith("the big")
