"""The table every run ends with: metrics per problem, then a few example decodes."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any


def console() -> Any:
    """A console for tables: a terminal's own width; piped or logged output unwrapped, so that
    every row stays on one line for grep and for readers of CI logs."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=100_000)


def print_report(module: Any, trainer: Any, examples: int = 3) -> None:
    """The metrics table, a few example decodes of each problem (an image or a sound is
    written next to the run and shown as its file), and the commands to try next."""
    from rich.table import Table

    from t2t.metrics import HIGHER_IS_BETTER

    out = console()
    run_dir = Path(trainer.default_root_dir)
    metrics = trainer.callback_metrics
    table = Table(title=f"metrics after {trainer.global_step} steps")
    for column in ("problem", "metric", "value", "better"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for problem in module.problems:
        loss = metrics.get(f"val/{problem.name}/loss")
        if loss is not None:
            table.add_row(problem.name, "val loss", f"{float(loss):.4f}", "lower")
        for side in ("encoder", "decoder"):  # adaptive depth (model.recurrence=act)
            steps = metrics.get(f"val/{problem.name}/ponder_steps_{side}")
            if steps is not None:
                table.add_row(problem.name, f"ponder steps, {side}", f"{float(steps):.2f}", "-")
        for name, value in module.latest_metrics.get(problem.name, {}).items():
            better = "higher" if HIGHER_IS_BETTER.get(name, True) else "lower"
            table.add_row(problem.name, name, f"{value:.4f}", better)
    out.print(table)
    if module.skipped_batches:
        out.print(f"skipped {module.skipped_batches} batches with a non-finite loss "
                  f"(on_nonfinite_loss=skip)")
    first_input = None
    for problem in module.problems:
        decoded = module.examples.get(problem.name, [])
        if not decoded or examples < 1:
            continue
        # Evenly spaced over what validation decoded (short to long).
        picks = sorted({round(i * (len(decoded) - 1) / max(1, examples - 1))
                        for i in range(examples)})
        table = Table(title=f"{problem.name}: example decodes (of {len(decoded)} decoded)")
        for column in ("input", "prediction", "reference"):
            table.add_column(column, overflow="fold")
        for source, prediction, reference in (decoded[i] for i in picks):
            shown = shown_input(source, run_dir / "examples" / problem.name)
            first_input = first_input or (problem.name, shown)
            # Several references (captions, say) are one cell.
            references = [reference] if isinstance(reference, str) else reference
            table.add_row(shown, str(prediction), " | ".join(map(str, references)))
        out.print(table)
    print_next_steps(run_dir, first_input)


def shown_input(source: Any, folder: Path) -> str:
    """An example's input as text: text as it is; a stored file (StoredInput) written to
    `folder` and shown as that file's path."""
    from t2t.lit_module import StoredInput

    if not isinstance(source, StoredInput):
        return str(source)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.key}.{source.extension}"
    path.write_bytes(source.data)
    return str(path)


def print_next_steps(run_dir: Path, example: tuple[str, str] | None) -> None:
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    problem, shown = example or ("NAME", "...")
    print(f"next: decode your own input: t2t-decode problem={problem} ckpt={checkpoint} "
          f"input={shlex.quote(shown)}\n"
          f"      train on real data: t2t-train experiment=translate_deen_multi30k "
          f"(downloads Multi30k; problem.raw_dir=DIR for a local copy)\n"
          f"      add your own problem: a class in a file, usr_dir=FILE (README: Your own "
          f"problem)")
