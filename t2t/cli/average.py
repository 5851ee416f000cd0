"""t2t-average: one checkpoint holding the mean weights of several of the same run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t2t.cli.common import run_hydra
from t2t.errors import UserError


def newest_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The `last` checkpoints of a run with the highest steps (last.ckpt counts where its step
    is not saved under another name too)."""
    from t2t.inference import read_checkpoint

    folder = run_dir / "checkpoints"
    by_step: dict[int, Path] = {}
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: p.name == "last.ckpt"):
        by_step.setdefault(read_checkpoint(path, mmap=True).get("global_step", 0), path)
    if len(by_step) < max(last, 2):
        raise UserError(f"{folder} holds {len(by_step)} checkpoint(s) of different steps, "
                        f"{last} asked for; train with keep_checkpoints={last} (and "
                        f"checkpoint_every=STEPS) to keep that many")
    return [by_step[step] for step in sorted(by_step)[-last:]]


def average(config: Any) -> None:
    import torch

    from t2t.checkpoints import average_checkpoints

    if config.ckpt and config.run_dir:
        raise UserError("give ckpt=[...] or run_dir=RUN (its last N checkpoints), not both")
    if config.run_dir:
        paths = newest_checkpoints(Path(config.run_dir), config.last)
    elif len(config.ckpt) >= 2:
        paths = [Path(p) for p in config.ckpt]
    else:
        raise UserError("name two or more checkpoints, ckpt=[A.ckpt,B.ckpt], or a run, "
                        "run_dir=RUN last=5")
    averaged = average_checkpoints(paths)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    torch.save(averaged, partial)
    os.replace(partial, output)
    steps = ", ".join(str(item["step"]) for item in averaged["averaged"])
    print(f"t2t-average: {len(paths)} checkpoints (steps {steps}) averaged into {output}")


def main() -> None:
    run_hydra("t2t-average", "average", average)


if __name__ == "__main__":
    main()
