"""t2t-eval: decode a whole split with a trained checkpoint and print its metrics."""

from __future__ import annotations

from typing import Any

from t2t.cli.common import build_problem, run_hydra
from t2t.errors import UserError


def evaluate(config: Any) -> None:
    import time

    from rich.table import Table

    from t2t.cli.decode import decode_settings
    from t2t.cli.report import console
    from t2t.data import open_shards, read_split
    from t2t.datagen import prepare
    from t2t.inference import (
        batches,
        decode_loaded,
        default_best_of,
        load_checkpoint,
        resolve_device,
        select_problem,
    )
    from t2t.metrics import get_metric
    from t2t.problem import Verifier

    device = resolve_device(config.device)
    model, problems = load_checkpoint(config.ckpt)
    model.to(device)
    # The split's shards: made from the command line's problem options, with the
    # checkpoint's vocabulary (checked below).
    shards_problem = build_problem(config.problem)
    index = select_problem(problems, shards_problem.name, config.ckpt, shards_problem)
    # A benchmark problem the checkpoint's problem stands in for (select_problem) is
    # scored by its own metrics.
    problem = problems[index] if problems[index].name == shards_problem.name else shards_problem
    # Prepare (a local data_dir may still lack the split's shards), then set up.
    prepare(shards_problem, config.data_dir, **config.datagen)
    problem_dir = open_shards(shards_problem, config.data_dir, config.datagen)
    for role in ("inputs", "targets"):
        if getattr(shards_problem, role).key != getattr(problem, role).key:
            raise UserError(f"the shards in {problem_dir} use another {role} vocabulary than "
                            f"{config.ckpt}; pass the data_dir the model was trained with")
    if config.split not in shards_problem.splits:
        raise UserError(f"problem {problem.name} has no split '{config.split}'; "
                        f"it has: {', '.join(shards_problem.splits)}")
    samples = list(read_split(shards_problem, problem_dir, config.split))
    samples.sort(key=lambda s: s["key"])  # split order, for output_file
    start, predictions = time.perf_counter(), []
    # Sorting by length keeps padding low; results go back to split order.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["inputs"]))
    by_position: dict[int, Any] = {}
    for chunk in batches(order, config.decode.batch_size):
        # The trained problem decodes: its search hooks know what the model learned.
        decoded = decode_loaded(model, problems[index], index,
                                [samples[i]["inputs"] for i in chunk],
                                **decode_settings(config.decode))
        by_position.update(zip(chunk, decoded, strict=True))
    predictions = [by_position[i] for i in range(len(samples))]
    seconds = time.perf_counter() - start
    references = [s.get("references") or problem.targets.decode(s["targets"]) for s in samples]
    if config.output_file:
        with open(config.output_file, "w", encoding="utf-8") as f:
            f.writelines(f"{p}\n" for p in predictions)
    settings = decode_settings(config.decode)
    best_of = default_best_of(problem, settings["best_of"])
    how = (f"search: best of {best_of}, {settings['time_budget_s']} s each" if best_of
           else f"beam {settings['beam_size']}")
    table = Table(title=f"{problem.name} / {config.split}: {len(samples)} examples, {how}, "
                        f"{seconds:.1f} s on {device}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in problem.metrics:
        table.add_row(name, f"{get_metric(name)(predictions, references):.4f}")
    console().print(table)
    if isinstance(problem, Verifier):
        failed = [i + 1 for i, (sample, prediction) in enumerate(zip(samples, predictions,
                                                                      strict=True))
                  if problem.verify(problem.inputs.decode(sample["inputs"]), prediction) < 1.0]
        print(f"verified {len(samples) - len(failed)}/{len(samples)}; not verified (numbers in "
              f"split order, from 1): {', '.join(map(str, failed)) or 'none'}")


def main() -> None:
    run_hydra("t2t-eval", "eval", evaluate)


if __name__ == "__main__":
    main()
