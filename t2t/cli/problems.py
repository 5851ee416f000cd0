"""t2t-problems [usr_dir=PATH]: list registered problems."""

from __future__ import annotations

import sys

from t2t.cli.common import argv_value, discover_from_argv, one_line_errors


def modality_names(problem_class: type) -> str:
    try:  # modalities may depend on options: ask a default instance
        problem = problem_class()
    except Exception as error:  # noqa: BLE001 - shown in the table, not hidden
        return f"(needs options: {error})"
    return f"{problem.inputs.describe()} -> {problem.targets.describe()}"


@one_line_errors
def main() -> None:
    from rich.table import Table

    from t2t.cli.report import console
    from t2t.registry import problems

    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return
    unknown = [a for a in argv if not a.startswith("usr_dir=")]
    if unknown:
        from t2t.errors import UserError

        raise UserError(f"t2t-problems takes only usr_dir=PATH, got {' '.join(unknown)}")
    discover_from_argv(argv)
    table = Table(title=f"{len(problems)} problems" + (
        f" (with {argv_value(argv, 'usr_dir')})" if argv_value(argv, "usr_dir") else ""))
    for column in ("problem", "inputs -> targets", "splits", "metrics", "description"):
        table.add_column(column, overflow="fold")
    for name in problems.names():
        cls = problems.get(name)
        table.add_row(name, modality_names(cls), ", ".join(cls.splits),
                      ", ".join(cls.metrics), cls.description())
    console().print(table)


if __name__ == "__main__":
    main()
