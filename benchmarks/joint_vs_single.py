"""One model on a mixture against one model per member, at equal compute, over seeds.

For each seed, the joint model trains the experiment's mixture; every member's single model
then trains exactly as many steps as the joint model spent on that member (counted from
the joint run's record of its batches), with the same experiment settings (model size,
schedule shape, batch size): a one-member mixture of that member with its options. So the
four singles together have as much compute as the joint model. All are scored on each
member's test split by its headline metric (the problem's first), decoded by the model
alone (greedy, decode.best_of=0): verifier-guided search would solve RNA puzzles whatever
the model, hiding the difference this measures.

    python benchmarks/joint_vs_single.py --mixture quickstart --seeds 1 2 3
    python benchmarks/joint_vs_single.py --mixture real --steps 4000 --seeds 1 2 3
    python benchmarks/joint_vs_single.py --mixture read_and_draw --steps 1200 --seeds 1 2

quickstart: the README's main job (experiment=quickstart), its own steps unless --steps.
real: experiment=anything_to_anything (Multi30k, MNIST digit strings, FSDD, RNA design),
from the local copies in ../shared/datasets (T2T_DATASETS elsewhere).
read_and_draw: experiment=read_and_draw (reading MNIST digit strings, image -> text, and
drawing them, text -> image), from the local MNIST copy.

Resumable: each score is appended to <run-root>/scores.jsonl as it is measured and skipped
when rerun; unfinished training runs resume at their last checkpoint. The table (mean ± sd
over the seeds measured so far) is printed at the end; --table prints it without training.
Extra key=value overrides go to every training run alike.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
from pathlib import Path

import yaml
from budget import SHARED, appended, evaluate, run, script

EXPERIMENTS = {"quickstart": "quickstart", "real": "anything_to_anything",
               "read_and_draw": "read_and_draw"}
MODEL_ONLY = ("decode.best_of=0",)  # and beam 1: greedy


def composed(experiment: str, overrides: list[str]) -> dict:
    """The training config t2t-train composes for the experiment (unresolved)."""
    output = subprocess.run([script("t2t-train"), f"experiment={experiment}", *overrides,
                             "--cfg", "job"], capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(output)


def mixture_members(config: dict) -> list[dict]:
    """The mixture's members with their options; a missing raw_dir: the local copy."""
    members = config["problem"]["members"]
    for member in members:
        if "raw_dir" in member and member["raw_dir"] is None:
            local = SHARED / {"translate_deen_multi30k": "multi30k",
                              "mnist_digit_strings": "mnist",
                              "draw_digit_strings": "mnist",
                              "spoken_digits_fsdd": "fsdd"}.get(member["name"], "-")
            member["raw_dir"] = str(local) if local.is_dir() else None
    return members


def override_value(value) -> str:
    """A Python value as a Hydra override value (lists and dicts in its grammar)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def headline(member: dict) -> tuple[str, bool]:
    """The member's first metric and whether higher is better."""
    import problems  # noqa: F401  registers the built-in problems
    from t2t.metrics import HIGHER_IS_BETTER
    from t2t.registry import get_problem_class

    metric = get_problem_class(member["name"]).metrics[0]
    return metric, HIGHER_IS_BETTER[metric]


def train(experiment: str, run_dir: Path, seed: int, steps: int, args,
          extra: list[str]) -> Path:
    """A run of `steps` steps, validated once, at its end: each run is scored by t2t-eval."""
    run([script("t2t-train"), f"experiment={experiment}", f"seed={seed}",
         "trainer.enable_progress_bar=false", f"data_dir={args.data_dir}",
         f"run_dir={run_dir}", *args.overrides, *extra, f"trainer.max_steps={steps}",
         f"trainer.val_check_interval={steps}"])
    return run_dir / "checkpoints" / "last.ckpt"


def steps_per_member(record_dir: Path) -> collections.Counter:
    """Training steps the joint run spent on each member index (one batch = one member). A
    resumed run records the steps it replays from its checkpoint again: each counts once."""
    member_at_step = {}
    with open(record_dir / "rank0.tsv") as f:
        for line in f:
            _, step, member = line.split("\t")[:3]
            member_at_step[int(step)] = int(member)
    return collections.Counter(member_at_step.values())


def score(member: dict, checkpoint: Path, args) -> float:
    options = [f"problem.{key}={override_value(value)}" for key, value in member.items()
               if key != "name" and value is not None]
    metric, _ = headline(member)
    return evaluate([f"problem={member['name']}", *options], checkpoint,
                    data_dir=args.data_dir, beam_size=1, extra=MODEL_ONLY)[metric]


def load_scores(path: Path) -> dict[tuple, dict]:
    return appended(path, lambda r: (r["seed"], r["member"], r["kind"]))


def measure_seed(seed: int, members: list[dict], experiment: str, args, scores: dict,
                 scores_path: Path) -> None:
    root = Path(args.run_root) / f"seed{seed}"

    def record(member: dict, kind: str, steps: int, value: float) -> None:
        row = {"seed": seed, "member": member["name"], "kind": kind, "steps": steps,
               "metric": headline(member)[0], "value": value}
        scores[(seed, member["name"], kind)] = row
        with open(scores_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed} {member['name']} {kind} ({steps} steps): {row['metric']} "
              f"{value:.4f}", flush=True)

    joint_ckpt = root / "joint" / "checkpoints" / "last.ckpt"
    if any((seed, m["name"], "joint") not in scores for m in members):
        # The members as composed, with the local raw_dirs filled in.
        train(experiment, root / "joint", seed, args.steps, args,
              [f"problem.members={override_value(members)}",
               f"record_samples={root / 'joint' / 'batches'}"])
    shares = steps_per_member(root / "joint" / "batches")
    for index, member in enumerate(members):
        if (seed, member["name"], "joint") not in scores:
            record(member, "joint", shares[index], score(member, joint_ckpt, args))
    for index, member in enumerate(members):
        if (seed, member["name"], "single") in scores:
            continue
        if not shares[index]:  # a joint run too short to reach it: nothing to match
            print(f"seed {seed} {member['name']}: no joint steps, no single model", flush=True)
            continue
        single_ckpt = train(experiment, root / member["name"], seed, shares[index], args,
                            [f"problem.members=[{override_value(member)}]",
                             "problem.rates=[1]"])
        record(member, "single", shares[index], score(member, single_ckpt, args))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def print_table(members: list[dict], scores: dict, args) -> None:
    print()
    print(f"| member | metric (better) | steps each | single | joint | joint vs single |  "
          f"(--mixture {args.mixture}, seeds {' '.join(map(str, args.seeds))})")
    print("|---|---|---|---|---|---|")
    for member in members:
        metric, higher = headline(member)
        rows = {kind: [scores[(s, member["name"], kind)] for s in args.seeds
                       if (s, member["name"], kind) in scores] for kind in ("single", "joint")}
        single = [r["value"] for r in rows["single"]]
        joint = [r["value"] for r in rows["joint"]]
        steps = sorted({r["steps"] for r in rows["joint"]})
        relative = "-"
        if single and joint and statistics.mean(single):
            gain = statistics.mean(joint) - statistics.mean(single)
            relative = f"{(gain if higher else -gain) / abs(statistics.mean(single)):+.1%}"
        print(f"| {member['name']} | {metric} ({'higher' if higher else 'lower'}) | "
              f"{', '.join(map(str, steps)) or '-'} | {mean_sd(single)} | {mean_sd(joint)} | "
              f"{relative} |")
    print("joint vs single: relative change of the mean, + where the joint model is better")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixture", choices=sorted(EXPERIMENTS), default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None,
                        help="joint training steps (default: the experiment's)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-root", default=None,
                        help="default: outputs/joint-vs-single-<mixture>")
    parser.add_argument("--table", action="store_true", help="print the table, train nothing")
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()
    args.run_root = args.run_root or f"outputs/joint-vs-single-{args.mixture}"
    experiment = EXPERIMENTS[args.mixture]
    config = composed(experiment, args.overrides)
    members = mixture_members(config)
    args.steps = args.steps or config["trainer"]["max_steps"]
    Path(args.run_root).mkdir(parents=True, exist_ok=True)
    scores_path = Path(args.run_root) / "scores.jsonl"
    scores = load_scores(scores_path)
    if not args.table:
        for seed in args.seeds:
            measure_seed(seed, members, experiment, args, scores, scores_path)
    print_table(members, scores, args)


if __name__ == "__main__":
    main()
