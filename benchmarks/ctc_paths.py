"""What has a checkpoint's encoder learned to align? Its greedy CTC reading of a validation
split next to the attention decoder's, for a problem read in input order (OCR, Morse, speech).

CTC decoding here: the argmax of `encoder_logits` at each input position, repeats merged,
blanks (PAD) dropped. Prints CER and exact match of both readings, then the CTC argmax path of
the first few samples, `_` for a blank: a path that emits everything at one position and blanks
elsewhere has found a shortcut rather than an alignment.

    python benchmarks/ctc_paths.py RUN/checkpoints/last.ckpt [--problem NAME] [--samples 200]
"""

from __future__ import annotations

import argparse

import torch

from t2t.inference import decode_loaded, load_checkpoint
from t2t.metrics import get_metric
from t2t.registry import discover
from t2t.tokens import PAD


def ctc_paths(model, index: int, loaded: list[torch.Tensor], collate) -> list[list[int]]:
    """Per input, the argmax id at each of its own positions (the problem token excluded)."""
    inputs, pad = collate(loaded)
    with torch.no_grad():
        logits, inputs_pad = model.encoder_logits(index, *model.encode(index, inputs, pad))
    best = logits.argmax(-1)
    return [row[~row_pad].tolist() for row, row_pad in zip(best, inputs_pad, strict=True)]


def collapse(path: list[int]) -> list[int]:
    return [i for t, i in enumerate(path) if i != PAD and (t == 0 or i != path[t - 1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--problem", help="the checkpoint's problem (default: its first)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args()
    discover()
    model, problems = load_checkpoint(args.ckpt)
    names = [p.name for p in problems]
    index = names.index(args.problem) if args.problem else 0
    problem = problems[index]
    samples = list(problem.generate_samples("validation"))[: args.samples]
    loaded = [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in samples]
    references = [s["targets"] for s in samples]
    attention = decode_loaded(model, problem, index, loaded, beam_size=1)
    paths = ctc_paths(model, index, loaded, problem.inputs.collate)
    ctc = [problem.targets.decode(collapse(path)) for path in paths]
    cer, exact = get_metric("cer"), get_metric("exact_match")
    print(f"{problem.name}, {len(samples)} validation samples")
    print("| reading | CER | exact match |\n|---|---|---|")
    for name, predictions in (("attention decoder (greedy)", attention), ("CTC (greedy)", ctc)):
        print(f"| {name} | {cer(predictions, references):.3f} | "
              f"{exact(predictions, references):.3f} |")
    for reference, path in list(zip(references, paths, strict=True))[: args.show]:
        shown = "".join("_" if i == PAD else problem.targets.decode([i]) or "?" for i in path)
        print(f"{reference!r:>14}  {shown}")


if __name__ == "__main__":
    main()
