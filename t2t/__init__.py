"""t2t: anything to anything with one Transformer."""

from t2t.errors import UserError
from t2t.metrics import register_metric
from t2t.modality import Modality
from t2t.problem import (
    ConstrainedDecoding,
    FormatsPredictions,
    GuidedSearch,
    Problem,
    Verifier,
)
from t2t.registry import register_problem

__version__ = "0.1.0"

__all__ = [
    "ConstrainedDecoding",
    "FormatsPredictions",
    "GuidedSearch",
    "Modality",
    "Problem",
    "UserError",
    "Verifier",
    "register_metric",
    "register_problem",
]
