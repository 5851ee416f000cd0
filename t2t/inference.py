"""Use a trained checkpoint without Lightning: rebuild the model, decode raw inputs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from t2t import decoding
from t2t.errors import UserError
from t2t.model import ModelConfig, T2TModel
from t2t.problem import Problem
from t2t.registry import problems as registry


def load_checkpoint(path: str | Path) -> tuple[T2TModel, list[Problem]]:
    """The model (eval mode, CPU) and the problems it was trained on, with their vocabularies."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass ckpt=RUN_DIR/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {error}") from None
    info = checkpoint.get("t2t") if isinstance(checkpoint, dict) else None
    if not info:
        raise UserError(f"{path} is not a t2t checkpoint (no 't2t' section)")
    problems = [_rebuild_problem(spec) for spec in info["problems"]]
    model = T2TModel(ModelConfig(**info["model"]), [(p.inputs, p.targets) for p in problems])
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    return model.eval(), problems


def _rebuild_problem(spec: dict[str, Any]) -> Problem:
    problem = registry.get(spec["name"])(**spec["options"])
    with tempfile.TemporaryDirectory() as tmp:
        for role, vocab in spec["vocab"].items():
            file = Path(tmp) / Path(vocab["file"]).name
            file.write_bytes(vocab["data"])
            getattr(problem, role).restore(file)
    for role, key in spec["keys"].items():
        if getattr(problem, role).key != key:
            raise UserError(f"problem {problem.name}: the {role} modality rebuilt from the "
                            f"checkpoint has key {getattr(problem, role).key}, not {key}; was "
                            f"the problem's code changed since training?")
    return problem


def select_problem(problems: list[Problem], name: str, ckpt: str | Path) -> int:
    names = [p.name for p in problems]
    if name not in names:
        raise UserError(f"checkpoint {ckpt} was trained on {', '.join(names)}, not {name}; "
                        f"pass problem={names[0]}")
    return names.index(name)


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def decode_raw(model: T2TModel, problem: Problem, index: int, raw_inputs: list[Any], *,
               beam_size: int = 4, length_penalty: float = 0.6, max_length: int = 256
               ) -> list[Any]:
    """Raw inputs -> raw predictions (strings for text targets)."""
    loaded = [problem.inputs.load(problem.inputs.encode(raw)) for raw in raw_inputs]
    return decode_loaded(model, problem, index, loaded, beam_size=beam_size,
                         length_penalty=length_penalty, max_length=max_length)


@torch.no_grad()
def decode_loaded(model: T2TModel, problem: Problem, index: int, loaded: list[torch.Tensor], *,
                  beam_size: int, length_penalty: float, max_length: int) -> list[Any]:
    inputs, inputs_pad = problem.inputs.collate(loaded)
    device = next(model.parameters()).device
    ids = decode_ids(model, index, inputs.to(device), inputs_pad.to(device), beam_size=beam_size,
                     length_penalty=length_penalty, max_length=max_length)
    return [problem.targets.decode(row) for row in ids]


def decode_ids(model: T2TModel, index: int, inputs: torch.Tensor, inputs_pad: torch.Tensor, *,
               beam_size: int, max_length: int, length_penalty: float = 0.6) -> list[list[int]]:
    """Predicted target ids for a batch of problem `index` (greedy when beam_size is 1)."""
    decoder = model.decoder(index)
    rows = inputs.shape[0]
    state = decoder.start(inputs, inputs_pad, max_length)
    if beam_size > 1:
        ids, _ = decoding.beam_search(decoder, state, batch_size=rows, beam_size=beam_size,
                                      max_length=max_length, length_penalty=length_penalty)
    else:
        ids = decoding.greedy(decoder, state, batch_size=rows, max_length=max_length)
    return decoding.strip(ids)
