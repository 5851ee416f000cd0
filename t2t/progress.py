"""What long runs print while they run: progress for terminals and for log files.

On a terminal, t2t-train shows Lightning's rich progress bar, whose epoch counter reads
`Epoch 8` in a run bounded by steps (Lightning's own reads `Epoch 8/-2` when max_epochs=-1),
with the step among its metrics (`step: 1200/3000`). Anywhere else (a cluster job's log file,
a pipe) a bar is useless, so a plain line every `progress_every_s` seconds replaces it, on
global rank 0 only:

    step 1,200/3,000, epoch 8, loss 2.3451, 4,512 tokens/s, 123.4 samples/s, elapsed 0:05:12,
    eta 0:07:48    (one line)

`PeriodicReporter` is the clock behind those lines, for any loop that wants the same:

    reporter = PeriodicReporter(every_s=30)
    for n, sample in enumerate(samples, 1):
        ...
        reporter.maybe(lambda: f"{name}/{split}: {n:,} samples, {n / reporter.elapsed:.1f}/s")

This module imports neither torch nor Lightning at import time (datagen's worker processes
import it); the Lightning callbacks are built on first use.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any


def format_duration(seconds: float) -> str:
    """0:05:12 (hours grow past 24: 27:03:00)."""
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def print_flushed(message: str) -> None:
    """print, flushed at once: a redirected stdout is block-buffered and a log file would
    otherwise show progress minutes late, or never if the job is killed."""
    print(message, flush=True)


class PeriodicReporter:
    """Prints a line at most every `every_s` seconds.

    `maybe(message_fn)` in a loop calls `message_fn()` only when a line is due (so building
    the line may cost something) and prints what it returns (None: nothing). The first line is
    due `every_s` seconds after the reporter was made; `every_s=0` prints at every call,
    `every_s=None` never. `report(message)` prints at once and restarts the interval (a
    final summary, say). `elapsed` is the time since the reporter was made."""

    def __init__(self, every_s: float | None = 30.0,
                 print_fn: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if every_s is not None and every_s < 0:
            raise ValueError(f"every_s must be >= 0 or None, got {every_s}")
        self.every_s = every_s
        self.print_fn = print_fn or print_flushed
        self.clock = clock
        self.start = self.last = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def due(self) -> bool:
        return self.every_s is not None and self.clock() - self.last >= self.every_s

    def maybe(self, message_fn: Callable[[], str | None]) -> bool:
        """Print message_fn()'s line if one is due; whether a line was printed."""
        if not self.due():
            return False
        message = message_fn()
        if message is None:
            return False
        self.report(message)
        return True

    def report(self, message: str) -> None:
        self.print_fn(message)
        self.last = self.clock()


# -- Lightning's advertising -----------------------------------------------------------------

# The loggers Lightning's rank_zero_info writes through (lightning.pytorch's, normally).
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero",
                      "lightning.fabric.utilities.rank_zero",
                      "pytorch_lightning.utilities.rank_zero",
                      "lightning_fabric.utilities.rank_zero")


class DropLightningTips(logging.Filter):
    """Drops Lightning's INFO-level product tips (`💡 Tip: ... try installing [litlogger]`,
    `... [litmodels]`), which Lightning prints at every Trainer with no switch to turn them
    off. Warnings and every other message pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        return not record.getMessage().lstrip("💡 ").startswith("Tip:")


def drop_lightning_tips() -> None:
    """Install DropLightningTips on the loggers Lightning's tips come through (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningTips) for f in logger.filters):
            logger.addFilter(DropLightningTips())


# -- progress during training ------------------------------------------------------------------


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal, as rich (the progress bar's writer) sees it."""
    from rich.console import Console

    return Console(file=sys.stdout).is_terminal


def progress_callbacks(every_s: float | None, enabled: bool = True,
                       terminal: bool | None = None) -> list[Any]:
    """t2t-train's progress display, to add to the Trainer's callbacks: on a terminal the rich
    bar (RichStepProgressBar), elsewhere plain lines every `every_s` seconds
    (PlainProgressBar; none when every_s is None), nothing when not `enabled` (the trainer's
    enable_progress_bar). Give the Trainer `enable_progress_bar=bool(result)`, so that
    Lightning adds no bar of its own."""
    if not enabled:
        return []
    if stdout_is_terminal() if terminal is None else terminal:
        return [_lightning_classes()["RichStepProgressBar"]()]
    if every_s is None:
        return []
    return [_lightning_classes()["PlainProgressBar"](every_s)]


def __getattr__(name: str) -> Any:
    """RichStepProgressBar and PlainProgressBar, built (importing Lightning) on first use."""
    if name in ("RichStepProgressBar", "PlainProgressBar"):
        return _lightning_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _target_counts(batch: Any) -> tuple[int, Any]:
    """(samples, target tokens) of a t2t training batch (t2t.datamodule): tokens are the
    non-padding labels, a tensor on the batch's device (no wait for the device here).
    (0, 0) for a DDP filler batch (weight 0) or anything else."""
    if not isinstance(batch, Mapping) or not batch.get("weight", 1):
        return 0, 0
    labels = batch.get("labels", batch.get("targets"))
    keys = batch.get("keys")
    samples = len(keys) if keys is not None else (len(labels) if labels is not None else 0)
    integer = labels is not None and hasattr(labels, "dtype") and not labels.dtype.is_floating_point
    return samples, (labels != 0).sum() if integer else 0


@functools.cache
def _lightning_classes() -> dict[str, type]:
    from lightning.pytorch.callbacks.progress import ProgressBar, RichProgressBar

    class RichStepProgressBar(RichProgressBar):
        """Lightning's rich bar, whose epoch reads `Epoch 8` when the run is bounded by steps
        (max_epochs=-1), not `Epoch 8/-2`, and with `step: 1200/3000` among its metrics."""

        def _get_train_description(self, current_epoch: int) -> str:
            max_epochs = self.trainer.max_epochs
            description = f"Epoch {current_epoch}"
            if max_epochs is not None and max_epochs > 0:
                description += f"/{max_epochs - 1}"
            return f"{description:{len(self.validation_description)}}"

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            metrics = super().get_metrics(trainer, pl_module)
            if trainer.max_steps > 0:
                return {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
            return metrics

    class PlainProgressBar(ProgressBar):
        """A plain progress line every `every_s` seconds and after each validation, on global
        rank 0 (Lightning's ProgressBar.setup disables the others), for log files: step,
        epoch, mean loss, target tokens and samples per second (rank 0's times the world size)
        since the last line, validation excluded, elapsed time and the time left. A last
        line when training ends."""

        def __init__(self, every_s: float = 30.0,
                     print_fn: Callable[[str], None] | None = None):
            super().__init__()
            self.every_s = every_s
            self.print_fn = print_fn or print_flushed
            self._enabled = True
            self.reporter: PeriodicReporter | None = None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        @property
        def is_enabled(self) -> bool:
            return self._enabled

        @property
        def is_disabled(self) -> bool:
            return not self._enabled

        def print(self, *args: Any, **kwargs: Any) -> None:
            print(*args, **kwargs, flush=True)

        def _restart_window(self) -> None:
            self._window_start = time.monotonic()
            self._window_paused = 0.0  # seconds of validation inside the window
            self._loss_sum, self._loss_count = 0.0, 0
            self._samples, self._tokens = 0, 0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.reporter = PeriodicReporter(self.every_s, self.print_fn)
            self._first_step = self._printed_step = trainer.global_step
            self._validation_start: float | None = None
            self._restart_window()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if not self._enabled or self.reporter is None:
                return
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            samples, tokens = _target_counts(batch)
            if loss is not None and samples:  # None: a skipped (non-finite) batch
                # Lightning hands hooks the loss divided by accumulate_grad_batches.
                self._loss_sum = self._loss_sum + loss.detach() * trainer.accumulate_grad_batches
                self._loss_count += 1
            self._samples += samples
            self._tokens = self._tokens + tokens
            if self.reporter.maybe(lambda: self.line(trainer)):
                self._printed_step = trainer.global_step
                self._restart_window()

        def line(self, trainer: Any) -> str:
            step, max_steps, max_epochs = (trainer.global_step, trainer.max_steps,
                                           trainer.max_epochs)
            parts = [f"step {step:,}/{max_steps:,}" if max_steps > 0 else f"step {step:,}"]
            parts.append(f"epoch {trainer.current_epoch}"
                         + (f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0
                            else ""))
            if self._loss_count:
                parts.append(f"loss {float(self._loss_sum) / self._loss_count:.4f}")
            seconds = time.monotonic() - self._window_start - self._window_paused
            if seconds > 0:
                world = trainer.world_size
                if self._tokens:
                    parts.append(f"{float(self._tokens) * world / seconds:,.0f} tokens/s")
                if self._samples:
                    parts.append(f"{self._samples * world / seconds:,.1f} samples/s")
            assert self.reporter is not None
            elapsed = self.reporter.elapsed
            parts.append(f"elapsed {format_duration(elapsed)}")
            done = step - self._first_step
            if max_steps > 0 and done > 0 and step < max_steps:
                parts.append(f"eta {format_duration(elapsed / done * (max_steps - step))}")
            return ", ".join(parts)

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            self._validation_start = time.monotonic()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if (not self._enabled or trainer.sanity_checking or trainer.state.fn != "fit"
                    or self._validation_start is None):
                return
            seconds = time.monotonic() - self._validation_start
            self._window_paused += seconds
            self._validation_start = None
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                       if name.startswith("val/")}
            values = ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
            self.print_fn(f"validation at step {trainer.global_step:,} "
                          f"({format_duration(seconds)}){': ' + values if values else ''}")

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if (self._enabled and self.reporter is not None
                    and trainer.global_step != self._printed_step):
                self.reporter.report(self.line(trainer))
                self._printed_step = trainer.global_step

    classes = {"RichStepProgressBar": RichStepProgressBar, "PlainProgressBar": PlainProgressBar}
    for cls in classes.values():  # picklable, and named as if defined at module level
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return classes
