"""What a model in the RNA search's loop would have to know to help: the search with an oracle
proposal, on the Eterna100 v2 puzzles the search alone does not always solve.

A proposal gives the ensemble search base probabilities that PROPOSAL_SHARE of its moves draw
from (`problems/rna_search.py`, the hook a trained model plugs into). The oracle here knows a
published player solution (eternagame/eterna100-benchmarking, `data/eterna100_puzzles.tsv`,
column "Sample Solution (V2/Vienna2)"; all fold into their targets under ViennaRNA 2; a
puzzle without one, #100, is left out). At knowledge f, each design unit (a loop base, or a
pair) has the solution's bases with probability f, drawn once per puzzle and seed; the other
units have what the targeted-design heuristic would put there (A in loops, the G-A hairpin
mismatch, GC or CG in pairs at even odds), which is what the rna_design models trained on
this CPU predict (their likeliest base is the heuristic's at 879 of 881 positions:
rna_eterna100.md). Every unit keeps EPSILON of uniform weight. f = 0 is such a model in the
loop; "none" is the search without a proposal.

With `--role start` the oracle gives the search its start instead (a design with the
solution's bases at a share f of the units, the heuristic's elsewhere), which is what a
model's samples are to the search (`t2t.inference.search` refines from them): how close to
a solution a sample must be for the search to finish it. The table also gives how many units
the final designs share with the published solution (a targeted design's share is printed
first: what a model that predicts the heuristic starts from).

    python benchmarks/rna_proposal_headroom.py --solutions eterna100_puzzles.tsv \
        --knows none,0,0.25,0.5 --budget 60 --seeds 1 [--role start] [--puzzles 60,64]
        [--workers 2]

Each puzzle runs in its own process, stopped at the budget; results are appended to
--results (one JSON line per knowledge, seed and puzzle) and a re-run skips what is there.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from budget import SHARED, appended, measure
from rna_eterna100 import judge, run_stopped

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOLUTIONS_URL = ("https://raw.githubusercontent.com/eternagame/eterna100-benchmarking/master/"
                 "data/eterna100_puzzles.tsv")
# Not always solved by the search alone at 60 s in 3 seeds (eterna100_v2_curve_bb74e0e.jsonl).
HARD = "60,64,66,68,71,78,79,80,81,86,87,88,89,90,91,96,99,100"
EPSILON = 0.05  # uniform weight every base keeps in the oracle's proposal


def agreement(structure: str, design: str | None, solution: str) -> float:
    """Share of design units (a loop base, or a pair) where `design` has the solution's bases."""
    from problems.rna_design import design_units

    units = design_units(structure)
    if not design or len(design) != len(solution):
        return 0.0
    return sum(all(design[k] == solution[k] for k in unit) for unit in units) / len(units)


def oracle_start(structure: str, solution: str, knows: float, rng: random.Random) -> str:
    """A design with the solution's bases at a share `knows` of the units, a targeted design's
    (GC or CG at random in pairs) elsewhere."""
    from problems.rna_design import design_units
    from problems.rna_search import targeted_design

    start = list(targeted_design(structure, "N" * len(structure), rng))
    for unit in design_units(structure):
        if rng.random() < knows:
            for k in unit:
                start[k] = solution[k]
    return "".join(start)


def oracle(structure: str, solution: str, knows: float, rng: random.Random) -> np.ndarray:
    """(length, 4) base probabilities: a solution's bases at a share `knows` of the units, the
    targeted-design heuristic's elsewhere (see the module docstring)."""
    from modalities.rna import pair_table
    from problems.rna_search import BASES, targeted_design

    partner = pair_table(structure)
    heuristic = targeted_design(structure, "N" * len(structure), rng)
    probs = np.zeros((len(structure), 4))
    for i, j in enumerate(partner):
        if 0 <= j < i:
            continue
        unit = (i, j) if j >= 0 else (i,)
        if rng.random() < knows:
            for k in unit:
                probs[k, BASES.index(solution[k])] = 1.0
        elif j >= 0:  # GC or CG at even odds
            probs[i, BASES.index("G")] = probs[i, BASES.index("C")] = 0.5
            probs[j, BASES.index("G")] = probs[j, BASES.index("C")] = 0.5
        else:
            probs[i, BASES.index(heuristic[i])] = 1.0
    return (1 - EPSILON) * probs + EPSILON / 4


def _child(structure: str, solution: str, role: str, knows: str, budget: float, seed: int,
           queue) -> None:
    import torch

    from problems.rna_search import design_by_parts, targeted_design

    torch.set_num_threads(1)
    rng = random.Random(seed)
    oracle_rng = random.Random(f"oracle-{seed}")
    starts, proposal = [], None
    if knows != "none" and role == "start":
        starts = [oracle_start(structure, solution, float(knows), oracle_rng)]
    elif knows != "none":
        proposed = oracle(structure, solution, float(knows), oracle_rng)
        proposal = lambda _: proposed  # noqa: E731
    free = "N" * len(structure)
    queue.put(targeted_design(structure, free, random.Random(0)))  # judged if stopped early
    queue.put(design_by_parts(structure, free, starts, time.monotonic() + budget, rng,
                              proposal=proposal))


def job(args: tuple) -> dict:
    role, knows, budget, seed, puzzle = args
    design, seconds = run_stopped(
        _child, (puzzle["structure"], puzzle["solution"], role, knows, budget, seed), budget,
        f"{role} knows {knows}, seed {seed}, puzzle {puzzle['id']}")
    solved, _ = judge(puzzle["structure"], design)
    return {"role": role, "knows": knows, "budget": budget, "seed": seed, "id": puzzle["id"],
            "length": len(puzzle["structure"]), "design": design, "solved": solved,
            "seconds": round(seconds, 2)}


def read_solutions(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise SystemExit(f"--solutions {path}: no such file; download it from {SOLUTIONS_URL}")
    with open(path, newline="") as f:
        return {row["Puzzle #"]: {"id": row["Puzzle #"],
                                  "structure": row["Secondary Structure V2"],
                                  "solution": row["Sample Solution (V2/Vienna2)"]}
                for row in csv.DictReader(f, delimiter="\t")}


def main() -> None:
    from problems.rna_design import RnaEterna100
    from problems.rna_search import targeted_design

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", type=Path, required=True,
                        help=f"eterna100_puzzles.tsv ({SOLUTIONS_URL})")
    parser.add_argument("--knows", default="none,0,0.25,0.5",
                        help="'none' (no proposal) and/or shares of units the oracle knows")
    parser.add_argument("--role", choices=["proposal", "start"], default="proposal",
                        help="the oracle proposes the ensemble search's moves, or its start")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--puzzles", default=HARD)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--raw-dir", default=str(SHARED / "rna") if (SHARED / "rna").is_dir()
                        else None)
    parser.add_argument("--results", default="outputs/bench-rna/headroom.jsonl")
    args = parser.parse_args()

    solutions = read_solutions(args.solutions)
    puzzles = []
    for puzzle in RnaEterna100(version="v2", raw_dir=args.raw_dir).puzzles():
        if puzzle["id"] in args.puzzles.split(","):
            known = solutions.get(puzzle["id"])
            if known is None or known["structure"] != puzzle["structure"]:
                raise SystemExit(f"--solutions {args.solutions}: puzzle {puzzle['id']}'s V2 "
                                 f"structure differs from Eterna100 v2's; is it {SOLUTIONS_URL}?")
            if len(known["solution"]) != len(known["structure"]) or set(known["solution"]) - set(
                    "ACGU"):
                print(f"puzzle {puzzle['id']} left out: no published solution "
                      f"({known['solution']})", flush=True)
                continue
            puzzles.append(known)
    levels = args.knows.split(",")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    def key(r: dict) -> tuple:  # rows written before --role were the proposal's
        return ("none" if r["knows"] == "none" else r.get("role", "proposal"), r["knows"],
                r["budget"], r["seed"], r["id"])

    def role(level: str) -> str:  # without an oracle the role makes no difference
        return "none" if level == "none" else args.role

    done = appended(results, key)
    # Interleaved (each puzzle and seed at every level in turn): no level gets a quieter machine.
    todo = [(args.role, k, args.budget, s, p) for s in range(args.seeds) for p in puzzles
            for k in levels if (role(k), k, args.budget, s, p["id"]) not in done]
    print(f"{len(puzzles)} puzzles x {len(levels)} levels x {args.seeds} seeds at "
          f"{args.budget:g} s, the oracle's role: {args.role}; {len(todo)} to go", flush=True)
    for r in measure(job, todo, results=results, workers=args.workers, describe=lambda r: (
            f"{r['role']} knows {r['knows']:5s} seed {r['seed']} #{r['id']:>3s} "
            f"len {r['length']:3d} {'solved' if r['solved'] else 'unsolved':8s} "
            f"{r['seconds']:6.1f} s")):
        done[key(r)] = r

    ids = {p["id"] for p in puzzles}
    by_id = {p["id"]: p for p in puzzles}
    heuristic = statistics.mean(
        agreement(p["structure"], targeted_design(p["structure"], "N" * len(p["structure"]),
                                                  random.Random(seed)), p["solution"])
        for p in puzzles for seed in range(10))
    print(f"\n{len(puzzles)} Eterna100 v2 puzzles ({','.join(p['id'] for p in puzzles)}), "
          f"{args.budget:g} s each, the oracle's role: {args.role}; a targeted design has the "
          f"published solution's bases at {heuristic:.1%} of the units (mean of 10 draws)\n")
    print("| oracle knows | solved (mean +- sd over seeds) | per seed | solved puzzles | "
          "mean seconds to solve | units as in the solution: start, final design |")
    print("|---|---|---|---|---|---|")
    for level in levels:
        rows = [r for (o, k, b, s, i), r in done.items()
                if o == role(level) and k == level and b == args.budget and s < args.seeds
                and i in ids]
        per_seed = [sum(r["solved"] for r in rows if r["seed"] == s) for s in range(args.seeds)]
        sd = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        solved = sorted({r["id"] for r in rows if r["solved"]}, key=int)
        times = [r["seconds"] for r in rows if r["solved"]]
        print(f"| {level} | {statistics.mean(per_seed):.1f} +- {sd:.1f} / {len(puzzles)} | "
              f"{', '.join(map(str, per_seed))} | {', '.join(solved) or '-'} | "
              f"{statistics.mean(times) if times else float('nan'):.1f} | "
              f"{started(rows, by_id) if role(level) == 'start' else '-'}, {agreed(rows, by_id)} |")


def started(rows: list[dict], puzzles: dict[str, dict]) -> str:
    """Mean share of units the oracle's starts share with the solution (drawn again as the
    runs drew them)."""
    shares = []
    for r in rows:
        puzzle = puzzles[r["id"]]
        start = oracle_start(puzzle["structure"], puzzle["solution"], float(r["knows"]),
                             random.Random(f"oracle-{r['seed']}"))
        shares.append(agreement(puzzle["structure"], start, puzzle["solution"]))
    return f"{statistics.mean(shares):.1%}" if shares else "-"


def agreed(rows: list[dict], puzzles: dict[str, dict]) -> str:
    """Mean share of units the final designs share with the solution."""
    shares = [agreement(puzzles[r["id"]]["structure"], r["design"], puzzles[r["id"]]["solution"])
              for r in rows]
    return f"{statistics.mean(shares):.1%}" if shares else "-"


if __name__ == "__main__":
    main()
