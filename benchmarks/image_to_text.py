"""Image->text on a CPU budget: ocr_rendered_text and mnist_digit_strings, each trained for
--minutes, then evaluated on its test split (CER and sequence accuracy = exact match).

    python benchmarks/image_to_text.py --minutes 20 [--problems ocr_rendered_text,...]
"""

from __future__ import annotations

import argparse

from budget import SHARED, train_and_evaluate

RAW = {"mnist_digit_strings": SHARED / "mnist"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--problems", default="ocr_rendered_text,mnist_digit_strings")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-root", default="outputs/bench-image")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()

    rows = []
    for name in args.problems.split(","):
        problem = [f"problem={name}"]
        if name in RAW and RAW[name].is_dir():
            problem.append(f"problem.raw_dir={RAW[name]}")
        result = train_and_evaluate(problem, [f"experiment={name}", *args.overrides],
                                    minutes=args.minutes,
                                    run_dir=f"{args.run_root}/{name}", data_dir=args.data_dir,
                                    beam_size=args.beam_size)
        rows.append((name, result))
    print()
    print("| problem | train min | steps | CER | exact match |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['train_minutes']:.1f} | {r['steps']} | {r['cer']:.4f} | "
              f"{r['exact_match']:.4f} |")


if __name__ == "__main__":
    main()
