"""Adaptive depth against fixed depth, at equal training time: the plain Transformer (four
distinct layers a side), the Universal Transformer (one shared layer a side applied four
times, model.recurrence=shared) and adaptive computation time (that layer applied up to four
times, each position halting on its own, model.recurrence=act).

    python benchmarks/adaptive.py --tasks addition reverse --seeds 1 2 3
    python benchmarks/adaptive.py --tasks multi30k --seeds 1
    python benchmarks/adaptive.py --table

addition, reverse: algorithmic_addition (numbers of 1 to 4 digits, 5 minutes a run) and
algorithmic_reverse (1 to 10 symbols, 3 minutes), model=mini at depth 4, scored by exact
match (greedy) on the test split at the trained lengths and on lengths up to twice as long
(5 to 8 digits, 11 to 20 symbols), which no training sample has. multi30k:
translate_deen_multi30k (the local copy in ../shared/datasets), model=small at depth 4, 10
minutes a run, BLEU by t2t-eval (beam 4) on the test split.

For every model: the depth it spent, mean steps per position of encoder and decoder
(teacher-forced on the references; fixed depth: 4), and the body's forward FLOPs per token
that depth costs (the weight matrices, 2 FLOPs a weight a position a step: attention scores,
embeddings and the softmax are left out). For act, also the steps against difficulty: the
input's length, and for addition the number of carries.

Resumable: one JSON line per (task, model, seed) in <run-root>/scores.jsonl, skipped when
rerun; an unfinished training run resumes at its last checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

from budget import SHARED, appended, evaluate, hms, run, script

DEPTH = 4
MODELS = {"plain": "none", "shared": "shared", "act": "act"}
TASKS = {
    "addition": dict(problem="algorithmic_addition", model="mini", minutes=5.0,
                     trained={"max_length": 4}, longer={"min_length": 5, "max_length": 8}),
    "reverse": dict(problem="algorithmic_reverse", model="mini", minutes=3.0,
                    trained={"max_length": 10}, longer={"min_length": 11, "max_length": 20}),
    "multi30k": dict(problem="translate_deen_multi30k", experiment="translate_deen_multi30k",
                     model="small", minutes=10.0,
                     trained={"raw_dir": str(SHARED / "multi30k")}),
}
# The algorithmic problems' training settings (translate_deen_multi30k has its experiment's).
ALGORITHMIC = ["optim.lr=0.002", "optim.warmup_steps=200", "data.max_tokens=2048",
               "trainer.max_steps=100000", "trainer.val_check_interval=500"]


def flops_per_position_step(d_model: int, d_ff: int) -> tuple[int, int]:
    """Forward FLOPs of one application of an encoder layer and of a decoder layer at one
    position: 2 a weight (q, k, v, out: 4 d^2; feed-forward 2 d d_ff; the decoder's
    cross-attention 4 d^2 more, its keys and values counted at the target positions)."""
    encoder = 2 * (4 * d_model**2 + 2 * d_model * d_ff)
    return encoder, encoder + 2 * 4 * d_model**2


def carries(problem, sequence: str) -> int:
    """The carries of adding the two numbers of `sequence` ("123+45") in the problem's base."""
    base = len(problem.symbols)
    a, b = (number[::-1] for number in sequence.split("+"))
    carry, count = 0, 0
    for i in range(max(len(a), len(b))):
        digits = [problem.symbols.index(n[i]) for n in (a, b) if i < len(n)]
        carry = (sum(digits) + carry) // base
        count += carry
    return count


def difficulty(problem, sequence: str) -> list[str]:
    """The groups of an input by difficulty: its length in buckets (for addition, the digits
    of the longer number), and for addition its carries."""
    if "+" not in sequence:
        low = (len(sequence) - 1) // 5 * 5 + 1
        return [f"symbols {low}-{low + 4}"]
    digits = max(len(number) for number in sequence.split("+"))
    low = (digits - 1) // 2 * 2 + 1
    return [f"digits {low}-{low + 1}", f"carries {min(carries(problem, sequence), 5)}"]


def spent_depth(model, index: int, problem, samples: list[dict], batch_size: int = 100
                ) -> list[tuple[float, float, int, int]]:
    """Per sample: (mean encoder steps, mean decoder steps, input positions, target positions),
    teacher-forced on the reference; positions with the problem token, BOS and EOS."""
    import torch

    spent = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        inputs, inputs_pad = problem.inputs.collate(
            [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in chunk])
        targets, _ = problem.targets.collate(
            [problem.targets.load(problem.targets.encode(s["targets"])) for s in chunk])
        lengths = (targets != 0).sum(dim=1)
        labelled = torch.arange(targets.size(1) + 1)[None, :] <= lengths[:, None]  # BOS..EOS
        with torch.no_grad():
            memory, memory_pad = model.encode(index, inputs, inputs_pad)
            model.decoder_states(index, memory, memory_pad, targets,
                                 active=labelled.flatten().nonzero().squeeze(1))
        sources = (~memory_pad).sum(dim=1)
        if model.config.recurrence == "act":
            encoder = model.body.ponder["encoder"].steps.sum(dim=1)
            decoder = model.body.ponder["decoder"].steps.sum(dim=1)
        else:
            encoder = sources * DEPTH
            decoder = (lengths + 1) * DEPTH
        for i in range(len(chunk)):
            spent.append((float(encoder[i]) / int(sources[i]),
                          float(decoder[i]) / int(lengths[i] + 1),
                          int(sources[i]), int(lengths[i] + 1)))
    return spent


def algorithmic_scores(model, index: int, name: str, options: dict, flops: tuple[int, int]
                       ) -> dict:
    """Exact match (greedy) and spent depth on the test split of the problem with `options`."""
    import torch

    from t2t.inference import decode_ids
    from t2t.registry import get_problem_class

    problem = get_problem_class(name)(**options)
    samples = list(problem.generate_samples("test"))
    correct = []
    for start in range(0, len(samples), 100):
        chunk = samples[start:start + 100]
        inputs, inputs_pad = problem.inputs.collate(
            [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in chunk])
        with torch.no_grad():
            ids = decode_ids(model, index, inputs, inputs_pad, beam_size=1,
                             max_length=2 * inputs.size(1) + 10)
        correct += [problem.targets.decode(p) == s["targets"] for p, s in zip(ids, chunk,
                                                                               strict=True)]
    spent = spent_depth(model, index, problem, samples)
    record = {"exact_match": sum(correct) / len(samples), **depth_summary(spent, flops)}
    # Depth against difficulty: by input length, and for addition by carries.
    groups = collections.defaultdict(list)
    for sample, ok, (encoder, decoder, _, _) in zip(samples, correct, spent, strict=True):
        for group in difficulty(problem, sample["inputs"]):
            groups[group].append((ok, encoder, decoder))
    record["by_difficulty"] = {
        key: {"n": len(rows), "exact_match": sum(r[0] for r in rows) / len(rows),
              "encoder_steps": statistics.fmean(r[1] for r in rows),
              "decoder_steps": statistics.fmean(r[2] for r in rows)}
        for key, rows in groups.items()}
    return record


def depth_summary(spent: list[tuple[float, float, int, int]], flops: tuple[int, int]) -> dict:
    """Mean steps per position of each side, and FLOPs per (input or target) position."""
    encoder_positions = sum(s[2] for s in spent)
    decoder_positions = sum(s[3] for s in spent)
    encoder_steps = sum(s[0] * s[2] for s in spent) / encoder_positions
    decoder_steps = sum(s[1] * s[3] for s in spent) / decoder_positions
    total = (encoder_steps * encoder_positions * flops[0]
             + decoder_steps * decoder_positions * flops[1])
    return {"encoder_steps": encoder_steps, "decoder_steps": decoder_steps,
            "mflops_per_token": total / (encoder_positions + decoder_positions) / 1e6}


def train(spec: dict, problem: list[str], options: list[str], model_name: str, seed: int,
          run_dir: Path, minutes: float | None) -> None:
    run([script("t2t-train"), *problem, *options, f"model={spec['model']}",
         f"model.num_encoder_layers={DEPTH}", f"model.num_decoder_layers={DEPTH}",
         f"model.recurrence={MODELS[model_name]}", f"seed={seed}",
         f"trainer.max_time={hms(minutes or spec['minutes'])}", "trainer.enable_progress_bar=false",
         "eval.examples=0", "data.num_workers=0", f"data_dir={run_dir.parent / 'data'}",
         f"run_dir={run_dir}"])


def measure(task: str, model_name: str, seed: int, root: Path, minutes: float | None) -> dict:
    import torch

    from t2t.inference import load_checkpoint

    spec = TASKS[task]
    options = [f"problem.{k}={v}" for k, v in spec["trained"].items()]
    problem = ([f"experiment={spec['experiment']}"] if "experiment" in spec
               else [f"problem={spec['problem']}", *ALGORITHMIC])
    run_dir = root / f"{task}-{model_name}-seed{seed}"
    trained = run_dir / "trained"  # a rerun would train another max_time: skip instead
    if not trained.exists():
        train(spec, problem, options, model_name, seed, run_dir, minutes)
        trained.touch()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model, problems = load_checkpoint(ckpt)
    steps = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    c = model.config
    flops = flops_per_position_step(c.d_model, c.d_ff)
    record = {"task": task, "model": model_name, "seed": seed, "train_steps": steps,
              "body_parameters": model.body.num_parameters()}
    if task == "multi30k":
        problem_obj = problems[0]
        samples = list(problem_obj.generate_samples("test"))
        record.update(depth_summary(spent_depth(model, 0, problem_obj, samples), flops))
        record.update(evaluate([f"problem={spec['problem']}", *options], ckpt,
                               data_dir=str(root / "data"), beam_size=4))
        return record
    record["trained_lengths"] = algorithmic_scores(model, 0, spec["problem"], spec["trained"],
                                                   flops)
    record["longer"] = algorithmic_scores(model, 0, spec["problem"],
                                          {**spec["trained"], **spec["longer"]}, flops)
    return record


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict]) -> str:
    lines = ["| task | model | seeds | body params | train steps | score | score, 2x longer "
             "| encoder steps | decoder steps | MFLOPs/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = collections.defaultdict(list)
    for r in records:
        by[(r["task"], r["model"])].append(r)
    for task in TASKS:
        for model_name in MODELS:
            rows = by.get((task, model_name))
            if not rows:
                continue
            score = "exact" if "trained_lengths" in rows[0] else "BLEU"
            main = [r["trained_lengths"]["exact_match"] if score == "exact" else r["bleu"]
                    for r in rows]
            longer = [r["longer"]["exact_match"] for r in rows] if score == "exact" else []
            side = {k: [r.get("trained_lengths", r)[k] for r in rows]
                    for k in ("encoder_steps", "decoder_steps", "mflops_per_token")}
            lines.append(
                f"| {task} | {model_name} | {len(rows)} | {rows[0]['body_parameters']:,} | "
                f"{mean_sd([r['train_steps'] for r in rows], 0)} | {score} "
                f"{mean_sd(main, 3 if score == 'exact' else 2)} | {mean_sd(longer)} | "
                f"{mean_sd(side['encoder_steps'], 2)} | {mean_sd(side['decoder_steps'], 2)} | "
                f"{mean_sd(side['mflops_per_token'], 2)} |")
    return "\n".join(lines)


def difficulty_table(records: list[dict]) -> str:
    """act's steps against difficulty, averaged over seeds, at trained and longer lengths."""
    lines = ["| task | lengths | group | samples | exact | encoder steps | decoder steps |",
             "|---|---|---|---|---|---|---|"]
    for task in ("addition", "reverse"):
        rows = [r for r in records if r["task"] == task and r["model"] == "act"]
        if not rows:
            continue
        for where in ("trained_lengths", "longer"):
            groups = rows[0][where]["by_difficulty"]
            kinds = sorted(groups, key=lambda k: (k.split()[0], int(k.split()[1].split("-")[0])))
            for key in kinds:
                cells = [r[where]["by_difficulty"].get(key) for r in rows]
                cells = [c for c in cells if c]
                shown = key.replace("carries 5", "carries 5+")
                lines.append(
                    f"| {task} | {where.replace('_', ' ')} | {shown} | {cells[0]['n']} | "
                    f"{statistics.fmean(c['exact_match'] for c in cells):.3f} | "
                    f"{statistics.fmean(c['encoder_steps'] for c in cells):.2f} | "
                    f"{statistics.fmean(c['decoder_steps'] for c in cells):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--run-root", type=Path, default=Path("outputs/adaptive"))
    parser.add_argument("--minutes", type=float, help="training time of every run (a dry run: "
                        "0.2); default: each task's own")
    parser.add_argument("--table", action="store_true", help="print the tables, train nothing")
    args = parser.parse_args()
    args.run_root.mkdir(parents=True, exist_ok=True)
    results = args.run_root / "scores.jsonl"

    def key(record: dict) -> tuple:
        return record["task"], record["model"], record["seed"]

    done = appended(results, key)
    if not args.table:
        import json

        import problems  # noqa: F401  registers the built-in problems
        # Seeds outermost, models interleaved: a stopped run leaves comparable partial tables.
        for seed in args.seeds:
            for task in args.tasks:
                for model_name in args.models:
                    if (task, model_name, seed) in done:
                        continue
                    record = measure(task, model_name, seed, args.run_root, args.minutes)
                    with open(results, "a") as out:
                        out.write(json.dumps(record) + "\n")
                    done[key(record)] = record
                    print(json.dumps({k: v for k, v in record.items()
                                      if k not in ("trained_lengths", "longer")}
                                     | {"exact": record.get("trained_lengths", {})
                                        .get("exact_match"),
                                        "exact_longer": record.get("longer", {})
                                        .get("exact_match")}), flush=True)
    records = list(done.values())
    print(table(records))
    print()
    print(difficulty_table(records))


if __name__ == "__main__":
    sys.exit(main())
