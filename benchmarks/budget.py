"""Shared by the benchmark scripts: train a problem within a wall-clock budget, then evaluate.

Everything goes through the real commands (t2t-train, t2t-eval), as a user would run them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The local copies of the real datasets (../shared/datasets beside the checkout); on another
# machine, T2T_DATASETS names where they were copied.
SHARED = Path(os.environ.get("T2T_DATASETS")
              or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run(command: list[str]) -> str:
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def appended(path: Path, key: Callable[[dict], tuple]) -> dict[tuple, dict]:
    """A results file written one JSON line per measurement (so that a rerun skips what is
    there), by key; none if it does not exist yet."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {key(record): record for record in records}


def measure(job: Callable, todo: list, *, results: Path, workers: int,
            describe: Callable[[dict], str]) -> Iterator[dict]:
    """job(item) for each item of todo, `workers` at once (threads: a job forks its own
    process), each record appended to `results` and printed by `describe` as it comes."""
    with ThreadPoolExecutor(workers) as pool, open(results, "a") as out:
        for record in pool.map(job, todo):
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(describe(record), flush=True)
            yield record


def hms(minutes: float) -> str:
    seconds = int(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(problem: list[str], train: list[str], *, minutes: float, run_dir: str,
                       data_dir: str, beam_size: int, split: str = "test") -> dict[str, float]:
    """Train with `trainer.max_time`, evaluate `split`; return metrics, steps, tokens/s."""
    common = [*problem, f"data_dir={data_dir}"]
    start = time.perf_counter()
    run([script("t2t-train"), *common, *train, f"trainer.max_time={hms(minutes)}",
         "trainer.enable_progress_bar=false", f"run_dir={run_dir}"])
    train_minutes = (time.perf_counter() - start) / 60
    # Problem options among the overrides may shape the shards: evaluate the same problem.
    problem = [*problem, *(o for o in train if o.startswith("problem."))]
    scores = evaluate(problem, Path(run_dir) / "checkpoints" / "last.ckpt", data_dir=data_dir,
                      beam_size=beam_size, split=split)
    logs = sorted(Path(run_dir, "csv").glob("version_*/metrics.csv"))[-1]
    rows = list(csv.DictReader(open(logs)))
    speeds = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    return {**scores, "train_minutes": train_minutes,
            "steps": max(int(r["step"]) for r in rows) + 1,
            "target_tokens_per_s": sum(speeds) / max(1, len(speeds))}


def evaluate(problem: list[str], checkpoint: Path, *, data_dir: str, beam_size: int,
             split: str = "test", extra: tuple[str, ...] = ()) -> dict[str, float]:
    """`t2t-eval` of one problem (a mixture's member too) -> {metric: value}."""
    output = run([script("t2t-eval"), *problem, f"data_dir={data_dir}", f"ckpt={checkpoint}",
                  f"split={split}", f"decode.beam_size={beam_size}", *extra])
    return {name: float(value) for name, value in
            re.findall(r"│ (\w+)\s+│\s+([\d.]+)", output)}
