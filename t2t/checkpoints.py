"""Checkpoints that survive pre-emption: written atomically, saved on SIGTERM, and on resume
an unreadable last.ckpt falls back to the newest readable one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from t2t.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name, then renames it into place: a process
    killed mid-write leaves the previous checkpoint whole, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class StepCheckpoints(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt holds the final step. Lightning 2.6 skips the save at
    the end of training once any last.ckpt was written during the run: a 1600-step run
    checkpointing every 500 steps kept step 1500, which t2t-eval then evaluated."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CheckpointOnSigterm(Callback):
    """A cluster pre-empts a job with SIGTERM; Lightning stops at the end of the current
    step (on every rank) and calls this: save `path` there, so the rerun loses no step."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


def resumable_checkpoint(directory: Path, expected: dict[str, Any],
                         warn: Callable[[str], Any] = print) -> Path | None:
    """last.ckpt, or the newest other checkpoint when last.ckpt cannot be read (a disk that
    filled up, a copy cut short); None when there is none (a fresh run). `expected` is this
    run's checkpoint info: a checkpoint of other problems or another model is an error."""
    from t2t.inference import UnsafeCheckpoint, read_checkpoint

    found = sorted(directory.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt",
                                                            -p.stat().st_mtime))
    problems = []
    for path in found:
        try:
            checkpoint = read_checkpoint(path, mmap=True)
        except UnsafeCheckpoint:
            raise
        except Exception as error:  # truncated or not a checkpoint: try the next one
            problems.append(f"{path} ({str(error).splitlines()[0]})")
            warn(f"t2t-train: cannot read checkpoint {problems[-1]}; trying an older one")
            continue
        info = checkpoint.get("t2t") if isinstance(checkpoint, dict) else None
        if not info:
            raise UserError(f"{path} is not a t2t checkpoint (no 't2t' section); pass another "
                            f"run_dir for this run")
        _check_same_run(path, info, expected)
        return path
    if found:
        raise UserError(f"no readable checkpoint in {directory}: {'; '.join(problems)}; "
                        f"remove them to start afresh, or pass another run_dir")
    return None


# What a resumed run may not change (dropout, say, it may).
ARCHITECTURE = ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff",
                "max_positions", "activation", "bottoms")


def _check_same_run(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Resuming another problem's or another model's checkpoint would fail deep inside
    load_state_dict (or, worse, half work): say what differs instead."""
    names = [spec["name"] for spec in saved["problems"]]
    wanted = [spec["name"] for spec in expected["problems"]]
    if names != wanted:
        raise UserError(f"{path} was trained on {', '.join(names)}, not "
                        f"{', '.join(wanted)}; pass another run_dir for this run")
    differ = [f"{key} {saved['model'].get(key)} vs {expected['model'][key]}"
              for key in ARCHITECTURE if saved["model"].get(key) != expected["model"][key]]
    if differ:
        raise UserError(f"{path} holds another model ({'; '.join(differ)} now); resume with "
                        f"the same model settings, or pass another run_dir")


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights (Polyak averaging), which validation,
    the checkpoints' state_dict and so decoding use; the raw weights go on training, kept in
    the checkpoint as `current_model_state` for resuming. Late in a short run the raw weights
    swing from one validation to the next; their average sits nearer the optimum.

    The rate ramps up as tensorflow's ExponentialMovingAverage(num_updates) does,
    min(decay, (1 + n) / (10 + n)) after n updates, so that the average follows the fast
    early changes instead of holding on to the random initial weights."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise UserError(f"ema_decay={decay}: use a number between 0 and 1 (e.g. 0.998), "
                            f"or null for no averaging")

        def average(averaged: torch.Tensor, current: torch.Tensor,
                    updates: torch.Tensor) -> torch.Tensor:
            rate = min(decay, (1.0 + float(updates)) / (10.0 + float(updates)))
            return averaged * rate + current * (1.0 - rate)

        super().__init__(avg_fn=average, use_buffers=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Lightning copies the average over the raw weights here, before the last
        checkpoint is written (checkpoint callbacks run last): that checkpoint would hold the
        average twice and a resumed run would go on from it. Keep the raw weights: the
        checkpoint's state_dict is the average anyway, and validation swaps it in."""
