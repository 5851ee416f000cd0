"""t2t: anything to anything with one Transformer."""

from t2t.errors import UserError
from t2t.modality import Modality
from t2t.problem import Problem
from t2t.registry import register_modality, register_problem

__version__ = "0.1.0"

__all__ = ["Modality", "Problem", "UserError", "register_modality", "register_problem"]
