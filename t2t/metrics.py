"""Metrics by name. Each takes predictions and references (a string, or a list of strings
when an example has several references) and returns one float.

Translation metrics come from sacreBLEU (detokenized, as its authors intend); error rates
from torchmetrics. Error rates are fractions (0.05 = 5%); BLEU and chrF are 0-100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from t2t.errors import unknown_name

References = Sequence[str | Sequence[str]]


def _as_lists(references: References) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _check(predictions: Sequence[str], references: References) -> list[list[str]]:
    refs = _as_lists(references)
    if len(predictions) != len(refs):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    return refs


def _transpose(refs: list[list[str]]) -> list[list[str]]:
    # sacreBLEU wants one list per reference *stream*; pad short rows by repeating their first.
    width = max((len(r) for r in refs), default=1)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


def bleu(predictions: Sequence[str], references: References) -> float:
    import sacrebleu

    refs = _check(predictions, references)
    return sacrebleu.corpus_bleu(list(predictions), _transpose(refs)).score


def chrf(predictions: Sequence[str], references: References) -> float:
    import sacrebleu

    refs = _check(predictions, references)
    return sacrebleu.corpus_chrf(list(predictions), _transpose(refs)).score


def exact_match(predictions: Sequence[str], references: References) -> float:
    refs = _check(predictions, references)
    if not refs:
        return 0.0
    return sum(p in r for p, r in zip(predictions, refs, strict=True)) / len(refs)


def _error_rate(function: Callable, predictions: Sequence[str], references: References) -> float:
    refs = _check(predictions, references)
    if not refs:
        return 0.0
    # Several references: score against the first (error rates have no multi-reference form).
    return float(function(list(predictions), [r[0] for r in refs]))


def cer(predictions: Sequence[str], references: References) -> float:
    from torchmetrics.functional.text import char_error_rate

    return _error_rate(char_error_rate, predictions, references)


def wer(predictions: Sequence[str], references: References) -> float:
    from torchmetrics.functional.text import word_error_rate

    return _error_rate(word_error_rate, predictions, references)


def solved(predictions: Sequence[str], references: References) -> float:
    """RNA design: the share of designs whose ViennaRNA MFE structure is the reference
    structure exactly (references are dot-bracket structures)."""
    return sum(d == 0.0 for d in _structure_distances(predictions, references)) / max(
        1, len(predictions))


def structure_distance(predictions: Sequence[str], references: References) -> float:
    """RNA design: mean Hamming distance between each design's MFE structure and the reference
    structure, over the structure's length (1.0 for a design of the wrong length)."""
    distances = _structure_distances(predictions, references)
    return sum(distances) / max(1, len(distances))


def _structure_distances(predictions: Sequence[str], references: References) -> list[float]:
    import RNA

    out = []
    for prediction, refs in zip(predictions, _check(predictions, references), strict=True):
        target = refs[0]
        if len(prediction) != len(target) or set(prediction) - set("ACGU"):
            out.append(1.0)
            continue
        folded, _ = RNA.fold(prediction)
        out.append(sum(a != b for a, b in zip(folded, target, strict=True)) / len(target))
    return out


METRICS: dict[str, Callable[[Sequence[str], References], float]] = {
    "bleu": bleu,
    "chrf": chrf,
    "exact_match": exact_match,
    "cer": cer,
    "wer": wer,
    "solved": solved,
    "structure_distance": structure_distance,
}

# Whether a bigger value is better, for tables and checkpoint selection.
HIGHER_IS_BETTER = {"bleu": True, "chrf": True, "exact_match": True, "cer": False, "wer": False,
                    "solved": True, "structure_distance": False}


def get_metric(name: str) -> Callable[[Sequence[str], References], float]:
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS, f"known: {', '.join(METRICS)}")
    return METRICS[name]
