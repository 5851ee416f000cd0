"""Checkpoints that survive pre-emption: written atomically, saved on SIGTERM, and on resume
an unreadable last.ckpt falls back to the newest readable one."""

from __future__ import annotations

import dataclasses
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
                "max_positions", "activation", "bottoms", "recurrence")


def saved_setting(model: dict[str, Any], key: str) -> Any:
    """A model setting of a checkpoint; its default where the checkpoint predates it."""
    from t2t.model import ModelConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)
                if f.default is not dataclasses.MISSING}
    return model.get(key, defaults.get(key))


def _check_same_run(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Resuming another problem's or another model's checkpoint would fail deep inside
    load_state_dict (or, worse, half work): say what differs instead."""
    names = [spec["name"] for spec in saved["problems"]]
    wanted = [spec["name"] for spec in expected["problems"]]
    if names != wanted:
        raise UserError(f"{path} was trained on {', '.join(names)}, not "
                        f"{', '.join(wanted)}; pass another run_dir for this run")
    differ = [f"{key} {saved_setting(saved['model'], key)} vs {expected['model'][key]}"
              for key in ARCHITECTURE
              if saved_setting(saved["model"], key) != expected["model"][key]]
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


def init_from_path(value: str | Path) -> Path:
    """init_from's checkpoint file, checked before datagen (which may take long)."""
    path = Path(value)
    if not path.is_file():
        raise UserError(f"init_from={path}: no such checkpoint; pass a .ckpt file, such as "
                        f"RUN_DIR/checkpoints/last.ckpt")
    return path


# One row per problem of the model, by position: a warm start maps them by problem name.
PROBLEM_ROWS = ("body.problem_embedding.weight", "body.bos.weight")


def warm_start(model: torch.nn.Module, problem_names: list[str], path: str | Path) -> str:
    """Load a trained checkpoint's weights into a new run's model, and say what happened: the
    body (same model settings required), each bottom and top whose modality key (kind, options
    and vocabulary) matches, and the problem embedding rows of problems with the same name;
    the rest starts fresh, and what the checkpoint has beyond this model is dropped."""
    from t2t.inference import read_t2t_checkpoint

    path = init_from_path(path)
    checkpoint = read_t2t_checkpoint(path)
    info = checkpoint["t2t"]
    expected = dataclasses.asdict(model.body.config)
    differ = [f"{key} {saved_setting(info['model'], key)} vs {expected[key]}"
              for key in ARCHITECTURE
              if key != "bottoms" and saved_setting(info["model"], key) != expected[key]]
    if differ:
        raise UserError(f"init_from={path} holds another model ({'; '.join(differ)} now); "
                        f"fine-tune with its model settings (model=... and model.* as trained)")

    saved = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    state = model.state_dict()
    saved_names = [spec["name"] for spec in info["problems"]]
    rows = _problem_rows(model, problem_names, info["problems"])
    for key in PROBLEM_ROWS:
        for row, source in rows.items():
            state[key][row] = saved[key][source]

    def component(key: str) -> str:  # body, bottoms.<modality>, tops.<modality>
        return "body" if key.startswith("body.") else ".".join(key.split(".")[:2])

    ours: dict[str, list[str]] = {}
    for key in state:
        if key not in PROBLEM_ROWS:
            ours.setdefault(component(key), []).append(key)
    loaded, new = [], []
    for name, keys in ours.items():
        if all(k in saved and saved[k].shape == state[k].shape for k in keys):
            for k in keys:
                state[k] = saved[k]
            loaded.append(name)
        else:
            new.append(name)
    model.load_state_dict(state)
    dropped = sorted({component(k) for k in saved} - set(ours))
    fresh_rows = [name for row, name in enumerate(problem_names) if row not in rows]
    kept_rows = [name if name == saved_names[source] else f"{name} (from {saved_names[source]})"
                 for name, source in ((problem_names[row], source) for row, source in
                                      rows.items())]
    parts = [f"loaded {', '.join(loaded) or 'nothing'}",
             f"problem rows of {', '.join(kept_rows) or 'none'}"]
    if new or fresh_rows:
        parts.append(f"new: {', '.join(new + [f'the row of {n}' for n in fresh_rows])}")
    if dropped:
        parts.append(f"dropped: {', '.join(dropped)}")
    return f"init_from {path}: {'; '.join(parts)}"


def _problem_rows(model: torch.nn.Module, names: list[str], saved: list[dict[str, Any]]
                  ) -> dict[int, int]:
    """Each problem row of the new model -> the checkpoint's row it starts from: the problem of
    the same name; else the one problem trained with the same input and target modalities
    (your own text_pairs in a Multi30k model's vocabulary start from Multi30k's problem token
    and BOS: fresh random ones would be new inputs to every layer)."""
    from t2t.model import module_key

    saved_names = [spec["name"] for spec in saved]
    saved_keys = [tuple(module_key(spec["keys"][role]) for role in ("inputs", "targets"))
                  for spec in saved]
    rows = {}
    for row, name in enumerate(names):
        if name in saved_names:
            rows[row] = saved_names.index(name)
        elif saved_keys.count(model.keys[row]) == 1:
            rows[row] = saved_keys.index(model.keys[row])
    return rows


def freeze(model: torch.nn.Module, prefixes: list[str]) -> str:
    """Stop training the parameters under each prefix (a module path such as body.encoder);
    an unknown prefix is an error naming close ones."""
    from t2t.errors import unknown_name

    names = [name for name, _ in model.named_parameters()]
    modules = sorted({".".join(name.split(".")[:depth]) for name in names
                      for depth in range(1, name.count(".") + 1)})
    frozen = 0
    for prefix in prefixes:
        hit = [p for name, p in model.named_parameters()
               if name == prefix or name.startswith(prefix + ".")]
        if not hit:
            raise unknown_name("module", prefix, modules,
                               "freeze takes module paths such as body.encoder, "
                               "body.decoder, bottoms.<modality>", where=" in freeze")
        for parameter in hit:
            parameter.requires_grad_(False)
        frozen += sum(p.numel() for p in hit)
    return f"frozen: {', '.join(prefixes)} ({frozen:,} parameters)"


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose weights are the mean of the given checkpoints' (tensor2tensor's
    avg_checkpoints, fairseq's average_checkpoints.py): t2t-decode and t2t-eval read it like
    any other. All must be of the same problems and model; integer buffers are the newest's."""
    from t2t.inference import read_t2t_checkpoint

    loaded = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} not found")
        checkpoint = read_t2t_checkpoint(Path(path))
        if loaded:
            _check_same_run(Path(path), checkpoint["t2t"], loaded[0][1]["t2t"])
        loaded.append((Path(path), checkpoint))
    loaded.sort(key=lambda item: item[1].get("global_step", 0))
    newest = loaded[-1][1]
    averaged = {}
    for key, value in newest["state_dict"].items():
        if value.is_floating_point():
            total = sum(c["state_dict"][key].double() for _, c in loaded)
            averaged[key] = (total / len(loaded)).to(value.dtype)
        else:
            averaged[key] = value
    return {"state_dict": averaged, "t2t": newest["t2t"],
            "global_step": newest.get("global_step", 0),
            "averaged": [{"path": str(p), "step": c.get("global_step", 0)} for p, c in loaded]}
