"""Speech->text on a CPU budget: spoken_digits_fsdd with one speaker held out entirely,
trained for --minutes, then evaluated on that speaker's utterances (the test split):
WER, CER and exact match.

    python benchmarks/speech_to_text.py --minutes 30 [--test-speaker george]
        [--raw-dir ../shared/datasets/fsdd] [--run-dir outputs/bench-fsdd]
"""

from __future__ import annotations

import argparse

from budget import SHARED, train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--test-speaker", default="george")
    parser.add_argument("--raw-dir", default=str(SHARED / "fsdd")
                        if (SHARED / "fsdd").is_dir() else None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-dir", default="outputs/bench-fsdd")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()

    problem = ["problem=spoken_digits_fsdd", f"problem.test_speakers=[{args.test_speaker}]"]
    if args.raw_dir:
        problem.append(f"problem.raw_dir={args.raw_dir}")
    result = train_and_evaluate(problem, ["experiment=spoken_digits_fsdd", *args.overrides],
                                minutes=args.minutes, run_dir=args.run_dir,
                                data_dir=args.data_dir, beam_size=args.beam_size)
    print()
    print("| problem | held-out speaker | train min | steps | WER | CER | exact match |")
    print("|---|---|---|---|---|---|---|")
    print(f"| spoken_digits_fsdd | {args.test_speaker} | {result['train_minutes']:.1f} | "
          f"{result['steps']} | {result['wer']:.4f} | {result['cer']:.4f} | "
          f"{result['exact_match']:.4f} |")


if __name__ == "__main__":
    main()
