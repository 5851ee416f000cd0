"""Samples/s the training DataModule delivers per modality, against what `small` consumes.

For text (Multi30k), image (MNIST digit strings), audio (FSDD) and RNA (rna_design), with the
batch size of each problem's experiment config: the training loader (shard reading, decoding,
augmentation, collation, in 0/1/2 worker processes) is timed alone, then the `small` model's
training step (forward, backward, AdamW) on the same kind of batches. The loader must deliver
a multiple of what the step consumes, or it is the bottleneck.

    python benchmarks/dataloading.py [--workers 0,1,2] [--seconds 15] [--modalities text,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import torch
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


def loader_speed(datamodule: T2TDataModule, seconds: float) -> float:
    """Samples/s from the first batch on (worker start-up excluded), for up to `seconds`."""
    samples, start = 0, None
    for batch in datamodule.train_dataloader():
        if start is None:
            start = time.perf_counter()
            continue
        samples += len(batch["targets"])
        if time.perf_counter() - start > seconds:
            break
    return samples / (time.perf_counter() - start)


def training_speed(problem, datamodule: T2TDataModule, steps: int, bottoms: dict) -> float:
    """Samples/s of `small`'s training steps on batches taken from the loader beforehand."""
    torch.manual_seed(0)
    model = T2TModel(dataclasses.replace(PRESETS["small"], bottoms=bottoms),
                     [(problem.inputs, problem.targets)])
    lit = T2TLitModule(model, [problem])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == steps + 2:
            break
    samples, start = 0, None
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            samples, start = 0, time.perf_counter()
        loss, _ = lit.loss(batch, 0.1, lit.ctc_weights[0])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(batch["targets"])
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modalities", default=",".join(PROBLEMS))
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=15.0, help="loader time per setting")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    discover()
    rows = []
    for modality in args.modalities.split(","):
        name, experiment, options, max_samples = PROBLEMS[modality]
        options = {k: str(v) for k, v in options.items() if Path(v).is_dir()}
        problem = get_problem_class(name)(**options)
        generate(problem, args.data_dir, max_samples=max_samples, progress=False, workers=2)
        problem_dir = open_shards(problem, args.data_dir, {"max_samples": max_samples})
        config = OmegaConf.load(ROOT / "problems" / "configs" / "experiment" / f"{experiment}.yaml")
        max_tokens = int(config.data.max_tokens)
        # The experiment's own augmentation and bottoms (an image stem); by default, none.
        augment, bottoms = (OmegaConf.to_container(OmegaConf.select(config, key, default=
                                                                    OmegaConf.create()))
                            for key in ("data.augment", "model.bottoms"))

        datamodule = functools.partial(T2TDataModule, [problem], [problem_dir],
                                       max_tokens=max_tokens, augment=augment)
        consumed = training_speed(problem, datamodule(num_workers=0), args.steps, bottoms)
        delivered = {w: loader_speed(datamodule(num_workers=w), args.seconds) for w in workers}
        rows.append((modality, name, max_tokens, consumed, delivered))
        print(f"{modality}: small trains {consumed:.0f} samples/s; loader "
              + ", ".join(f"{w} workers {s:.0f}/s" for w, s in delivered.items()), flush=True)

    print()
    print(f"CPU threads: {torch.get_num_threads()}")
    print()
    print("| modality | problem | max_tokens | small trains (samples/s) | "
          + " | ".join(f"loader, {w} workers" for w in workers)
          + f" | loader / training ({workers[-1]} workers) |")
    print("|---|---|---|---|" + "---|" * len(workers) + "---|")
    for modality, name, max_tokens, consumed, delivered in rows:
        print(f"| {modality} | {name} | {max_tokens} | {consumed:.0f} | "
              + " | ".join(f"{delivered[w]:.0f}" for w in workers)
              + f" | {delivered[workers[-1]] / consumed:.1f}x |")


if __name__ == "__main__":
    main()
