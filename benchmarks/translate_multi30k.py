"""Multi30k de->en end to end within a wall-clock budget: datagen, train, eval on test2016.

    python benchmarks/translate_multi30k.py --minutes 30 [--model small] [--trainer cpu]
        [--raw-dir ../shared/datasets/multi30k] [--run-dir outputs/bench-multi30k]

Prints one table: training minutes, steps, target tokens/s (mean of the logged values),
and detokenized sacreBLEU / chrF on test2016 with beam search. Re-running with the same
--run-dir resumes training (the budget counts from the start of each call).
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = HERE.parent.parent / "shared" / "datasets" / "multi30k"


def run(command: list[str]) -> str:
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", default="small")
    parser.add_argument("--trainer", default="cpu")
    parser.add_argument("--raw-dir", default=str(DEFAULT_RAW) if DEFAULT_RAW.is_dir() else None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-dir", default="outputs/bench-multi30k")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()

    problem = ["problem=translate_deen_multi30k"]
    if args.raw_dir:
        problem.append(f"problem.raw_dir={args.raw_dir}")
    seconds = int(args.minutes * 60)
    budget = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    common = [*problem, f"data_dir={args.data_dir}"]
    start = time.perf_counter()
    run([script("t2t-train"), "experiment=translate_deen_multi30k", *common,
         f"model={args.model}", f"trainer={args.trainer}", f"trainer.max_time={budget}",
         "trainer.enable_progress_bar=false", f"run_dir={args.run_dir}", *args.overrides])
    train_minutes = (time.perf_counter() - start) / 60

    checkpoint = Path(args.run_dir) / "checkpoints" / "last.ckpt"
    output = run([script("t2t-eval"), *common, f"ckpt={checkpoint}", "split=test",
                  f"decode.beam_size={args.beam_size}"])
    scores = dict(re.findall(r"│ (bleu|chrf)\s+│\s+([\d.]+)", output))

    logs = sorted(Path(args.run_dir, "csv").glob("version_*/metrics.csv"))[-1]
    rows = list(csv.DictReader(open(logs)))
    speeds = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    steps = max(int(r["step"]) for r in rows) + 1
    print()
    print("| model | trainer | train min | steps | target tok/s | BLEU test2016 | chrF |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.trainer} | {train_minutes:.1f} | {steps} | "
          f"{sum(speeds) / max(1, len(speeds)):.0f} | {scores.get('bleu', '?')} | "
          f"{scores.get('chrf', '?')} |")


if __name__ == "__main__":
    main()
