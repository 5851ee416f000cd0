"""Multi30k de->en end to end within a wall-clock budget: datagen, train, eval on test2016.

    python benchmarks/translate_multi30k.py --minutes 30 [--model small] [--trainer cpu]
        [--raw-dir ../shared/datasets/multi30k] [--run-dir outputs/bench-multi30k]

Prints one table: training minutes, steps, target tokens/s (mean of the logged values), and
detokenized sacreBLEU / chrF on test2016 with beam search. Re-running with the same --run-dir
resumes training (the budget counts from the start of each call).
"""

from __future__ import annotations

import argparse

from budget import SHARED, train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", default="small")
    parser.add_argument("--trainer", default="cpu")
    parser.add_argument("--raw-dir", default=str(SHARED / "multi30k")
                        if (SHARED / "multi30k").is_dir() else None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-dir", default="outputs/bench-multi30k")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()

    problem = ["problem=translate_deen_multi30k"]
    if args.raw_dir:
        problem.append(f"problem.raw_dir={args.raw_dir}")
    result = train_and_evaluate(
        problem, ["experiment=translate_deen_multi30k", f"model={args.model}",
                  f"trainer={args.trainer}", *args.overrides],
        minutes=args.minutes, run_dir=args.run_dir, data_dir=args.data_dir,
        beam_size=args.beam_size)
    print()
    print("| model | trainer | train min | steps | target tok/s | BLEU test2016 | chrF |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.trainer} | {result['train_minutes']:.1f} | {result['steps']} "
          f"| {result['target_tokens_per_s']:.0f} | {result.get('bleu', float('nan')):.2f} | "
          f"{result.get('chrf', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
