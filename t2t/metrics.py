"""Metrics by name. Each takes predictions and references (a string, or a list of strings
when an example has several references) and returns one float.

Translation metrics come from sacreBLEU (detokenized, as its authors intend); error rates
from torchmetrics. Error rates are fractions (0.05 = 5%); BLEU and chrF are 0-100.
A problem module registers metrics of its own with `register_metric`:

    @register_metric("sum_correct")
    def sum_correct(predictions, references) -> float: ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from t2t.errors import UserError, unknown_name

References = Sequence[str | Sequence[str]]
Metric = Callable[[Sequence[str], References], float]

METRICS: dict[str, Metric] = {}
# Whether a bigger value is better, for tables and checkpoint selection.
HIGHER_IS_BETTER: dict[str, bool] = {}


def register_metric(name: str | Metric | None = None, *, higher_is_better: bool = True) -> Any:
    """Decorator: `@register_metric`, `@register_metric("name")` or
    `@register_metric("name", higher_is_better=False)`; the name defaults to the function's.
    Problems name metrics in their `metrics`; the function is returned unchanged. A name
    registered twice by different functions is an error (the same function defined again, as
    when a usr_dir file is imported again, replaces the older one)."""
    if callable(name):
        return _add(name, None, higher_is_better)
    return lambda function: _add(function, name, higher_is_better)


def _add(function: Metric, name: str | None, higher_is_better: bool) -> Metric:
    name = name or function.__name__
    old = METRICS.get(name)
    if old is not None and old is not function and (
            (old.__module__, old.__qualname__) != (function.__module__, function.__qualname__)):
        raise UserError(f"metric '{name}' is registered twice: by {old.__module__}."
                        f"{old.__qualname__} and by {function.__module__}."
                        f"{function.__qualname__}; rename one of them")
    METRICS[name] = function
    HIGHER_IS_BETTER[name] = higher_is_better
    return function


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS,
                           f"known: {', '.join(METRICS)} (a problem's module registers its own "
                           f"with t2t.metrics.register_metric)")
    return METRICS[name]


def as_lists(references: References) -> list[list[str]]:
    """Each example's references as a list (a single string becomes a list of one)."""
    return [[r] if isinstance(r, str) else list(r) for r in references]


def check_references(predictions: Sequence[str], references: References) -> list[list[str]]:
    """`as_lists(references)`, after checking there is one example of each per prediction."""
    refs = as_lists(references)
    if len(predictions) != len(refs):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    return refs


def _transpose(refs: list[list[str]]) -> list[list[str]]:
    # sacreBLEU wants one list per reference *stream*; pad short rows by repeating their first.
    width = max((len(r) for r in refs), default=1)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


@register_metric
def bleu(predictions: Sequence[str], references: References) -> float:
    import sacrebleu

    refs = check_references(predictions, references)
    return sacrebleu.corpus_bleu(list(predictions), _transpose(refs)).score


@register_metric
def chrf(predictions: Sequence[str], references: References) -> float:
    import sacrebleu

    refs = check_references(predictions, references)
    return sacrebleu.corpus_chrf(list(predictions), _transpose(refs)).score


@register_metric
def exact_match(predictions: Sequence[str], references: References) -> float:
    refs = check_references(predictions, references)
    if not refs:
        return 0.0
    return sum(p in r for p, r in zip(predictions, refs, strict=True)) / len(refs)


def _error_rate(function: Callable, predictions: Sequence[str], references: References) -> float:
    refs = check_references(predictions, references)
    if not refs:
        return 0.0
    # Several references: score against the first (error rates have no multi-reference form).
    return float(function(list(predictions), [r[0] for r in refs]))


@register_metric(higher_is_better=False)
def cer(predictions: Sequence[str], references: References) -> float:
    from torchmetrics.functional.text import char_error_rate

    return _error_rate(char_error_rate, predictions, references)


@register_metric(higher_is_better=False)
def wer(predictions: Sequence[str], references: References) -> float:
    from torchmetrics.functional.text import word_error_rate

    return _error_rate(word_error_rate, predictions, references)


# Scores of the model's likelihood of the references rather than of its predictions:
# validation and t2t-eval compute them from the mean negative log-likelihood of the target
# tokens (EOS included), through these functions.
LIKELIHOOD_METRICS: dict[str, Callable[[float], float]] = {"perplexity": math.exp}
HIGHER_IS_BETTER["perplexity"] = False


def prediction_metrics(names: Sequence[str]) -> list[str]:
    """Those of `names` scored on predictions (decoded), not on the likelihood."""
    return [name for name in names if name not in LIKELIHOOD_METRICS]
