"""What t2t-train prints: each Lightning message once, no advertising, a sensible epoch
counter, and plain progress lines when the output is a log file (t2t.progress)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch

from t2t.progress import PeriodicReporter, format_duration, progress_callbacks

from .conftest import run_command

TINY = ["problem=algorithmic_reverse", "problem.train_size=200", "problem.eval_size=20",
        "model=tiny", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "data.num_workers=0", "eval.decode_batches=1"]
PROGRESS = re.compile(r"^step (\d+)/4, epoch \d+, loss \d+\.\d{4}, [\d,]+ tokens/s, "
                      r"[\d.,]+ samples/s, elapsed \d+:\d\d:\d\d(, eta \d+:\d\d:\d\d)?$")


def test_train_log_is_plain_once_and_without_tips(tmp_path):
    # Output captured: not a terminal, as in a cluster job's log file.
    result = run_command("t2t-train", *TINY, "progress_every_s=0",
                         f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for message in ("GPU available", "TPU available", "`Trainer.fit` stopped"):
        assert output.count(message) == 1, output
    assert "[HYDRA]" not in output
    assert "Tip:" not in output and "litlogger" not in output and "litmodels" not in output

    lines = result.stdout.splitlines()
    steps = [int(m.group(1)) for m in map(PROGRESS.match, lines) if m]
    assert steps == [1, 2, 3, 4], result.stdout  # progress_every_s=0: a line every step
    assert sum(line.startswith("validation at step 2 (") for line in lines) == 1
    assert "val/algorithmic_reverse/loss" in result.stdout
    # No progress bar written into the file: neither Lightning's rich bar nor its epochs.
    assert not [line for line in lines if line.startswith("Epoch") or "it/s" in line]
    assert "metrics after 4 steps" in result.stdout


def test_periodic_reporter_prints_every_interval():
    now = [100.0]
    printed: list[str] = []
    reporter = PeriodicReporter(30, printed.append, clock=lambda: now[0])
    calls = []

    def message() -> str:
        calls.append(now[0])
        return f"at {now[0]:.0f}"

    for t in (100, 110, 129.9, 130, 140, 159, 161):
        now[0] = t
        reporter.maybe(message)
    assert printed == ["at 130", "at 161"]
    assert calls == [130, 161]  # the line is only built when one is due
    assert reporter.elapsed == pytest.approx(61)
    reporter.report("final")
    assert printed[-1] == "final" and not reporter.due()

    every, never = [], []
    reporter, silent = PeriodicReporter(0, every.append), PeriodicReporter(None, never.append)
    for i in range(3):
        reporter.maybe(lambda i=i: f"line {i}")
        silent.maybe(lambda: "never")
    assert every == ["line 0", "line 1", "line 2"] and never == []
    assert not PeriodicReporter(0, every.append).maybe(lambda: None)  # None: nothing to say
    with pytest.raises(ValueError):
        PeriodicReporter(-1)
    assert format_duration(312.7) == "0:05:12" and format_duration(97380) == "27:03:00"


def test_lightning_tips_dropped_and_other_messages_kept():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from t2t.progress import drop_lightning_tips

    drop_lightning_tips()
    drop_lightning_tips()  # twice: one filter
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert len(logger.filters) == len(set(map(type, logger.filters)))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)  # sees what the logger's filters let through
    try:
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("GPU available: False, used: False")
        logger.warning("💡 Tip: a warning is never dropped")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False",
                                                 "💡 Tip: a warning is never dropped"]


def fake_trainer(**overrides) -> SimpleNamespace:
    trainer = SimpleNamespace(global_step=0, max_steps=4, max_epochs=-1, current_epoch=0,
                              world_size=1, accumulate_grad_batches=1, is_global_zero=True,
                              sanity_checking=False, state=SimpleNamespace(fn="fit"),
                              callback_metrics={}, loggers=[], progress_bar_metrics={})
    trainer.__dict__.update(overrides)
    return trainer


def test_progress_display_chosen_by_output():
    assert progress_callbacks(30, enabled=False, terminal=True) == []
    assert progress_callbacks(None, terminal=False) == []
    (bar,) = progress_callbacks(30, terminal=True)
    (plain,) = progress_callbacks(30, terminal=False)
    assert type(bar).__name__ == "RichStepProgressBar"
    assert type(plain).__name__ == "PlainProgressBar" and plain.every_s == 30


def test_rich_bar_epoch_reads_sensibly():
    from t2t.progress import RichStepProgressBar

    bar = RichStepProgressBar()
    bar._trainer = fake_trainer(max_steps=3000, global_step=1200,
                                progress_bar_metrics={"train/loss": 2.5})
    assert bar._get_train_description(8).strip() == "Epoch 8"  # not "Epoch 8/-2"
    assert bar.get_metrics(bar.trainer, None) == {"step": "1200/3000", "train/loss": 2.5}
    bar._trainer = fake_trainer(max_epochs=10, max_steps=-1)
    assert bar._get_train_description(8).strip() == "Epoch 8/9"
    assert "step" not in bar.get_metrics(bar.trainer, None)


@pytest.mark.parametrize("rank_zero", [True, False])
def test_plain_progress_lines_on_global_rank_zero_only(rank_zero):
    from t2t.progress import PlainProgressBar

    printed: list[str] = []
    bar = PlainProgressBar(every_s=0, print_fn=printed.append)
    trainer = fake_trainer(is_global_zero=rank_zero, world_size=2)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    batch = {"keys": ["a", "b"], "weight": 1.0, "targets": torch.tensor([[5, 6, 0], [7, 0, 0]])}
    filler = {**batch, "weight": 0.0}  # keeps DDP ranks in step: not counted
    for step, (loss, b) in enumerate([(2.0, batch), (0.0, filler), (4.0, batch)], 1):
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, b, step - 1)
    trainer.callback_metrics = {"val/p/loss": torch.tensor(1.5), "train/loss": 3.0}
    bar.on_validation_start(trainer, None)
    bar.on_validation_end(trainer, None)
    trainer.global_step = 4
    bar.on_train_batch_end(trainer, None, None, batch, 3)  # a skipped (non-finite) batch
    bar.on_train_end(trainer, None)  # the last step already has its line: no other
    if not rank_zero:
        assert printed == []
        return
    assert [line.split(",")[0] for line in printed] == [
        "step 1/4", "step 2/4", "step 3/4", "validation at step 3 (0:00:00): val/p/loss 1.5000",
        "step 4/4"]
    assert "loss 2.0000" in printed[0] and "tokens/s" in printed[0] and "eta " in printed[0]
    assert "loss" not in printed[1] and "tokens/s" not in printed[1]  # only a filler batch
    assert "epoch 0" in printed[2] and "eta" not in printed[-1]
