"""How long drawing one picture takes: greedy KV-cached decoding of a PixelModality target of
`height` x `width` pixels (every pixel a token, the length forced so that an untrained model
draws all of it; the speed does not depend on the weights).

    python benchmarks/draw_speed.py [--models tiny,mini,small] [--sizes 28x28,16x16,16x48]
        [--repeats 3]

Prints one table: model, picture, tokens, seconds a picture (the best of --repeats), batch 1,
on this machine's CPU (or the GPU with --device cuda).
"""

from __future__ import annotations

import argparse
import time

import torch

from modalities import PixelModality, TextModality
from t2t.inference import decode_ids
from t2t.model import PRESETS, T2TModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mini,small")
    parser.add_argument("--sizes", default="28x28,16x16,16x48")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    text = TextModality(vocab="char", alphabet="0123456789 ")
    print("| model | picture (h x w) | tokens | seconds a picture |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        for size in args.sizes.split(","):
            height, width = map(int, size.split("x"))
            pixels = PixelModality(height=height, levels=8, max_width=width)
            model = T2TModel(PRESETS[name], [(text, pixels)]).eval().to(args.device)
            inputs = text.load(text.encode("4 0 7"))[None].to(args.device)
            pad = torch.zeros_like(inputs, dtype=torch.bool)
            tokens = height * width
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                with torch.no_grad():
                    (ids,) = decode_ids(model, 0, inputs, pad, beam_size=1, max_length=tokens,
                                        min_length=tokens)
                best = min(best, time.perf_counter() - start)
            assert len(ids) == tokens
            print(f"| {name} | {height} x {width} | {tokens} | {best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
