"""Problem base class: what a task declares, and nothing more; and the opt-in protocols of
problems decoded by a verifier-guided search."""

from __future__ import annotations

import copy
import inspect
import random
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from t2t.decoding import both
from t2t.errors import UserError, unknown_name
from t2t.modality import ConstrainsOutput, Modality

if TYPE_CHECKING:
    from t2t.decoding import Allowed


class Problem:
    """A task mapping raw inputs of one modality to raw targets of another.

    Subclass it, register it with `@register_problem("name")`, and declare:
      - `inputs`, `targets`: Modality instances (class attributes, or set in `__init__`
        when they depend on options)
      - `splits`, `metrics` (names from `t2t.metrics`)
      - options as keyword-only `__init__` arguments with types and defaults
      - `generate_samples(split)`, yielding `{"inputs": raw, "targets": raw}`; it must be
        deterministic for a given split and options (datagen resumes by replaying it)
    Optional: `targets_in_input_order`, and the methods of the decoding protocols
    below, each opt-in by defining its methods (no base class to inherit): `Verifier`
    (`verify`: decoding becomes a verifier-guided search), `ConstrainedDecoding`,
    `GuidedSearch` and `FormatsPredictions`. A problem's own metrics are registered with
    `t2t.metrics.register_metric` in its module.
    The first line of the class docstring is the description `t2t-problems` shows.
    """

    name: ClassVar[str] = ""  # set by @register_problem
    inputs: Modality
    targets: Modality
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    metrics: ClassVar[tuple[str, ...]] = ()
    # True where the targets follow the order of the inputs (reading a line, transcribing
    # speech): training then adds a CTC loss on the encoder, `optim.ctc_weight` of the loss.
    targets_in_input_order: ClassVar[bool] = False
    # Options that choose how predictions are checked (the model a Verifier asks), not the
    # data or the model: they stay out of the shards' fingerprint and the checkpoint, and
    # t2t-decode and t2t-eval take them from their command line.
    checking_options: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **options: Any) -> Problem:
        # Done here rather than in __init__ so that subclasses need not call super().__init__.
        self = super().__new__(cls)
        values = cls._check_options(args, options)
        self.options = {k: v for k, v in values.items() if k not in cls.checking_options}
        self.checking = {k: v for k, v in values.items() if k in cls.checking_options}
        # Each instance gets its own modalities: fitting a vocabulary must not leak into
        # other instances. One memo keeps `inputs is targets` (a joint vocabulary) intact.
        memo: dict[int, Any] = {}
        for role in ("inputs", "targets"):
            modality = getattr(cls, role, None)
            if isinstance(modality, Modality):
                setattr(self, role, copy.deepcopy(modality, memo))
        return self

    def generate_samples(self, split: str) -> Iterator[dict[str, Any]]:
        """Yield {"inputs": raw, "targets": raw} for one split."""
        raise NotImplementedError(f"{type(self).__name__}.generate_samples")

    @classmethod
    def option_specs(cls) -> dict[str, tuple[Any, Any]]:
        """Option name -> (type annotation, default), from the keyword arguments of __init__."""
        if cls.__init__ is object.__init__:
            return {}
        hints = typing.get_type_hints(cls.__init__)
        specs = {}
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if param.kind is param.POSITIONAL_ONLY:
                raise TypeError(f"{cls.__name__}: problem options must be keyword arguments")
            default = None if param.default is param.empty else param.default
            specs[param.name] = (hints.get(param.name, Any), default)
        return specs

    @classmethod
    def _check_options(cls, args: tuple, options: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise TypeError(f"{cls.__name__} takes options as keyword arguments only")
        specs = cls.option_specs()
        for key in options:
            if key not in specs:
                known = ", ".join(specs) or "none"
                raise unknown_name("option", key, specs, f"its options: {known}",
                                   where=f" for problem {cls.problem_name()}")
        values = {name: options.get(name, default) for name, (_, default) in specs.items()}
        for name, value in values.items():
            annotation = specs[name][0]
            if typing.get_origin(annotation) is typing.Literal and value not in typing.get_args(
                annotation
            ):
                choices = ", ".join(map(str, typing.get_args(annotation)))
                raise UserError(f"problem {cls.problem_name()}: option {name}={value!r} "
                                f"is not one of: {choices}")
        return values

    @classmethod
    def problem_name(cls) -> str:
        from t2t.registry import snake_case

        return cls.name or snake_case(cls.__name__)

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls)
        return doc.splitlines()[0] if doc and cls.__doc__ else ""


# -- decoding protocols ---------------------------------------------------------------------------
# A problem takes part in one by defining its methods; the core checks with isinstance (the
# protocols are runtime-checkable) and does without them where a problem lacks them.


@runtime_checkable
class Verifier(Protocol):
    """A problem whose predictions can be checked without a reference (a design that must
    fold, a sum that can be computed). Its decoding is `t2t.inference.search` by default:
    sampling best-of-N, stopping at the first prediction that verifies."""

    def verify(self, inputs: Any, prediction: Any) -> float:
        """Score a prediction for raw inputs, 1.0 = correct, lower = worse (0.0 at worst)."""
        ...


@runtime_checkable
class ConstrainedDecoding(Protocol):
    """A problem that restricts which tokens may follow a prefix, in every decoding (beam
    search, sampling, validation)."""

    def decoding_constraint(self, inputs: Any, inputs_pad: Any) -> Allowed | None:
        """`allowed(prefix) -> mask` for decoding a collated batch of inputs (see
        t2t.decoding), or None for no constraint."""
        ...


@runtime_checkable
class GuidedSearch(Protocol):
    """A `Verifier` that helps its search: candidates of its own, and a search that improves
    on them. All three methods, or none (a search without them samples only)."""

    def quick_candidates(self, inputs: Any) -> list[Any]:
        """Predictions the problem builds without the model in a few milliseconds (a
        heuristic), verified before any sampling: where one already verifies, sampling would
        only spend the time budget. Without GuidedSearch: none."""
        ...

    def model_covers(self, inputs: Any) -> bool:
        """Whether a model trained on this problem has seen inputs like these, so that its
        samples are worth their share of a search's time budget. Without GuidedSearch:
        always."""
        ...

    def refine(self, inputs: Any, candidates: list[Any], deadline: float, *,
               seed: int = 0) -> Any:
        """Improve on candidates (best first) by search until `deadline` (time.monotonic()),
        randomised by `seed`; called when none of them verified. Without GuidedSearch: the
        first candidate."""
        ...


@runtime_checkable
class FormatsPredictions(Protocol):
    """A problem with its own output line for t2t-decode (the default: str(prediction))."""

    def format_prediction(self, inputs: Any, prediction: Any) -> str:
        """One output line of t2t-decode for a prediction of raw inputs."""
        ...


class _Unguided:
    """GuidedSearch's defaults, for a verifier without search methods of its own."""

    def quick_candidates(self, inputs: Any) -> list[Any]:
        return []

    def model_covers(self, inputs: Any) -> bool:
        return True

    def refine(self, inputs: Any, candidates: list[Any], deadline: float, *,
               seed: int = 0) -> Any:
        return candidates[0]


_GUIDED_SEARCH_METHODS = ("quick_candidates", "model_covers", "refine")


def search_hooks(problem: Any) -> GuidedSearch:
    """The problem itself where it is a GuidedSearch, else the defaults (no quick candidates,
    every input covered, no refinement). A problem with only some of the three methods is an
    error: the others would be ignored without a word."""
    if isinstance(problem, GuidedSearch):
        return problem
    some = [m for m in _GUIDED_SEARCH_METHODS if callable(getattr(problem, m, None))]
    if some:
        missing = [m for m in _GUIDED_SEARCH_METHODS if m not in some]
        raise UserError(f"problem {problem.name} defines {', '.join(some)} but not "
                        f"{', '.join(missing)}: a guided search (t2t.problem.GuidedSearch) "
                        f"needs quick_candidates, model_covers and refine, or none of them")
    return _Unguided()


def constraint_for(problem: Any, inputs: Any, inputs_pad: Any) -> Allowed | None:
    """The decoding constraint for a collated batch: the problem's (ConstrainedDecoding) and
    its target modality's (t2t.modality.ConstrainsOutput) together, or None without either."""
    own = (problem.decoding_constraint(inputs, inputs_pad)
           if isinstance(problem, ConstrainedDecoding) else None)
    shape = (problem.targets.output_constraint()
             if isinstance(problem.targets, ConstrainsOutput) else None)
    return both(own, shape)


def prediction_line(problem: Any, inputs: Any, prediction: Any) -> str:
    """t2t-decode's output line for a prediction: the problem's format, or str(prediction);
    one line whatever it holds (a sampled line break comes out as a backslash and n)."""
    if isinstance(problem, FormatsPredictions):
        line = problem.format_prediction(inputs, prediction)
    else:
        line = str(prediction)
    return line.replace("\r", "\\r").replace("\n", "\\n")


def resolve_raw_dir(raw_dir: str | Path | None, problem_name: str) -> Path:
    """Where a problem's raw files live: the given raw_dir, or a per-problem download cache."""
    if raw_dir:
        return Path(raw_dir).expanduser()
    return Path("~/.cache/t2t/raw").expanduser() / problem_name


def holdout(records: Sequence[Any], split: str, size: int, seed: int) -> list[Any]:
    """The training or validation part of records that have no validation set of their own:
    validation is a seeded sample of min(size, 10%) of them, training is the rest."""
    size = min(size, len(records) // 10)
    held = set(random.Random(seed).sample(range(len(records)), size))
    return [r for i, r in enumerate(records) if (i in held) == (split == "validation")]
