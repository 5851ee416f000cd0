"""Metrics by name: known values, multiple references, input checks, and misspelt names.
(Problems' own metrics, register_metric: test_verifier_protocol.py, test_rna.py.)"""

from __future__ import annotations

import pytest

from t2t.errors import UserError
from t2t.metrics import (
    HIGHER_IS_BETTER,
    LIKELIHOOD_METRICS,
    METRICS,
    bleu,
    cer,
    chrf,
    exact_match,
    get_metric,
    wer,
)

SENTENCES = ["the cat sat on the mat", "a dog runs in the park", "zwei Männer im Freien"]
BUILT_IN = ["bleu", "cer", "chrf", "exact_match", "wer"]  # problems register others


def test_identical_strings_score_perfectly():
    assert bleu(SENTENCES, SENTENCES) == pytest.approx(100.0)
    assert chrf(SENTENCES, SENTENCES) == pytest.approx(100.0)
    assert exact_match(SENTENCES, SENTENCES) == 1.0
    assert cer(SENTENCES, SENTENCES) == 0.0
    assert wer(SENTENCES, SENTENCES) == 0.0


def test_known_error_rates():
    # One substituted word of four, one substituted character of four.
    assert wer(["the cat sat down"], ["the dog sat down"]) == pytest.approx(0.25)
    assert cer(["abcd"], ["abce"]) == pytest.approx(0.25)
    # Corpus-level: errors over all reference words (1 of 4 + 0 of 4).
    assert wer(["the cat sat down", "a b c d"], ["the dog sat down", "a b c d"]) == pytest.approx(
        0.125
    )
    # A fraction, not a percentage, and it can exceed 1 when the prediction is longer.
    assert wer(["x y z w v"], ["a"]) == pytest.approx(5.0)


def test_known_exact_match_and_bleu_values():
    assert exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert exact_match(["a b"], ["a  b"]) == 0.0  # exact means exact
    assert bleu(["completely unrelated words here"], ["the cat sat on the mat"]) < 5.0
    partial = bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert 20.0 < partial < 100.0
    assert 0.0 < chrf(["the cat sat on a mat"], ["the cat sat on the mat"]) < 100.0


def test_multiple_references_are_accepted():
    refs = [["a dog lay on a rug", "the cat sat on the mat"], "a dog runs in the park"]
    predictions = ["the cat sat on the mat", "a dog runs in the park"]
    # Matching any one reference is a match.
    assert exact_match(predictions, refs) == 1.0
    assert exact_match(["a dog lay on a rug"], [("x", "a dog lay on a rug")]) == 1.0
    assert bleu(predictions, refs) == pytest.approx(100.0)
    assert chrf(predictions, refs) == pytest.approx(100.0)
    # A second reference can only help BLEU.
    single = bleu(["the cat sat on a mat"], ["the cat lay on a rug"])
    multi = bleu(["the cat sat on a mat"], [["the cat lay on a rug", "the cat sat on a mat"]])
    assert multi > single and multi == pytest.approx(100.0)
    # Error rates have no multi-reference form: they score against the first reference.
    assert wer(["a b c d"], [["a b c x", "a b c d"]]) == pytest.approx(0.25)
    assert cer(["abcd"], [("abcd", "zzzz")]) == 0.0


@pytest.mark.parametrize("name", BUILT_IN)
def test_length_mismatch_raises(name):
    metric = get_metric(name)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        metric(["a b"], ["a b", "c d"])


def test_get_metric_by_name():
    assert set(BUILT_IN) <= set(METRICS)
    for name, function in METRICS.items():
        assert get_metric(name) is function
    assert set(HIGHER_IS_BETTER) == set(METRICS) | set(LIKELIHOOD_METRICS)
    assert not HIGHER_IS_BETTER["perplexity"]
    assert HIGHER_IS_BETTER["bleu"] and not HIGHER_IS_BETTER["wer"]
    assert [name for name in BUILT_IN if HIGHER_IS_BETTER[name]] == ["bleu", "chrf",
                                                                      "exact_match"]


def test_misspelt_metric_suggests_the_right_one():
    with pytest.raises(UserError, match=r"unknown metric 'bleau'.*did you mean bleu") as error:
        get_metric("bleau")
    assert "chrf" in str(error.value)  # and lists the known metrics
    with pytest.raises(UserError, match="exact_match"):
        get_metric("exact_matches")
