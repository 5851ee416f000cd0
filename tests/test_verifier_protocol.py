"""Verifier-guided decoding is an opt-in protocol: a problem of a user's own (sums checked by
computing them) takes part in it from a usr_dir file, with a metric of its own, and trains,
decodes by search and evaluates through the command-line tools; t2t knows nothing of it."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from modalities import TextModality
from t2t import (
    ConstrainedDecoding,
    FormatsPredictions,
    GuidedSearch,
    Problem,
    UserError,
    Verifier,
    register_metric,
)
from t2t.inference import decode_raw, default_best_of, search
from t2t.metrics import HIGHER_IS_BETTER, METRICS, get_metric
from t2t.model import PRESETS, T2TModel
from t2t.problem import constraint_for, prediction_line, search_hooks

from .conftest import run_command

ADDITION = '''
"""Sums of two numbers, checked by computing them: a verifier-guided problem of a user's own."""

import os
import random
import time

import torch

from modalities import TextModality
from t2t import Problem, register_metric, register_problem


def answer(inputs):
    left, right = inputs.split("+")
    return int(left) + int(right)


def closeness(inputs, prediction):
    """1.0 for the sum, less the farther the prediction is from it; 0.0 for no number."""
    if not prediction.isdigit():
        return 0.0
    return 1.0 / (1 + abs(int(prediction) - answer(inputs)))


@register_metric("sum_correct")
def sum_correct(predictions, references):
    """The share of predictions that are the sum of their reference ("12+34")."""
    return sum(closeness(refs if isinstance(refs, str) else refs[0], p) == 1.0
               for p, refs in zip(predictions, references, strict=True)) / max(1, len(predictions))


@register_problem("checked_addition")
class CheckedAddition(Problem):
    """Add two numbers; the answers are checked by computing them."""

    inputs = targets = TextModality(vocab="char", alphabet="0123456789+")
    metrics = ("sum_correct",)

    def __init__(self, *, max_digits: int = 2, train_size: int = 200, eval_size: int = 8,
                 seed: int = 0):
        self.max_digits = max_digits
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        self.seed = seed

    def generate_samples(self, split):
        rng = random.Random(f"{self.seed}-{split}")
        for _ in range(self.sizes[split]):
            a, b = (rng.randint(0, 10 ** self.max_digits - 1) for _ in range(2))
            sample = {"inputs": f"{a}+{b}", "targets": str(a + b)}
            if split != "train":
                sample["references"] = [f"{a}+{b}"]
            yield sample

    # Verifier
    def verify(self, inputs, prediction):
        return closeness(inputs, prediction)

    # ConstrainedDecoding: no "+" in an answer.
    def decoding_constraint(self, inputs, inputs_pad):
        plus = self.targets.encode_ids("+")[0]

        def allowed(prefix):
            mask = torch.ones(prefix.size(0), self.targets.vocab_size, dtype=torch.bool)
            mask[:, plus] = False
            return mask

        return allowed

    # GuidedSearch
    def quick_candidates(self, inputs):
        """Digit by digit without carrying, for numbers of one length; none for others."""
        left, right = inputs.split("+")
        if len(left) != len(right):
            return []
        return ["".join(str((int(a) + int(b)) % 10) for a, b in zip(left, right))]

    def model_covers(self, inputs):
        return all(len(number) <= self.max_digits for number in inputs.split("+"))

    def refine(self, inputs, candidates, deadline, *, seed=0):
        """A walk over numbers from the best candidate: add or take 1, 10 or 100, or drop the
        last digit, whichever the verifier likes best, until one verifies or time is up."""
        log = os.environ.get("ADDITION_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{inputs}\\t{candidates!r}\\n")
        best = max(candidates, key=lambda c: self.verify(inputs, c))
        number = int(best) if best.isdigit() else 0
        while self.verify(inputs, str(number)) < 1.0 and time.monotonic() < deadline:
            steps = [number // 10] + [number + s for s in (1, -1, 10, -10, 100, -100)
                                      if number + s >= 0]
            number = max(steps, key=lambda n: self.verify(inputs, str(n)))
        return str(number)

    # FormatsPredictions
    def format_prediction(self, inputs, prediction):
        verdict = "verified" if self.verify(inputs, prediction) == 1.0 else "wrong"
        return f"{inputs}={prediction}\\t{verdict}"
'''


# -- the protocols in process, with problems that are not registered -----------------------------


class Plain(Problem):
    """Beam search only."""

    inputs = targets = TextModality(vocab="char", alphabet="0123456789+")


class OnlyVerifies(Plain):
    """A verifier and nothing else: the search samples and keeps the best."""

    def verify(self, inputs: Any, prediction: Any) -> float:
        return float(prediction == "7")


class HalfGuided(OnlyVerifies):
    """quick_candidates without model_covers and refine."""

    def quick_candidates(self, inputs: Any) -> list[str]:
        return ["7"]


def test_protocols_are_opt_in_by_their_methods():
    plain, verifier, half = Plain(), OnlyVerifies(), HalfGuided()
    for protocol in (Verifier, ConstrainedDecoding, GuidedSearch, FormatsPredictions):
        assert not isinstance(plain, protocol)
    assert isinstance(verifier, Verifier) and not isinstance(verifier, GuidedSearch)
    assert default_best_of(plain, None) == 0 and default_best_of(verifier, None) == 64
    assert default_best_of(plain, 3) == 3
    # The core's defaults where a problem lacks a protocol.
    assert constraint_for(plain, None, None) is None
    assert prediction_line(plain, "1+2", 3) == "3"
    hooks = search_hooks(verifier)
    assert hooks.quick_candidates("1+2") == [] and hooks.model_covers("1+2")
    assert hooks.refine("1+2", ["4", "5"], 0.0) == "4"
    # Part of a protocol is an error, not three methods of which two are silently ignored.
    with pytest.raises(UserError, match="defines quick_candidates but not model_covers, refine"):
        search_hooks(half)


def test_search_needs_a_verifier_and_samples_without_guidance():
    plain, verifier = Plain(), OnlyVerifies()
    model = T2TModel(PRESETS["tiny"], [(plain.inputs, plain.targets)]).eval()
    loaded = plain.inputs.load(plain.inputs.encode("3+4"))
    with pytest.raises(UserError, match="has no verifier .* decode.best_of=0"):
        search(model, plain, 0, loaded, best_of=4)
    with pytest.raises(UserError, match="search without a model starts from"):
        search(None, verifier, 0, loaded, best_of=4)
    calls = []
    real_verify = verifier.verify
    verifier.verify = lambda inputs, prediction: calls.append(prediction) or real_verify(
        inputs, prediction)
    prediction, = decode_raw(model, verifier, 0, ["3+4"], best_of=4, max_length=8)
    assert isinstance(prediction, str) and prediction in calls and 1 <= len(calls) <= 4
    # Beam search where the problem has no verifier, and best_of=None leaves it to the problem.
    assert len(decode_raw(model, plain, 0, ["3+4"], best_of=None, max_length=8)) == 1


@pytest.fixture
def metrics_restored():
    saved = dict(METRICS), dict(HIGHER_IS_BETTER)
    yield
    for registry, old in zip((METRICS, HIGHER_IS_BETTER), saved, strict=True):
        registry.clear()
        registry.update(old)


def test_register_metric_by_name_twice_and_misspelt(metrics_restored):
    @register_metric("digits_right", higher_is_better=True)
    def digits_right(predictions, references):
        return 1.0

    @register_metric(higher_is_better=False)
    def digits_wrong(predictions, references):
        return 0.0

    assert get_metric("digits_right") is digits_right and HIGHER_IS_BETTER["digits_right"]
    assert get_metric("digits_wrong") is digits_wrong and not HIGHER_IS_BETTER["digits_wrong"]
    # The same definition again (a usr_dir imported again) replaces the older one.
    register_metric("digits_right")(digits_right)

    def other(predictions, references):
        return 0.5

    with pytest.raises(UserError, match="metric 'digits_right' is registered twice"):
        register_metric("digits_right")(other)
    with pytest.raises(UserError, match="unknown metric 'digit_right'; did you mean "
                                        "digits_right.*register_metric"):
        get_metric("digit_right")


# -- a usr_dir problem through the command-line tools ---------------------------------------------


@pytest.mark.timeout(400)
def test_usr_dir_verifier_trains_decodes_by_search_and_evaluates(tmp_path, monkeypatch):
    (tmp_path / "addition.py").write_text(ADDITION)
    log = tmp_path / "search.log"
    monkeypatch.setenv("ADDITION_LOG", str(log))
    common = ("usr_dir=addition.py", "problem=checked_addition", f"data_dir={tmp_path / 'data'}")
    run_dir = tmp_path / "run"
    trained = run_command(
        "t2t-train", *common, "model=tiny", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "data.max_tokens=64",
        "eval.search_best_of=0",  # validation greedy: the search log below is the decode's
        f"run_dir={run_dir}", cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # Validation decoded under the problem's constraint and scored with its own metric.
    assert "sum_correct" in trained.stdout, trained.stdout[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    # 12+34: the quick candidate verifies; 18+25: refined from it (33 -> 43); 7+25: no quick
    # candidate, so the model's samples (best of 4) are where the walk starts.
    (tmp_path / "sums.txt").write_text("12+34\n18+25\n7+25\n")
    decoded = run_command("t2t-decode", *common, f"ckpt={checkpoint}", "input_file=sums.txt",
                          "decode.best_of=4", "decode.max_length=8", "decode.time_budget_s=30",
                          cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    assert decoded.stdout.splitlines() == [
        "12+34=46\tverified", "18+25=43\tverified", "7+25=32\tverified"]
    refined = [line.split("\t") for line in log.read_text().splitlines()]
    assert refined[0] == ["18+25", "['33']"] and len(refined) == 2, refined
    sums, sampled = refined[1][0], ast.literal_eval(refined[1][1])
    assert sums == "7+25" and 1 <= len(sampled) <= 4, refined
    assert all("+" not in candidate for candidate in sampled)  # the constraint held
    log.unlink()

    # A search stops at the first answer that verifies: the budget is an upper bound.
    evaluated = run_command("t2t-eval", *common, f"ckpt={checkpoint}", "decode.best_of=4",
                            "decode.max_length=8", "decode.time_budget_s=30", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "search: best of 4" in " ".join(evaluated.stdout.split())  # the title wraps
    assert re.search(r"sum_correct\W+1\.0000", evaluated.stdout), evaluated.stdout
    assert "verified 8/8" in evaluated.stdout


def test_the_core_names_no_problem_domain():
    """t2t/ (code and shipped configs) knows RNA design only through the protocols above: the
    problem, its search, its metrics and its experiment configs live in problems/."""
    from .conftest import REPO

    files = [p for p in (REPO / "t2t").rglob("*") if p.suffix in (".py", ".yaml")]
    assert len(files) > 30
    naming = [p.relative_to(REPO) for p in files
              if re.search(r"rna|vienna|nucleotide", p.read_text(), flags=re.IGNORECASE)]
    assert not naming
