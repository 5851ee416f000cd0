"""Samples/s the training DataModule delivers per modality, against what a model consumes.

For text (Multi30k), image (MNIST digit strings), audio (FSDD) and RNA (rna_design), with the
batch size of each problem's experiment config: the training loader (shard reading, decoding,
augmentation, collation, in each number of worker processes) is timed alone, then the model's
training step (forward with the modality's bottom, backward, AdamW; on --device, the audio and
image front ends there too) on the same kind of batches. The loader must deliver a multiple
of what the step consumes, or it is the bottleneck.

    python benchmarks/dataloading.py [--workers 0,1,2] [--seconds 15] [--modalities text,...]
    python benchmarks/dataloading.py --device cuda --precision bf16 --workers 0,4,8
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # problems/, modalities/

from budget import SHARED  # noqa: E402

from t2t.data import open_shards  # noqa: E402
from t2t.datagen import generate  # noqa: E402
from t2t.datamodule import T2TDataModule  # noqa: E402
from t2t.lit_module import T2TLitModule  # noqa: E402
from t2t.model import PRESETS, T2TModel  # noqa: E402
from t2t.registry import discover, get_problem_class  # noqa: E402

# modality -> (problem, its experiment config, problem options, samples per split to generate)
PROBLEMS = {
    "text": ("translate_deen_multi30k", "translate_deen_multi30k",
             {"raw_dir": SHARED / "multi30k"}, None),
    "image": ("mnist_digit_strings", "mnist_digit_strings", {"raw_dir": SHARED / "mnist"}, None),
    "audio": ("spoken_digits_fsdd", "spoken_digits_fsdd", {"raw_dir": SHARED / "fsdd"}, None),
    # Folding 200k random designs takes long; the loader's speed does not depend on the count.
    "RNA": ("rna_design", "rna_design", {}, 20_000),
}


def epochs(datamodule: T2TDataModule):
    """The training loader's batches, epoch after epoch (a small split ends early)."""
    while True:
        yield from datamodule.train_dataloader()


def loader_speed(datamodule: T2TDataModule, seconds: float) -> float:
    """Samples/s from the first batch on (worker start-up excluded), for `seconds`."""
    samples, start = 0, None
    for batch in epochs(datamodule):
        if start is None:
            start = time.perf_counter()
            continue
        samples += len(batch["targets"])
        if time.perf_counter() - start > seconds:
            break
    return samples / (time.perf_counter() - start)


def training_speed(problem, datamodule: T2TDataModule, steps: int, bottoms: dict, preset: str,
                   device: torch.device, autocast) -> tuple[float, float]:
    """Samples/s and target tokens/s of the model's training steps on batches taken from the
    loader beforehand (already on the device)."""
    torch.manual_seed(0)
    model = T2TModel(dataclasses.replace(PRESETS[preset], bottoms=bottoms),
                     [(problem.inputs, problem.targets)]).to(device)
    lit = T2TLitModule(model, [problem])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batches = []
    for batch in epochs(datamodule):
        batches.append(move_data_to_device(batch, device))
        if len(batches) == steps + 2:
            break
    samples = tokens = 0
    start = None
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples, tokens, start = 0, 0, time.perf_counter()
        with autocast():
            loss, _ = lit.loss(batch, 0.1, lit.ctc_weights[0])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(batch["targets"])
        tokens += int((batch["targets"] != 0).sum()) + len(batch["targets"])  # and each EOS
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return samples / seconds, tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modalities", default=",".join(PROBLEMS))
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=15.0, help="loader time per setting")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model", default="small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--max-samples", type=int,
                        help="samples to write per split, for every problem (default: all; "
                             f"rna_design {PROBLEMS['RNA'][3]:,})")
    parser.add_argument("--generate-only", action="store_true",
                        help="write the shards, measure nothing (a timed run then reads them)")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    device = torch.device(args.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) \
        if args.precision == "bf16" else contextlib.nullcontext

    discover()
    rows = []
    for modality in args.modalities.split(","):
        name, experiment, options, max_samples = PROBLEMS[modality]
        max_samples = args.max_samples or max_samples
        options = {k: str(v) for k, v in options.items() if Path(v).is_dir()}
        problem = get_problem_class(name)(**options)
        generate(problem, args.data_dir, max_samples=max_samples, progress=False,
                 workers=min(8, os.cpu_count() or 1))
        if args.generate_only:
            continue
        problem_dir = open_shards(problem, args.data_dir, {"max_samples": max_samples})
        config = OmegaConf.load(ROOT / "problems" / "configs" / "experiment" / f"{experiment}.yaml")
        max_tokens = int(config.data.max_tokens)
        # The experiment's own augmentation and bottoms (an image stem); by default, none.
        augment, bottoms = (OmegaConf.to_container(OmegaConf.select(config, key, default=
                                                                    OmegaConf.create()))
                            for key in ("data.augment", "model.bottoms"))

        datamodule = functools.partial(T2TDataModule, [problem], [problem_dir],
                                       max_tokens=max_tokens, augment=augment)
        consumed, tokens = training_speed(problem, datamodule(num_workers=0), args.steps,
                                          bottoms, args.model, device, autocast)
        delivered = {w: loader_speed(datamodule(num_workers=w), args.seconds) for w in workers}
        rows.append((modality, name, max_tokens, consumed, tokens, delivered))
        print(f"{modality}: {args.model} trains {consumed:.0f} samples/s; loader "
              + ", ".join(f"{w} workers {s:.0f}/s" for w, s in delivered.items()), flush=True)

    if args.generate_only:
        return
    print()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Training on {where} ({args.precision}); CPU threads: {torch.get_num_threads()}, "
          f"CPU cores: {os.cpu_count()}")
    print()
    print(f"| modality | problem | max_tokens | {args.model} trains (samples/s) | target tok/s | "
          + " | ".join(f"loader, {w} workers" for w in workers)
          + f" | loader / training ({workers[-1]} workers) |")
    print("|---|---|---|---|---|" + "---|" * len(workers) + "---|")
    for modality, name, max_tokens, consumed, tokens, delivered in rows:
        print(f"| {modality} | {name} | {max_tokens} | {consumed:.0f} | {tokens:,.0f} | "
              + " | ".join(f"{delivered[w]:.0f}" for w in workers)
              + f" | {delivered[workers[-1]] / consumed:.1f}x |")


if __name__ == "__main__":
    main()
