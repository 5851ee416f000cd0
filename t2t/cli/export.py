"""t2t-export: a checkpoint's problems as torch.export programs, an encoder and a decoder step
each (t2t/export.py), traced with a few samples of each problem's own data."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from t2t.cli.common import run_hydra
from t2t.errors import UserError


def examples(problem: Any, count: int = 8) -> list[Any]:
    """The shortest and the longest of a few samples of the problem's first split, loaded:
    two sizes, so that export keeps lengths free."""
    split = next(s for s in ("validation", "test", "train") if s in problem.splits)
    samples = list(itertools.islice(problem.generate_samples(split), count))
    if not samples:
        raise UserError(f"problem {problem.name} has no {split} samples to trace the export "
                        f"with")
    encoded = sorted((problem.inputs.encode(s["inputs"]) for s in samples),
                     key=problem.inputs.length)
    return [problem.inputs.load(data) for data in (encoded[0], encoded[-1])]


def export(config: Any) -> None:
    from t2t.cli.common import build_problem
    from t2t.export import export_problem, save
    from t2t.inference import load_checkpoint, select_problem

    model, problems = load_checkpoint(config.ckpt)
    if model.config.recurrence != "none":
        raise UserError(f"{config.ckpt} has model.recurrence={model.config.recurrence}; "
                        f"t2t-export writes models of fixed layers (recurrence=none) only: "
                        f"decode this one with t2t-decode or t2t-serve")
    chosen = range(len(problems))
    if config.get("problem") is not None:
        requested = build_problem(config.problem)
        chosen = [select_problem(problems, requested.name, config.ckpt, requested)]
    for index in chosen:
        problem = problems[index]
        folder = Path(config.output) / problem.name
        encoder, step = export_problem(model, problem, index, examples(problem),
                                       config.max_length)
        save(folder, encoder, step)
        print(f"t2t-export: {problem.name} -> {folder}/encoder.pt2, step.pt2")


def main() -> None:
    run_hydra("t2t-export", "export", export)


if __name__ == "__main__":
    main()
