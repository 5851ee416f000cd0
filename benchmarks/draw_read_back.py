"""Text -> image, scored by a model that reads: a trained `draw_digit_strings` model draws
held-out digit strings, and a separately trained `mnist_digit_strings` model (the reader)
reads each drawing back; a drawing counts when the reader reads exactly the digits asked for.

    python benchmarks/draw_read_back.py --draw RUN/checkpoints/last.ckpt \
        --reader READER_RUN/checkpoints/last.ckpt [--count 200] [--best-of 8] [--pictures DIR]

Rows: the real test strips (quantised to the drawing's height and grey levels: what the
reader reads of real handwriting at that size, its ceiling here), greedy drawings, sampled
drawings (--temperature, 1 by default), and best-of-N (`decode.best_of=N` with the reader as
the verifier: N samples, the first read back kept). Each row is appended to --results as it
is measured and skipped when rerun with the same checkpoints and count. --pictures writes the
best-of-N drawings of the first three strings there, 4x enlarged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from budget import SHARED, appended

from t2t.inference import decode_loaded, load_checkpoint, select_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", required=True, help="a draw_digit_strings checkpoint")
    parser.add_argument("--reader", required=True, help="a mnist_digit_strings checkpoint")
    parser.add_argument("--raw-dir", default=str(SHARED / "mnist"))
    parser.add_argument("--count", type=int, default=200, help="test strings drawn")
    parser.add_argument("--best-of", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0, help="of the samples")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--results", default="benchmarks/results/draw_read_back.jsonl")
    parser.add_argument("--pictures", help="folder for three best-of-N drawings")
    args = parser.parse_args()

    name = "draw_digit_strings"
    model, problems = load_checkpoint(args.draw, {name: {"reader": args.reader}})
    index = select_problem(problems, name, args.draw)
    problem = problems[index]
    data = type(problem)(**{**problem.options, "raw_dir": args.raw_dir})
    samples = list(itertools.islice(data.generate_samples("test"), args.count))
    texts = [s["inputs"] for s in samples]
    loaded = [problem.inputs.load(problem.inputs.encode(t)) for t in texts]
    pixels = problem.targets
    max_length = pixels.longest_target + 1

    def in_batches(**settings) -> list[np.ndarray]:
        out = []
        for start in range(0, len(loaded), args.batch):
            out += decode_loaded(model, problem, index, loaded[start:start + args.batch],
                                 max_length=max_length, **settings)
        return out

    modes = {
        "real strips, quantised": lambda: [pixels.decode(pixels.load(pixels.encode(s["targets"])))
                                           for s in samples],
        "greedy": lambda: in_batches(beam_size=1, best_of=0),
        f"sampled (temperature {args.temperature:g})": lambda: in_batches(
            sample=True, temperature=args.temperature, best_of=0, seed=0),
        f"best of {args.best_of} (temperature {args.temperature:g}, reader verifies)": lambda:
            in_batches(best_of=args.best_of, temperature=args.temperature, time_budget_s=None,
                       seed=0),
    }
    results = Path(args.results)
    key = (str(args.draw), str(args.reader), args.count)
    done = appended(results, lambda r: (r["draw"], r["reader"], r["count"], r["mode"]))
    for mode, draw in modes.items():
        if (*key, mode) in done:
            continue
        start = time.perf_counter()
        drawings = draw()
        seconds = time.perf_counter() - start
        read = problem.verify.read(drawings)
        right = [r == "".join(t.split()) for r, t in zip(read, texts, strict=True)]
        record = {"draw": key[0], "reader": key[1], "count": key[2], "mode": mode,
                  "read_back": float(np.mean(right)),
                  "seconds_a_drawing": seconds / len(samples),
                  "misread": [f"{t} -> {r}" for t, r, ok in zip(texts, read, right, strict=True)
                              if not ok][:10]}
        with open(results, "a") as out:
            out.write(json.dumps(record) + "\n")
        done[(*key, mode)] = record
        print(f"{mode}: {record['read_back']:.3f} read back, "
              f"{record['seconds_a_drawing']:.2f} s a drawing", flush=True)
        if args.pictures and mode.startswith("best of"):
            save_pictures(drawings[:3], texts[:3], Path(args.pictures))
    print(f"\n{len(samples)} held-out strings, drawn by {args.draw}, read by {args.reader}\n")
    print("| drawings | read back | seconds a drawing |")
    print("|---|---|---|")
    for mode in modes:
        record = done[(*key, mode)]
        print(f"| {mode} | {record['read_back']:.3f} | {record['seconds_a_drawing']:.2f} |")


def save_pictures(drawings: list[np.ndarray], texts: list[str], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for drawing, text in zip(drawings, texts, strict=True):
        image = Image.fromarray(drawing)
        image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(
            folder / f"{''.join(text.split())}.png")


if __name__ == "__main__":
    main()
