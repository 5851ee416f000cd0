"""t2t-decode: predictions of a trained checkpoint for inputs from the command line, a file
or standard input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from t2t.cli.common import run_hydra
from t2t.errors import UserError


def read_inputs(config: Any, input_kind: str) -> list[Any]:
    """Text: one input per line. Media (image, audio): input_file (or input) is one file."""
    if config.input is not None:
        return [str(config.input)]
    if config.input_file is not None:
        path = Path(config.input_file)
        if not path.is_file():
            raise UserError(f"input_file {path} not found")
        if input_kind != "text":
            return [path]
        return path.read_text(encoding="utf-8").splitlines()
    return sys.stdin.read().splitlines()


def decode_settings(decode: Any) -> dict[str, Any]:
    """The decode.* options that choose and tune the decoding algorithm."""
    keys = ("beam_size", "length_penalty", "max_length", "best_of", "temperature",
            "time_budget_s", "seed")
    return {key: decode[key] for key in keys}


def decode(config: Any) -> None:
    from t2t.cli.common import build_problem
    from t2t.inference import batches, decode_raw, load_checkpoint, resolve_device, select_problem
    from t2t.problem import prediction_line

    device = resolve_device(config.device)
    model, problems = load_checkpoint(config.ckpt)
    model.to(device)
    requested = build_problem(config.problem)
    index = select_problem(problems, requested.name, config.ckpt, requested)
    problem = problems[index] if problems[index].name == requested.name else requested
    out = open(config.output_file, "w", encoding="utf-8") if config.output_file else sys.stdout
    try:
        for chunk in batches(read_inputs(config, problem.inputs.kind), config.decode.batch_size):
            # The trained problem decodes: its search hooks know what the model learned.
            predictions = decode_raw(model, problems[index], index, chunk,
                                     **decode_settings(config.decode))
            for raw, prediction in zip(chunk, predictions, strict=True):
                print(prediction_line(problem, raw, prediction), file=out,
                      flush=out is sys.stdout)
    finally:
        if out is not sys.stdout:
            out.close()


def main() -> None:
    run_hydra("t2t-decode", "decode", decode)


if __name__ == "__main__":
    main()
