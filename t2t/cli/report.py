"""The table every run ends with: metrics per problem, then a few example decodes."""

from __future__ import annotations

from typing import Any


def console() -> Any:
    """A console for tables: a terminal's own width; piped or logged output unwrapped, so that
    every row stays on one line for grep and for readers of CI logs."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=100_000)


def print_report(module: Any, trainer: Any, examples: int = 3) -> None:
    from rich.table import Table

    out = console()
    metrics = trainer.callback_metrics
    table = Table(title=f"metrics after {trainer.global_step} steps")
    table.add_column("problem")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for problem in module.problems:
        loss = metrics.get(f"val/{problem.name}/loss")
        if loss is not None:
            table.add_row(problem.name, "val loss", f"{float(loss):.4f}")
        for name, value in module.latest_metrics.get(problem.name, {}).items():
            table.add_row(problem.name, name, f"{value:.4f}")
    out.print(table)
    if module.skipped_batches:
        out.print(f"skipped {module.skipped_batches} batches with a non-finite loss "
                  f"(on_nonfinite_loss=skip)")
    for problem in module.problems:
        decoded = module.examples.get(problem.name, [])
        if not decoded or examples < 1:
            continue
        # Evenly spaced over what validation decoded (short to long).
        picks = sorted({round(i * (len(decoded) - 1) / max(1, examples - 1))
                        for i in range(examples)})
        rows = [decoded[i] for i in picks]
        table = Table(title=f"{problem.name}: example decodes (of {len(decoded)} decoded)")
        for column in ("input", "prediction", "reference"):
            table.add_column(column, overflow="fold")
        for source, prediction, reference in rows:
            # Several references (captions, say) are one cell.
            references = [reference] if isinstance(reference, str) else reference
            table.add_row(str(source), str(prediction), " | ".join(map(str, references)))
        out.print(table)
