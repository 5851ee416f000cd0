"""One model on the anything_to_anything mixture against one model per member, at equal
training steps and model size.

The joint model trains --steps steps on the mixture; every member's single model then trains
exactly as many steps as the joint model spent on that member (counted from the joint run's
record of its batches), with the same experiment settings: a one-member mixture. All are
evaluated on each member's test split; the table gives member x {single, joint}. RNA designs
are the model's own (decode.best_of=0): verifier-guided search would spend up to 10 s per
puzzle and solve puzzles whatever the model, hiding the difference this measures.

Rerunning with the same --run-root reuses finished training runs (t2t-train resumes them at
their last step) and evaluates again. With --joint-minutes the joint run stops at that wall
time instead of a step count; the single models still get exactly its steps per member.
--parallel trains the single models (and runs the evaluations) at the same time: on a GPU,
four small models share it well.

    python benchmarks/joint_vs_single.py --steps 20000 [--data-dir data]
        [--run-root outputs/bench-joint] [--model small] [--joint-minutes M] [--parallel]
        [overrides ...]

Extra key=value overrides (data.max_tokens=2048, ...) go to every training run alike.
"""

from __future__ import annotations

import argparse
import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from budget import SHARED, evaluate, hms, run, script

# member, its raw_dir under ../shared/datasets (None: procedural), its headline metric and
# whether higher is better.
MEMBERS = [
    ("translate_deen_multi30k", "multi30k", "bleu", True),
    ("mnist_digit_strings", "mnist", "exact_match", True),
    ("spoken_digits_fsdd", "fsdd", "wer", False),
    ("rna_design", None, "solved", True),
]

MODEL_ONLY = ("decode.best_of=0",)  # beam search (greedy at beam 1), no verifier search


def member_option(name: str, raw: str | None) -> str:
    if raw and (SHARED / raw).is_dir():
        return f"{{name:{name},raw_dir:{SHARED / raw}}}"
    return f"{{name:{name}}}"


def train(members: list[str], steps: int, run_dir: Path, args, record: bool = False,
          minutes: float | None = None) -> Path:
    command = [script("t2t-train"), "experiment=anything_to_anything",
               f"problem.members=[{','.join(members)}]", f"model={args.model}",
               f"trainer.max_steps={steps}", f"trainer.val_check_interval={min(steps, 1000)}",
               "trainer.enable_progress_bar=false", f"data_dir={args.data_dir}",
               f"run_dir={run_dir}", *args.overrides]
    if minutes:
        command.append(f"trainer.max_time={hms(minutes)}")
    if record:
        command.append(f"record_samples={run_dir / 'batches'}")
    run(command)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="joint training steps")
    parser.add_argument("--model", default="small")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--run-root", default="outputs/bench-joint")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--joint-minutes", type=float, default=None,
                        help="stop the joint run at this wall time (--steps is then a cap)")
    parser.add_argument("--parallel", action="store_true",
                        help="train and evaluate the single models at the same time")
    parser.add_argument("overrides", nargs="*", help="extra t2t-train overrides (key=value)")
    args = parser.parse_args()
    root = Path(args.run_root)

    options = [member_option(name, raw) for name, raw, _, _ in MEMBERS]
    joint_ckpt = train(options, args.steps, root / "joint", args, record=True,
                       minutes=args.joint_minutes)
    shares = steps_per_member(root / "joint" / "batches")
    joint_steps = sum(shares.values())

    # Datagen options shape the shards: the evaluations must read the same ones.
    eval_extra = (*MODEL_ONLY, *(o for o in args.overrides if o.startswith("datagen.")))

    def compare(index: int) -> tuple:
        name, raw, metric, higher_is_better = MEMBERS[index]
        problem = [f"problem={name}"]
        if raw and (SHARED / raw).is_dir():
            problem.append(f"problem.raw_dir={SHARED / raw}")
        joint = evaluate(problem, joint_ckpt, data_dir=args.data_dir,
                         beam_size=args.beam_size, extra=eval_extra)[metric]
        single_ckpt = train([options[index]], shares[index], root / name, args)
        single = evaluate(problem, single_ckpt, data_dir=args.data_dir,
                          beam_size=args.beam_size, extra=eval_extra)[metric]
        gain = (joint - single) if higher_is_better else (single - joint)
        relative = gain / abs(single) if single else float("nan")
        print(f"{name}: {metric} single {single:.4f}, joint {joint:.4f}", flush=True)
        return name, metric, shares[index], single, joint, relative

    with ThreadPoolExecutor(len(MEMBERS) if args.parallel else 1) as pool:
        rows = list(pool.map(compare, range(len(MEMBERS))))

    print()
    print(f"| member | metric | steps | single | joint | joint vs single |  ({args.model}, "
          f"{joint_steps} joint steps)")
    print("|---|---|---|---|---|---|")
    for name, metric, steps, single, joint, relative in rows:
        print(f"| {name} | {metric} | {steps} | {single:.4f} | {joint:.4f} | {relative:+.1%} |")
    print("joint vs single: relative change of the metric, + where the joint model is better")


if __name__ == "__main__":
    main()
