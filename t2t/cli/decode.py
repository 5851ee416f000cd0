"""t2t-decode: predictions of a trained checkpoint for inputs from the command line, a file
or standard input; for image and audio problems, for one file or many (a folder, a glob, a
list of paths, a manifest)."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from t2t.cli.common import run_hydra
from t2t.errors import UserError

LISTS = (".txt", ".lst")  # one path a line; any other file is a JSONL manifest
MANIFEST_KEYS = ("file_name", "path", "audio_filepath")  # Hugging Face imagefolder, NeMo


def media_files(spec: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files `input_file` names for a problem whose inputs are files: a folder (its files
    with the modality's suffixes, in subfolders too, sorted), a glob, a list of paths or a
    manifest (relative paths from the list's folder), in their order."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not found:
            raise UserError(f"input_file={spec} matches no file")
        return found
    if not path.is_file():
        raise UserError(f"input_file {path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() in LISTS:
        return [path.parent / line.strip() for line in lines if line.strip()]
    files = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not JSON ({error.msg})") from None
        name = next((record[k] for k in MANIFEST_KEYS if isinstance(record, dict) and k in record),
                    None)
        if name is None:
            raise UserError(f"{path}:{number}: no {', '.join(MANIFEST_KEYS[:-1])} or "
                            f"{MANIFEST_KEYS[-1]} field naming the file")
        files.append(path.parent / name)
    return files


def stdin_batches(size: int) -> Iterator[list[str]]:
    """Lines of standard input in batches of what has arrived (at most `size`): piped lines
    are decoded in full batches, a line typed by a user as soon as it is typed."""
    tail = b""
    while chunk := os.read(sys.stdin.fileno(), 1 << 16):  # returns what is there, waits if none
        *lines, tail = (tail + chunk).split(b"\n")
        texts = [line.decode("utf-8").removesuffix("\r") for line in lines]
        for start in range(0, len(texts), size):
            yield texts[start:start + size]
    if tail:
        yield [tail.decode("utf-8").removesuffix("\r")]


def input_batches(config: Any, modality: Any) -> tuple[Iterator[list[Any]], int | None, bool]:
    """(batches of raw inputs, how many there are where known, whether each output line names
    its file). Text: `input`, the lines of `input_file`, or standard input as it comes. Files
    (image, audio): `input` or `input_file` is one file, or a folder, glob, list or manifest
    (`media_files`)."""
    from t2t.inference import batches

    size = config.decode.batch_size
    if modality.file_suffixes:
        spec = config.input if config.input is not None else config.input_file
        if spec is None:
            raise UserError(f"a {modality.kind} problem decodes files: pass input_file=PATH (a "
                            f"file, a folder, a glob, a .txt list or a .jsonl manifest)")
        spec = str(spec)
        if Path(spec).is_file() and Path(spec).suffix.lower() in modality.file_suffixes:
            return iter([[Path(spec)]]), 1, False
        files = media_files(spec, modality.file_suffixes)
        return batches(files, size), len(files), True
    if config.input is not None:
        return iter([[str(config.input)]]), 1, False
    if config.input_file is not None:
        path = Path(config.input_file)
        if not path.is_file():
            raise UserError(f"input_file {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        return batches(lines, size), len(lines), False
    return stdin_batches(size), None, False


def load_readable(chunk: list[Any], modality: Any, skip: bool
                  ) -> tuple[list[Any], list[Any]]:
    """(the raw inputs that could be read, their loaded values). With `skip`, one that cannot
    be read is named on stderr and left out; else its error is the command's."""
    readable, loaded = [], []
    for raw in chunk:
        try:
            loaded.append(modality.load(modality.encode(raw)))
            readable.append(raw)
        except UserError as error:
            if not skip:
                raise
            print(f"t2t-decode: skipped {error}", file=sys.stderr, flush=True)
    return readable, loaded


DEFAULT_MAX_LENGTH = 256  # decode.max_length=null, for targets of no bounded size


def decode_settings(decode: Any, problem: Any) -> dict[str, Any]:
    """The decode.* options that choose and tune the decoding algorithm for `problem`;
    max_length null: the size of the problem's largest target where its modality bounds it
    (a picture), else DEFAULT_MAX_LENGTH."""
    keys = ("beam_size", "length_penalty", "max_length", "min_length", "best_of",
            "temperature", "time_budget_s", "seed", "sample", "top_k", "top_p")
    settings = {key: decode[key] for key in keys}
    if settings["max_length"] is None:
        longest = problem.targets.longest_target
        settings["max_length"] = longest + 1 if longest else DEFAULT_MAX_LENGTH  # + EOS
    return settings


# What decode_n_loaded takes (decode.num_samples > 1: no search, one output per line).
N_SETTINGS = ("sample", "temperature", "top_k", "top_p", "beam_size", "length_penalty",
              "max_length", "min_length", "seed")


def decode_predictions(model: Any, problem: Any, index: int, loaded: list[Any],
                       decode: Any, prompts: list[Any] | None = None) -> list[list[Any]]:
    """decode.num_samples predictions for each loaded input (one, unless asked for more);
    `prompts`: the start of each output, given."""
    from t2t.inference import decode_loaded, decode_n_loaded

    settings = decode_settings(decode, problem)
    if decode.num_samples == 1:
        return [[p] for p in decode_loaded(model, problem, index, loaded, prompts=prompts,
                                           **settings)]
    return decode_n_loaded(model, problem, index, loaded, decode.num_samples, prompts=prompts,
                           **{k: settings[k] for k in N_SETTINGS})


def prompted(model: Any, problem: Any, chunk: list[str]) -> tuple[list[Any], list[Any]]:
    """A problem without inputs: (its empty inputs, each line of `chunk` as the start of the
    output, in target tokens)."""
    prompts = [problem.targets.load(problem.targets.encode(text)) for text in chunk]
    context = model.body.config.max_positions - 1  # the BOS takes a position
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise UserError(f"the prompt is {longest} tokens; this model reads at most {context} "
                        f"(model max_positions {context + 1}, one for the start)")
    return [problem.inputs.load(b"") for _ in chunk], prompts


def decode(config: Any) -> None:
    from modalities import NoInputs
    from t2t.cli.common import build_problem
    from t2t.inference import load_checkpoint, resolve_device, select_problem
    from t2t.modality import SavesPredictions
    from t2t.problem import prediction_line

    device = resolve_device(config.device)
    requested = build_problem(config.problem)
    model, problems = load_checkpoint(config.ckpt, {requested.name: requested.checking})
    model.to(device)
    index = select_problem(problems, requested.name, config.ckpt, requested)
    problem = problems[index] if problems[index].name == requested.name else requested
    trained = problems[index]  # it decodes: its search hooks know what the model learned
    no_inputs = isinstance(trained.inputs, NoInputs)  # `input` is then a prompt
    pictures = None  # targets that are files: written there, their paths printed
    if isinstance(trained.targets, SavesPredictions):
        pictures = Path(config.output_file or f"decoded{trained.targets.output_suffix}")
    if no_inputs and config.input is None and config.input_file is None:
        chunks, total, named = iter([[""]]), 1, False  # no prompt: from the start
    else:
        chunks, total, named = input_batches(config, trained.inputs)
    out = (open(config.output_file, "w", encoding="utf-8")
           if config.output_file and pictures is None else sys.stdout)
    single = total == 1 and config.decode.num_samples == 1
    unreadable, done, shown, written = 0, 0, time.monotonic(), 0
    try:
        for chunk in chunks:
            prompts = None
            if no_inputs:
                readable = chunk
                loaded, prompts = prompted(model, trained, chunk)
            else:
                readable, loaded = load_readable(chunk, trained.inputs, skip=named)
            unreadable += len(chunk) - len(readable)
            if not loaded:
                continue
            outputs = decode_predictions(model, trained, index, loaded, config.decode, prompts)
            for raw, predictions in zip(readable, outputs, strict=True):
                for prediction in predictions:
                    if pictures is not None:
                        path = pictures if single else pictures.with_name(
                            f"{pictures.stem}-{written}{pictures.suffix}")
                        trained.targets.save(prediction, path)
                        prediction, written = path, written + 1
                    line = prediction_line(problem, raw, prediction)
                    print(f"{raw}\t{line}" if named else line, file=out,
                          flush=out is sys.stdout)
            done += len(chunk)
            if total and total > len(chunk) and (time.monotonic() - shown > 10 or done == total):
                print(f"t2t-decode: {done}/{total} inputs", file=sys.stderr, flush=True)
                shown = time.monotonic()
    finally:
        if out is not sys.stdout:
            out.close()
    if unreadable:
        raise UserError(f"{unreadable} of {total} inputs could not be read (named above); "
                        f"the others were decoded")


def main() -> None:
    run_hydra("t2t-decode", "decode", decode)


if __name__ == "__main__":
    main()
