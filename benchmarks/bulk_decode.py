"""Transcribing a speaker's FSDD recordings: one t2t-decode call for all of them against one
call per recording (what t2t-decode did before it took folders and lists), with the same
checkpoint, files and settings. The transcripts of both must be the same.

    python benchmarks/bulk_decode.py [--ckpt RUN/checkpoints/last.ckpt | --train-minutes 5]
        [--speaker george] [--single 500] [--beam-size 4]

Without --ckpt, spoken_digits_fsdd is trained first for --train-minutes (only the decoding
is timed; a short run decodes as fast as a long one). --single N times the first N
recordings one call each (500: all of one speaker). Appends one JSON line to --results and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

from budget import SHARED, hms, run, script


def decode_call(ckpt: Path, input_file: Path, beam_size: int) -> tuple[list[str], float]:
    """The output lines of one t2t-decode call, and its wall-clock seconds."""
    start = time.perf_counter()
    result = subprocess.run([script("t2t-decode"), "problem=spoken_digits_fsdd", f"ckpt={ckpt}",
                             f"input_file={input_file}", f"decode.beam_size={beam_size}"],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"t2t-decode failed on {input_file}:\n{result.stderr[-2000:]}")
    return result.stdout.splitlines(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--raw-dir", type=Path, default=SHARED / "fsdd")
    parser.add_argument("--speaker", default="george")
    parser.add_argument("--single", type=int, default=500,
                        help="recordings decoded one call each (the first N)")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--run-dir", default="outputs/bench-bulk-decode")
    parser.add_argument("--results", type=Path, default=Path("outputs/bench-bulk-decode.jsonl"))
    args = parser.parse_args()

    recordings = sorted((args.raw_dir / "recordings").glob(f"*_{args.speaker}_*.wav"))
    if not recordings:
        raise SystemExit(f"no recordings of {args.speaker} in {args.raw_dir / 'recordings'}; "
                         f"pass --raw-dir (a copy of FSDD) and --speaker")
    ckpt = args.ckpt
    if ckpt is None:
        run([script("t2t-train"), "experiment=spoken_digits_fsdd",
             f"problem.raw_dir={args.raw_dir}", f"trainer.max_time={hms(args.train_minutes)}",
             "trainer.enable_progress_bar=false", f"run_dir={args.run_dir}"])
        ckpt = Path(args.run_dir) / "checkpoints" / "last.ckpt"
    listing = Path(args.run_dir) / f"{args.speaker}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{p.resolve()}\n" for p in recordings))

    bulk, bulk_seconds = decode_call(ckpt, listing, args.beam_size)
    by_file = dict(line.split("\t", 1) for line in bulk)
    singles = recordings[:args.single]
    single_seconds, differ = 0.0, []
    for number, path in enumerate(singles, 1):
        (line,), seconds = decode_call(ckpt, path.resolve(), args.beam_size)
        single_seconds += seconds
        if line != by_file[str(path.resolve())]:
            differ.append(path.name)
        if number % 50 == 0:
            print(f"{number}/{len(singles)} single calls, {single_seconds:.0f} s", flush=True)

    per_file_single = single_seconds / len(singles)
    record = {"speaker": args.speaker, "recordings": len(recordings), "ckpt": str(ckpt),
              "beam_size": args.beam_size, "one_call_s": round(bulk_seconds, 1),
              "single_calls": len(singles), "single_calls_s": round(single_seconds, 1),
              "speedup": round(per_file_single * len(recordings) / bulk_seconds, 1),
              "transcripts_differ": differ, "machine": platform.processor() or platform.machine()}
    with open(args.results, "a") as out:
        out.write(json.dumps(record) + "\n")
    print(f"\n{len(recordings)} recordings of {args.speaker}, beam size {args.beam_size}\n")
    print("| how | calls | seconds | seconds a recording |")
    print("|---|---|---|---|")
    print(f"| one call, a list of every recording | 1 | {bulk_seconds:.1f} | "
          f"{bulk_seconds / len(recordings):.3f} |")
    print(f"| one call a recording | {len(singles)} | {single_seconds:.1f} | "
          f"{per_file_single:.3f} |")
    print(f"\nspeed-up: {record['speedup']}x; transcripts that differ: "
          f"{', '.join(differ) or 'none'} of {len(singles)}")


if __name__ == "__main__":
    main()
