"""t2t-datagen: write a problem's WebDataset shards (and vocabularies) to data_dir."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from t2t.cli.common import build_problems, run_hydra


def datagen(config: Any) -> None:
    from t2t.datagen import generate

    problems, _ = build_problems(config.problem)  # a mixture: every member's shards
    for problem in problems:
        generate(problem, config.data_dir, **config.datagen, command=same_options(sys.argv))


def same_options(argv: list[str]) -> str:
    """This command line without its datagen.task_id: what a sliced run's messages tell the
    user to run with another task_id (the slices, the vocab step and the merge take the same
    options)."""
    args = [a for a in argv[1:] if a.lstrip("+~").partition("=")[0] != "datagen.task_id"]
    return shlex.join(["t2t-datagen", *args])


def main() -> None:
    run_hydra("t2t-datagen", "datagen", datagen)


if __name__ == "__main__":
    main()
