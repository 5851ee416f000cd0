"""Use a trained checkpoint without Lightning: rebuild the model, decode raw inputs."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from t2t import decoding
from t2t.errors import UserError
from t2t.model import ModelConfig, T2TModel
from t2t.problem import Problem, Verifier, constraint_for, search_hooks
from t2t.registry import problems as registry


def resolve_device(name: str) -> torch.device:
    """decode.device: "auto" (the GPU when there is one, else the CPU), "cpu", "cuda", "cuda:1"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name}: no CUDA device on this machine; use device=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device={name}: t2t decodes on cpu or cuda; use device=auto")
    return device


class UnsafeCheckpoint(UserError):
    """A checkpoint holding Python objects that unpickling would have to import and call."""


def read_checkpoint(path: Path, mmap: bool = False) -> Any:
    """A checkpoint's contents, read as tensors and plain data only (torch's weights_only):
    checkpoints are downloaded and shared, and unpickling anything else can run code. Raises
    UnsafeCheckpoint for such a file, and torch's own error for one that is not a
    checkpoint at all (truncated, foreign)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch's weights-only refusal is an UnpicklingError
        # An import (a pickle GLOBAL) is how a pickle reaches code; other refusals are files
        # that are not checkpoints at all.
        imports = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not imports:
            raise
        raise UnsafeCheckpoint(
            f"refusing checkpoint {path}: it holds Python objects beyond tensors and plain "
            f"data ({imports[0]}), and loading them could run code; use checkpoints written "
            f"by t2t-train, from sources you trust") from None


def read_t2t_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint t2t-train wrote, read safely; one line for a file that carries code, cannot
    be read, or is not t2t's."""
    try:
        checkpoint = read_checkpoint(path)
    except UnsafeCheckpoint:
        raise
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}"
                        ) from None
    if not isinstance(checkpoint, dict) or not checkpoint.get("t2t"):
        raise UserError(f"{path} is not a t2t checkpoint (no 't2t' section)")
    return checkpoint


def load_checkpoint(path: str | Path, checking: dict[str, dict[str, Any]] | None = None
                    ) -> tuple[T2TModel, list[Problem]]:
    """The model (eval mode, CPU) and the problems it was trained on, with their vocabularies;
    `checking`: problem name -> its checking options (Problem.checking_options) for this use.
    The built-in problems and installed plugins are found here; a usr_dir problem needs
    `t2t.registry.discover(usr_dir)` first."""
    from t2t.registry import discover

    discover()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass ckpt=RUN_DIR/checkpoints/last.ckpt")
    checkpoint = read_t2t_checkpoint(path)
    info = checkpoint["t2t"]
    checking = checking or {}
    problems = [_rebuild_problem(spec, checking.get(spec["name"], {})) for spec in info["problems"]]
    model = T2TModel(ModelConfig(**info["model"]), [(p.inputs, p.targets) for p in problems])
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    return model.eval(), problems


def _rebuild_problem(spec: dict[str, Any], checking: dict[str, Any]) -> Problem:
    problem = registry.get(spec["name"])(**spec["options"], **checking)
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


def select_problem(problems: list[Problem], name: str, ckpt: str | Path,
                   problem: Problem | None = None) -> int:
    """Index of the checkpoint's problem `name`; or, for a benchmark (a problem without a
    train split) it was not trained on, of the one trained problem with the same input and
    target modalities, whose problem token then stands in for it. Another task with the same
    modalities (sort vs reverse) is an error: its token was never trained."""
    names = [p.name for p in problems]
    if name in names:
        return names.index(name)
    if problem is not None and "train" not in problem.splits:
        keys = (problem.inputs.key, problem.targets.key)
        same = [i for i, p in enumerate(problems) if (p.inputs.key, p.targets.key) == keys]
        if len(same) == 1:
            return same[0]
    raise UserError(f"checkpoint {ckpt} was trained on {', '.join(names)}, not {name}, and no "
                    f"problem it knows has the same modalities; pass problem={names[0]}")


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
def decode_raw(model: T2TModel, problem: Problem, index: int, raw_inputs: list[Any],
               **settings: Any) -> list[Any]:
    """Raw inputs -> raw predictions (strings for text targets); settings as decode_loaded."""
    loaded = [problem.inputs.load(problem.inputs.encode(raw)) for raw in raw_inputs]
    return decode_loaded(model, problem, index, loaded, **settings)


@torch.no_grad()
def decode_loaded(model: T2TModel, problem: Problem, index: int, loaded: list[torch.Tensor], *,
                  beam_size: int = 4, length_penalty: float = 0.6, max_length: int = 256,
                  best_of: int | None = 0, temperature: float = 1.0,
                  time_budget_s: float | None = None, seed: int = 0, sample: bool = False,
                  top_k: int = 0, top_p: float = 1.0, min_length: int = 0,
                  prompts: list[torch.Tensor] | None = None) -> list[Any]:
    """Predictions for loaded inputs: beam search (greedy at beam_size 1), or with best_of > 0
    the verifier-guided `search` for each input. best_of=None chooses: 64 for problems with a
    verifier (t2t.problem.Verifier), else beam search. sample=True draws one sample instead
    (temperature, top_k, top_p; reproducible by `seed`); EOS comes after `min_length` tokens.
    `prompts`: each output's first target tokens, given (the rest is decoded)."""
    best_of = 0 if sample and best_of is None else default_best_of(problem, best_of)
    if best_of > 0:
        if sample:
            raise UserError("decode.sample=true and decode.best_of > 0 both choose how to "
                            "decode; set one (decode.best_of=0 to sample)")
        if prompts is not None:
            raise UserError("a prompt and decode.best_of > 0 both choose how to decode; set "
                            "decode.best_of=0 to continue a prompt")
        return [search(model, problem, index, x, best_of=best_of, temperature=temperature,
                       time_budget_s=time_budget_s, max_length=max_length, seed=seed)
                for x in loaded]
    if sample:
        return [outputs[0] for outputs in decode_n_loaded(
            model, problem, index, loaded, 1, sample=True, temperature=temperature,
            top_k=top_k, top_p=top_p, max_length=max_length, min_length=min_length,
            seed=seed, prompts=prompts)]
    inputs, inputs_pad = _batch(model, problem, loaded)
    ids = decode_ids(model, index, inputs, inputs_pad, beam_size=beam_size,
                     length_penalty=length_penalty, max_length=max_length,
                     allowed=_constraint(problem, inputs, inputs_pad, prompts, max_length),
                     min_length=min_length)
    return [problem.targets.decode(row) for row in ids]


@torch.no_grad()
def decode_n_loaded(model: T2TModel, problem: Problem, index: int, loaded: list[torch.Tensor],
                    n: int, *, sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, beam_size: int = 4, length_penalty: float = 0.6,
                    max_length: int = 256, min_length: int = 0, seed: int = 0,
                    prompts: list[torch.Tensor] | None = None) -> list[list[Any]]:
    """n predictions per input: n samples (sample=True; all drawn in one batch), or the n best
    hypotheses of beam search, best first (n <= beam_size; fewer where the beam finished
    fewer)."""
    if n < 1:
        raise UserError(f"decode.num_samples={n}: ask for 1 or more")
    if not sample and n > beam_size:
        raise UserError(f"decode.num_samples={n} best hypotheses need decode.beam_size >= {n} "
                        f"(it is {beam_size}), or decode.sample=true for samples")
    inputs, inputs_pad = _batch(model, problem, loaded)
    if sample:  # each input n times in a row
        inputs, inputs_pad = (t.repeat_interleave(n, dim=0) for t in (inputs, inputs_pad))
    allowed = _constraint(problem, inputs, inputs_pad, prompts, max_length)
    decoder = model.decoder(index)
    rows = inputs.shape[0]
    state = decoder.start(inputs, inputs_pad, max_length)
    if not sample:
        hypotheses = decoding.n_best(decoder, state, rows, n, beam_size, max_length,
                                     length_penalty, allowed, min_length)
        return [[problem.targets.decode(ids) for ids, _ in row] for row in hypotheses]
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    try:
        ids = decoding.strip(decoding.sample(
            decoder, state, rows, max_length, temperature=temperature, top_k=top_k,
            generator=generator, allowed=allowed, min_length=min_length, top_p=top_p))
    except ValueError as error:  # temperature, top_k or top_p out of range
        raise UserError(f"decode: {error}") from None
    decoded = [problem.targets.decode(row) for row in ids]
    return [decoded[i:i + n] for i in range(0, rows, n)]


def _constraint(problem: Problem, inputs: torch.Tensor, inputs_pad: torch.Tensor,
                prompts: list[torch.Tensor] | None, max_length: int) -> decoding.Allowed | None:
    """The problem's decoding constraint, and the prompts' where there are prompts."""
    allowed = constraint_for(problem, inputs, inputs_pad)
    if prompts is None:
        return allowed
    longest = max((len(p) for p in prompts), default=0)
    if longest >= max_length:
        raise UserError(f"the prompt is {longest} tokens, and decode.max_length={max_length} "
                        f"leaves nothing to add; raise decode.max_length or shorten the prompt")
    padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True, padding_value=0)
    return decoding.both(allowed, decoding.forced_start(padded, problem.targets.vocab_size))


def _batch(model: T2TModel, problem: Problem, loaded: list[torch.Tensor]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loaded inputs collated on the model's device."""
    inputs, inputs_pad = problem.inputs.collate(loaded)
    device = next(model.parameters()).device
    return inputs.to(device), inputs_pad.to(device)


def default_best_of(problem: Problem, best_of: int | None) -> int:
    """decode.best_of as given, or for None: 64 for a Verifier, 0 (beam search) otherwise."""
    if best_of is None:
        return 64 if isinstance(problem, Verifier) else 0
    return best_of


def decode_ids(model: T2TModel, index: int, inputs: torch.Tensor, inputs_pad: torch.Tensor, *,
               beam_size: int, max_length: int, length_penalty: float = 0.6,
               allowed: decoding.Allowed | None = None, min_length: int = 0
               ) -> list[list[int]]:
    """Predicted target ids for a batch of problem `index` (greedy when beam_size is 1)."""
    decoder = model.decoder(index)
    rows = inputs.shape[0]
    state = decoder.start(inputs, inputs_pad, max_length)
    if beam_size > 1:
        ids, _ = decoding.beam_search(decoder, state, batch_size=rows, beam_size=beam_size,
                                      max_length=max_length, length_penalty=length_penalty,
                                      allowed=allowed, min_length=min_length)
    else:
        ids = decoding.greedy(decoder, state, batch_size=rows, max_length=max_length,
                              allowed=allowed, min_length=min_length)
    return decoding.strip(ids)


SAMPLES_PER_ROUND = 16
QUICK_REFINE_SHARE = 0.1  # of the time budget, refining the quick candidates before sampling
SAMPLING_SHARE = 0.25  # of the time budget, at most, until sampling stops


@torch.no_grad()
def search(model: T2TModel | None, problem: Problem, index: int, loaded: torch.Tensor, *,
           best_of: int, temperature: float = 1.0, time_budget_s: float | None = None,
           max_length: int = 256, seed: int = 0) -> Any:
    """Test-time compute for one input of a problem with a verifier (t2t.problem.Verifier),
    stopping at the first candidate that verifies (score 1.0):
    1. verify the problem's quick candidates, and refine them for QUICK_REFINE_SHARE of the
       time budget: where the heuristic is close, seconds of search finish it, and sampling
       would only spend the budget (on a design benchmark, a round of samples of a 400-token
       design took tens of seconds on a CPU);
    2. sample up to `best_of` candidates under the problem's decoding constraint, in rounds of
       SAMPLES_PER_ROUND, until SAMPLING_SHARE of the budget is spent;
    3. hand the quick candidates and the samples that score above them, best first, to
       `refine` for the rest of the budget.
    Quick candidates, `model_covers` and `refine` are the problem's where it is a
    t2t.problem.GuidedSearch; else there are none, every input is covered, and the best
    sample is the answer. model=None is the search without the model (step 2 skipped): the
    ablation that shows what the model adds. Step 2 is skipped too where `model_covers(raw)`
    says the model never saw such inputs (on that benchmark, samples beyond the trained
    lengths were worse starts than the quick candidates, and a round of them cost tens of
    seconds), unless the problem has no quick candidates: then the samples are all there is.
    A target may be as long as its input: max_length grows to its length + 1."""
    if not isinstance(problem, Verifier):
        unset = "".join(f" without problem.{name}" for name in problem.checking_options)
        raise UserError(f"problem {problem.name} has no verifier (a verify(inputs, prediction) "
                        f"method){unset}, so it cannot be decoded by search; use "
                        f"decode.best_of=0 (beam search)")
    hooks = search_hooks(problem)
    start = time.monotonic()
    deadline = start + time_budget_s if time_budget_s else math.inf
    raw = problem.inputs.decode(loaded)
    quick = {c: float(problem.verify(raw, c)) for c in hooks.quick_candidates(raw)}
    # The bar a sample must pass to be refined: the quick candidates as they come, not as
    # refined (a few seconds of refinement outscore nearly every sample).
    bar = max(quick.values(), default=-math.inf)
    if quick and bar < 1.0 and time_budget_s:
        refined = hooks.refine(raw, list(quick), start + QUICK_REFINE_SHARE * time_budget_s,
                               seed=seed)
        quick[refined] = float(problem.verify(raw, refined))
    for candidate, value in quick.items():
        if value >= 1.0:
            return candidate
    # Without quick candidates the samples are all there is, covered or not.
    sampling = model is not None and (hooks.model_covers(raw) or not quick)
    if not sampling and not quick:
        raise UserError(f"problem {problem.name}: a search without a model starts from the "
                        f"problem's quick_candidates, and it has none; pass a checkpoint "
                        f"(ckpt=...) or give the problem quick_candidates")
    samples = [] if not sampling else _samples(
        model, problem, index, loaded, raw, best_of=best_of, temperature=temperature,
        max_length=max_length, seed=seed, stop=start + SAMPLING_SHARE * (deadline - start))
    best, value = max(samples or quick.items(), key=lambda scored: scored[1])
    if value >= 1.0:
        return best
    # A sample is worth a walk only where the verifier ranks it above the quick candidates:
    # on the design benchmark, refining weaker samples failed where fresh heuristic starts
    # succeeded.
    worth = [*quick.items(), *((c, v) for c, v in samples if v > bar)]
    # Stable: a quick one wins a tie.
    starts = [c for c, _ in sorted(worth, key=lambda scored: scored[1], reverse=True)]
    if time.monotonic() >= deadline:  # no budget: no refinement, the best candidate as is
        return starts[0]
    # A new seed: the fresh starts of this refinement differ from those of step 1's.
    return hooks.refine(raw, starts, deadline, seed=seed + 1)


def _samples(model: T2TModel, problem: Problem, index: int, loaded: torch.Tensor, raw: Any, *,
             best_of: int, temperature: float, max_length: int, seed: int,
             stop: float) -> list[tuple[Any, float]]:
    """(sampled candidate, its score) for each distinct sample (by its tokens: a candidate
    may be a picture, which no dict can key), in rounds until one verifies, `best_of` are
    drawn, or the clock passes `stop` (time.monotonic()); the first round always runs."""
    scored: dict[tuple[int, ...], tuple[Any, float]] = {}
    rows = min(best_of, SAMPLES_PER_ROUND)
    max_length = max(max_length, len(loaded) + 1)
    device = next(model.parameters()).device
    inputs, inputs_pad = (t.to(device) for t in problem.inputs.collate([loaded] * rows))
    decoder = model.decoder(index)
    allowed = constraint_for(problem, inputs, inputs_pad)
    for round_ in range(math.ceil(best_of / rows)):
        if round_ and time.monotonic() >= stop:
            break
        state = decoder.start(inputs, inputs_pad, max_length)
        generator = torch.Generator(device=device).manual_seed(seed + round_)
        ids = decoding.sample(decoder, state, rows, max_length, temperature=temperature,
                              generator=generator, allowed=allowed)
        for tokens in decoding.strip(ids):
            if tuple(tokens) not in scored:
                candidate = problem.targets.decode(tokens)
                scored[tuple(tokens)] = candidate, float(problem.verify(raw, candidate))
        if max(value for _, value in scored.values()) >= 1.0:
            break
    return list(scored.values())
