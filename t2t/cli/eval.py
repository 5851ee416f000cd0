"""t2t-eval: decode a whole split with a trained checkpoint and print its metrics."""

from __future__ import annotations

import time
from typing import Any

from t2t.cli.common import build_problem, run_hydra
from t2t.errors import UserError
from t2t.metrics import LIKELIHOOD_METRICS, get_metric, prediction_metrics
from t2t.problem import Verifier


def evaluate(config: Any) -> None:
    from t2t.cli.decode import decode_settings
    from t2t.inference import load_checkpoint, resolve_device

    if config.decode.num_samples != 1:
        raise UserError(f"decode.num_samples={config.decode.num_samples}: t2t-eval scores one "
                        f"prediction per input; use t2t-decode for several")
    device = resolve_device(config.device)
    shards_problem = build_problem(config.problem)
    model, problems = load_checkpoint(config.ckpt, {shards_problem.name: shards_problem.checking})
    model.to(device)
    index, problem = chosen_problem(config, problems, shards_problem)
    samples = split_samples(config, shards_problem, problems[index])
    settings = decode_settings(config.decode, problems[index])
    start = time.perf_counter()
    scores = likelihood_scores(model, problem, index, samples, config.decode.batch_size)
    predictions = []
    if prediction_metrics(problem.metrics) or config.output_file or isinstance(problem, Verifier):
        # The trained problem decodes: its search hooks know what the model learned.
        predictions = decode_in_length_order(model, problems[index], index, samples,
                                             config.decode.batch_size, settings)
        references = [s.get("references") or problem.targets.decode(s["targets"])
                      for s in samples]
        scores.update({name: get_metric(name)(predictions, references)
                       for name in prediction_metrics(problem.metrics)})
    seconds = time.perf_counter() - start
    if config.output_file:
        with open(config.output_file, "w", encoding="utf-8") as f:
            f.writelines(f"{p}\n" for p in predictions)
    report(problem, config.split, samples, predictions, scores, settings, seconds, device)


def likelihood_scores(model: Any, problem: Any, index: int, samples: list[dict[str, Any]],
                      batch_size: int) -> dict[str, float]:
    """The problem's likelihood metrics (perplexity): the model's mean negative
    log-likelihood of the split's targets, EOS included, teacher-forced."""
    import torch
    import torch.nn.functional as F

    from t2t.inference import batches
    from t2t.lit_module import add_eos
    from t2t.tokens import PAD

    names = [name for name in problem.metrics if name in LIKELIHOOD_METRICS]
    if not names:
        return {}
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for chunk in batches(samples, batch_size):
            inputs, inputs_pad = problem.inputs.collate([s["inputs"] for s in chunk])
            targets, _ = problem.targets.collate([s["targets"] for s in chunk])
            targets = targets.to(device)
            logits = model(index, inputs.to(device), inputs_pad.to(device), targets)
            labels = add_eos(targets)
            nll += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                         ignore_index=PAD, reduction="sum"))
            tokens += int((labels != PAD).sum())
    return {name: LIKELIHOOD_METRICS[name](nll / max(tokens, 1)) for name in names}


def chosen_problem(config: Any, problems: list[Any], shards_problem: Any) -> tuple[int, Any]:
    """The checkpoint's problem index, and the problem that scores: the trained one, or a
    benchmark problem it stands in for (see select_problem). `shards_problem`: the problem
    whose split is read, made from the command line's options."""
    from t2t.inference import select_problem

    index = select_problem(problems, shards_problem.name, config.ckpt, shards_problem)
    problem = problems[index] if problems[index].name == shards_problem.name else shards_problem
    return index, problem


def split_samples(config: Any, shards_problem: Any, trained: Any) -> list[dict[str, Any]]:
    """The split's samples in split order, from shards made where they are missing, with the
    vocabulary the model was trained with."""
    from t2t.data import open_shards, read_split
    from t2t.datagen import prepare

    prepare(shards_problem, config.data_dir, **config.datagen)
    problem_dir = open_shards(shards_problem, config.data_dir, config.datagen)
    for role in ("inputs", "targets"):
        if getattr(shards_problem, role).key != getattr(trained, role).key:
            raise UserError(f"the shards in {problem_dir} use another {role} vocabulary than "
                            f"{config.ckpt}; pass the data_dir the model was trained with")
    if config.split not in shards_problem.splits:
        raise UserError(f"problem {shards_problem.name} has no split '{config.split}'; "
                        f"it has: {', '.join(shards_problem.splits)}")
    samples = list(read_split(shards_problem, problem_dir, config.split))
    return sorted(samples, key=lambda s: s["key"])


def decode_in_length_order(model: Any, problem: Any, index: int, samples: list[dict[str, Any]],
                           batch_size: int, settings: dict[str, Any]) -> list[Any]:
    """Predictions in the samples' order, decoded in batches of similar input length (little
    padding)."""
    from t2t.inference import batches, decode_loaded

    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["inputs"]))
    by_position: dict[int, Any] = {}
    for chunk in batches(order, batch_size):
        decoded = decode_loaded(model, problem, index, [samples[i]["inputs"] for i in chunk],
                                **settings)
        by_position.update(zip(chunk, decoded, strict=True))
    return [by_position[i] for i in range(len(samples))]


def report(problem: Any, split: str, samples: list[dict[str, Any]], predictions: list[Any],
           scores: dict[str, float], settings: dict[str, Any], seconds: float,
           device: Any) -> None:
    """The metrics table and, for a problem with a verifier, which predictions verify."""
    from rich.table import Table

    from t2t.cli.report import console
    from t2t.inference import default_best_of

    best_of = default_best_of(problem, settings["best_of"])
    how = (f"search: best of {best_of}, {settings['time_budget_s']} s each" if best_of
           else f"beam {settings['beam_size']}" if predictions else "teacher-forced")
    table = Table(title=f"{problem.name} / {split}: {len(samples)} examples, {how}, "
                        f"{seconds:.1f} s on {device}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in problem.metrics:
        table.add_row(name, f"{scores[name]:.4f}")
    console().print(table)
    if isinstance(problem, Verifier):
        failed = [number for number, (sample, prediction)
                  in enumerate(zip(samples, predictions, strict=True), start=1)
                  if problem.verify(problem.inputs.decode(sample["inputs"]), prediction) < 1.0]
        print(f"verified {len(samples) - len(failed)}/{len(samples)}; not verified (numbers in "
              f"split order, from 1): {', '.join(map(str, failed)) or 'none'}")


def main() -> None:
    run_hydra("t2t-eval", "eval", evaluate)


if __name__ == "__main__":
    main()
