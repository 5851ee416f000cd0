"""t2t-datagen: write a problem's WebDataset shards (and vocabularies) to data_dir."""

from __future__ import annotations

from typing import Any

from t2t.cli.common import build_problems, run_hydra


def datagen(config: Any) -> None:
    from t2t.datagen import generate

    problems, _ = build_problems(config.problem)  # a mixture: every member's shards
    for problem in problems:
        generate(problem, config.data_dir, **config.datagen)


def main() -> None:
    run_hydra("t2t-datagen", "datagen", datagen)


if __name__ == "__main__":
    main()
