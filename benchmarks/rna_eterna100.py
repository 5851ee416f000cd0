"""Eterna100 side by side: the same per-puzzle time budget and the same cores for
(a) model: a t2t model trained on rna_design + the search (`t2t.inference.search`: the
    targeted design refined for a tenth of the budget, then constrained sampling for up to a
    quarter of it, best-of-N by folding, then the problem's refinement from the best designs),
(b) search: the same search without the model (no sampling: what the model adds),
(c) inverse: ViennaRNA's RNA.inverse_fold restarted from random sequences.

    python benchmarks/rna_eterna100.py --budget 1,10,60 [--ckpt RUN/checkpoints/last.ckpt |
        --train-minutes 60] [--version v2] [--seeds 3] [--workers 2]
        [--limit N | --puzzles 50,57] [--best-of 64] [--refinement walk_then_ensemble]

--refinement picks how (a) and (b) refine designs (problems/rna_search.py REFINEMENTS; the
problem's own by default); rows other than the adaptive walk's are labelled
method:refinement.
--budget takes one time budget or several (the solved-vs-budget curve: each budget is a
run of its own, from scratch). Each puzzle runs in its own process, stopped at the budget
(RNA.inverse_fold cannot be interrupted otherwise); `--workers` puzzles run at once, one per
core. Results go to --results (one JSON line per method, budget, seed and puzzle) and a
re-run skips what is there, so an interrupted benchmark resumes. Prints, per method and
budget, solved/100 (mean +- sd over seeds) and the mean normalised Hamming distance between
folded and target structures, with wall time and RNA.__version__.
Solved: ACGU only, the target's length, and RNA.fold(sequence)[0] == target.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

from budget import SHARED, appended, hms, measure, run, script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_searchers = {}  # method -> (model or None, problem), set before the workers fork
_best_of = [64]  # samples a search draws at most (within its time share), set likewise


def design(method: str, structure: str, budget: float, seed: int, found) -> None:
    """Run one method on one puzzle, reporting every better design through `found`."""
    import torch

    from problems.rna_search import inverse_fold_restarts
    from t2t.inference import search

    torch.set_num_threads(1)
    if method == "inverse":
        inverse_fold_restarts(structure, time.monotonic() + budget, random.Random(seed),
                              found=lambda d, _: found(d))
        return
    model, problem = _searchers[method]
    loaded = problem.inputs.load(problem.inputs.encode(structure))
    found(problem.quick_candidates(structure)[0])  # something to judge if stopped early
    found(search(model, problem, 0, loaded, best_of=_best_of[0], time_budget_s=budget, seed=seed))


def _child(method: str, structure: str, budget: float, seed: int, queue) -> None:
    design(method, structure, budget, seed, queue.put)


def _reporting(target, args: tuple, queue) -> None:
    """target(*args, queue), and its traceback on the queue if it fails (the exit code does
    not say: a process forked from a worker thread exits with 1 even when it succeeds)."""
    try:
        target(*args, queue)
    except BaseException:
        queue.put(("failed", traceback.format_exc()))
        raise


def run_stopped(target, args: tuple, budget: float, what: str) -> tuple[str | None, float]:
    """The last design `target(*args, queue)` put on its queue, run in a process of its own
    that is stopped 2 s after the budget (a hard limit), and the seconds it took. A process
    that fails raises, naming `what` it was doing: a crash is not an unsolved puzzle."""
    queue = multiprocessing.Queue()
    start = time.monotonic()
    process = multiprocessing.Process(target=_reporting, args=(target, args, queue),
                                      daemon=True)
    process.start()
    process.join(budget + 2)
    if process.is_alive():
        process.terminate()
        process.join()
    best = None
    while not queue.empty():
        best = queue.get()
        if isinstance(best, tuple):
            raise RuntimeError(f"{what}: the design process failed:\n{best[1]}")
    return best, time.monotonic() - start


def solve(method: str, structure: str, budget: float, seed: int,
          what: str) -> tuple[str | None, float]:
    """Best design a method finds within the budget (hard: the process is stopped)."""
    return run_stopped(_child, (method, structure, budget, seed), budget, what)


def judge(structure: str, sequence: str | None) -> tuple[bool, float]:
    """(solved, normalised Hamming distance of the folded structure)."""
    import RNA

    if not sequence or len(sequence) != len(structure) or set(sequence) - set("ACGU"):
        return False, 1.0
    folded, _ = RNA.fold(sequence)
    wrong = sum(a != b for a, b in zip(folded, structure, strict=True))
    return folded == structure, wrong / len(structure)


def job(args: tuple) -> dict:
    label, budget, seed, puzzle = args
    method = label.partition(":")[0]
    sequence, seconds = solve(method, puzzle["structure"], budget, seed,
                              f"{label} at {budget:g} s, seed {seed}, puzzle {puzzle['id']}")
    solved, distance = judge(puzzle["structure"], sequence)
    return {"method": label, "budget": budget, "seed": seed, "id": puzzle["id"],
            "name": puzzle["name"],
            "length": len(puzzle["structure"]), "design": sequence, "solved": solved,
            "distance": distance, "seconds": round(seconds, 2)}


def train(minutes: float, run_dir: str, data_dir: str) -> Path:
    run([script("t2t-train"), "experiment=rna_design", f"trainer.max_time={hms(minutes)}",
         "trainer.enable_progress_bar=false", f"run_dir={run_dir}", f"data_dir={data_dir}"])
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def main() -> None:
    import RNA

    from problems.rna_design import RnaEterna100
    from problems.rna_search import REFINEMENTS
    from t2t.inference import load_checkpoint, select_problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60",
                        help="seconds per puzzle; several, comma-separated, for a curve")
    parser.add_argument("--ckpt", help="an rna_design checkpoint for method (a)")
    parser.add_argument("--train-minutes", type=float, default=60.0,
                        help="without --ckpt: train rna_design on the CPU this long first")
    parser.add_argument("--run-dir", default="outputs/bench-rna")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--version", default="v2", choices=["v1", "v2"])
    parser.add_argument("--raw-dir", default=str(SHARED / "rna") if (SHARED / "rna").is_dir()
                        else None)
    parser.add_argument("--methods", default="model,search,inverse")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--best-of", type=int, default=64,
                        help="method (a): samples drawn at most, within a quarter of the budget")
    parser.add_argument("--refinement", choices=sorted(REFINEMENTS),
                        default=RnaEterna100.refinement)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N puzzles")
    parser.add_argument("--puzzles", default=None,
                        help="only these puzzle ids, comma-separated (e.g. the unsolved ones)")
    parser.add_argument("--results", default="outputs/bench-rna/results.jsonl")
    args = parser.parse_args()
    try:
        budgets = [float(b) for b in args.budget.split(",")]
    except ValueError:
        parser.error(f"--budget {args.budget}: seconds per puzzle, one number or several "
                     f"separated by commas (e.g. 1,10,60)")

    target = RnaEterna100(version=args.version, raw_dir=args.raw_dir)
    every_puzzle = target.puzzles()
    puzzles = every_puzzle[: args.limit]
    if args.puzzles:
        wanted = args.puzzles.split(",")
        unknown = sorted(set(wanted) - {p["id"] for p in every_puzzle})
        if unknown:
            raise SystemExit(f"--puzzles: no puzzle with id {', '.join(unknown)} in Eterna100 "
                             f"{args.version} (ids are 1 to {len(every_puzzle)})")
        puzzles = [p for p in puzzles if p["id"] in wanted]
    methods = args.methods.split(",")
    target.refinement = args.refinement
    _best_of[0] = args.best_of
    if "model" in methods:
        checkpoint = Path(args.ckpt) if args.ckpt else train(args.train_minutes, args.run_dir,
                                                             args.data_dir)
        model, trained = load_checkpoint(checkpoint)
        _searchers["model"] = (model, trained[select_problem(trained, target.name, checkpoint,
                                                             target)])
        _searchers["model"][1].refinement = args.refinement
    _searchers["search"] = (None, target)
    # Rows of the adaptive walk, the first refinement, carry the bare method name.
    labels = [m if m == "inverse" or args.refinement == "walk" else f"{m}:{args.refinement}"
              for m in methods]

    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    def key(r: dict) -> tuple:  # rows written before budgets were recorded ran at 60 s
        return r["method"], r.get("budget", 60.0), r["seed"], r["id"]

    done = appended(results_path, key)
    todo = [(m, b, s, p) for m in labels for b in budgets for s in range(args.seeds)
            for p in puzzles if (m, b, s, p["id"]) not in done]
    print(f"{len(puzzles)} puzzles x {len(methods)} methods x {len(budgets)} budgets "
          f"({args.budget} s) x {args.seeds} seeds, {args.workers} at once; {len(done)} done, "
          f"{len(todo)} to go", flush=True)
    start = time.monotonic()
    for record in measure(job, todo, results=results_path, workers=args.workers,
                          describe=lambda r: (
                              f"{r['method']:8s} {r['budget']:g} s seed {r['seed']} "
                              f"#{r['id']:>3s} len {r['length']:3d} "
                              f"{'solved' if r['solved'] else 'unsolved':8s} "
                              f"{r['seconds']:6.1f} s")):
        done[key(record)] = record
    wall = time.monotonic() - start

    ids = {p["id"] for p in puzzles}
    print(f"\nEterna100 {args.version}, {len(puzzles)} puzzles, ViennaRNA {RNA.__version__}, "
          f"this run's wall time {wall / 60:.1f} min\n")
    print("| method | seconds per puzzle | solved (mean +- sd over seeds) | per seed | "
          "mean structure distance | CPU-seconds |")
    print("|---|---|---|---|---|---|")
    for method, budget in ((m, b) for m in labels for b in budgets):
        per_seed, distances, seconds = [], [], 0.0
        for seed in range(args.seeds):
            records = [r for (m, b, s, i), r in done.items()
                       if (m, b, s) == (method, budget, seed) and i in ids]
            per_seed.append(sum(r["solved"] for r in records))
            distances += [r["distance"] for r in records]
            seconds += sum(r["seconds"] for r in records)
        sd = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        print(f"| {method} | {budget:g} | {statistics.mean(per_seed):.1f} +- {sd:.1f} / "
              f"{len(puzzles)} | "
              f"{', '.join(map(str, per_seed))} | {statistics.mean(distances):.4f} | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
