"""What a trained model is worth afterwards, on Multi30k: checkpoint averaging against the last
checkpoint, and fine-tuning a small parallel text of one's own from the trained model against
training on it from scratch.

    python benchmarks/after_training.py [--pretrain-steps 3000] [--average 5]
        [--finetune-steps 800] [--finetune-lr 0.002] [--directions en-de,de-en]
        [--ways scratch,body,all] [--stages pretrain,average,finetune]

1. pretrain: translate_deen_multi30k (German to English), model=mini, --pretrain-steps
   optimizer steps, a checkpoint every --checkpoint-every steps, the last --average kept.
2. average: t2t-eval (test2016, beam 4) of last.ckpt and of t2t-average of the last
   --average checkpoints.
3. finetune: "your own data": text_pairs on the Multi30k validation pairs (1,014; 100 of
   them held out for validation), never seen in pre-training, in the other direction
   (English to German: a new task) and in the model's (German to English: more of the same),
   scored on test2016 in that direction. The same steps and settings three ways: from
   scratch; init_from the Multi30k model with the new problem's own vocabulary (only the
   Transformer body loads); init_from with the model's vocabulary (problem.vocab_file=the
   checkpoint: everything loads).

Training is counted in steps, not minutes, so another job on the machine changes the times,
not the scores. Each measurement is appended to --results as one JSON line and skipped on a
rerun; a run_dir resumes. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from budget import SHARED, appended, evaluate, run, script

SETTINGS = ["model=mini", "data.max_tokens=2048", "trainer.val_check_interval=500",
            "trainer.enable_progress_bar=false", "progress_every_s=null"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--average", type=int, default=5)
    parser.add_argument("--finetune-steps", type=int, default=800)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--raw-dir", type=Path, default=SHARED / "multi30k")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-after-training"))
    parser.add_argument("--results", type=Path,
                        default=Path("outputs/bench-after-training/results.jsonl"))
    parser.add_argument("--stages", default="pretrain,average,finetune")
    parser.add_argument("--directions", default="en-de,de-en",
                        help="of the fine-tuning data; the model was trained de-en")
    parser.add_argument("--finetune-lr", type=float, default=0.002)
    parser.add_argument("--ways", default="scratch,body,all",
                        help="fine-tuning from scratch, init_from with its own vocabulary "
                             "(body), init_from in the model's vocabulary (all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    done = appended(args.results, key=lambda r: (r["row"], r["steps"]))
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} cores"

    def record(row: str, steps: int, scores: dict, **extra) -> None:
        entry = {"row": row, "steps": steps, "bleu": scores.get("bleu"),
                 "chrf": scores.get("chrf"), "machine": machine, **extra}
        with open(args.results, "a") as out:
            out.write(json.dumps(entry) + "\n")
        done[(row, steps)] = entry

    multi30k = ["problem=translate_deen_multi30k", f"problem.raw_dir={args.raw_dir}",
                f"data_dir={args.data_dir}"]
    pretrained_dir = args.out / "multi30k"
    last = pretrained_dir / "checkpoints" / "last.ckpt"
    if "pretrain" in stages:
        run([script("t2t-train"), "experiment=translate_deen_multi30k", *multi30k, *SETTINGS,
             "optim.lr=0.002", "optim.warmup_steps=400",
             f"trainer.max_steps={args.pretrain_steps}",
             f"checkpoint_every={args.checkpoint_every}", f"keep_checkpoints={args.average}",
             f"run_dir={pretrained_dir}"])

    if "average" in stages:
        averaged = pretrained_dir / f"average-last{args.average}.ckpt"
        if ("last.ckpt", args.pretrain_steps) not in done:
            record("last.ckpt", args.pretrain_steps,
                   evaluate(multi30k, last, data_dir=args.data_dir, beam_size=args.beam_size))
        row = f"average of the last {args.average}"
        if (row, args.pretrain_steps) not in done:
            run([script("t2t-average"), f"run_dir={pretrained_dir}", f"last={args.average}",
                 f"output={averaged}"])
            record(row, args.pretrain_steps,
                   evaluate(multi30k, averaged, data_dir=args.data_dir,
                            beam_size=args.beam_size),
                   every=args.checkpoint_every)

    if "finetune" in stages:
        raw = args.raw_dir
        ways = {"scratch": ("from scratch", []),
                "body": ("init_from, own vocabulary", [f"init_from={last}"]),
                "all": ("init_from, the model's vocabulary",
                        [f"init_from={last}", f"problem.vocab_file={last}"])}
        chosen = args.ways.split(",")
        lr = "" if args.finetune_lr == 0.002 else f", lr {args.finetune_lr:g}"
        for direction in args.directions.split(","):
            source, target = direction.split("-")
            own = ["problem=text_pairs",
                   f"problem.train=[{raw}/val.{source}.gz,{raw}/val.{target}.gz]",
                   f"problem.test=[{raw}/test_2016_flickr.{source}.gz,"
                   f"{raw}/test_2016_flickr.{target}.gz]",
                   "problem.holdout_size=100", f"data_dir={args.data_dir}"]
            for index, (name, (way, extra)) in enumerate(ways.items()):
                row = f"{direction}: {way}{lr}"
                if name not in chosen or (row, args.finetune_steps) in done:
                    continue
                problem = own + [o for o in extra if o.startswith("problem.")]
                warm = [o for o in extra if not o.startswith("problem.")]
                run_dir = args.out / f"finetune-{direction}-{index}{lr.replace(', lr ', '-')}"
                output = run([script("t2t-train"), *problem, *SETTINGS,
                              f"optim.lr={args.finetune_lr}", "optim.warmup_steps=100",
                              f"trainer.max_steps={args.finetune_steps}", *warm,
                              f"run_dir={run_dir}"])
                print(*(line for line in output.splitlines() if "init_from" in line), sep="\n")
                record(row, args.finetune_steps,
                       evaluate(problem, run_dir / "checkpoints" / "last.ckpt",
                                data_dir=args.data_dir, beam_size=args.beam_size))

    print()
    print("| measurement | steps | BLEU | chrF |")
    print("|---|---|---|---|")
    for entry in done.values():
        print(f"| {entry['row']} | {entry['steps']} | {entry['bleu']:.2f} | {entry['chrf']:.2f} |")


if __name__ == "__main__":
    main()
