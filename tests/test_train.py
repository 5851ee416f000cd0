"""Training end to end: t2t-train, t2t-decode, t2t-eval; resuming after a kill (DDP and
several nodes: test_distributed.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import run_command

FAST = ["problem=algorithmic_reverse", "problem.train_size=2000", "problem.eval_size=50",
        "model=tiny", "trainer.max_steps=30", "trainer.val_check_interval=30",
        "trainer.enable_progress_bar=false", "data.num_workers=0"]


def records(folder: Path) -> dict[int, list[tuple[int, int, list[str]]]]:
    """rank -> [(epoch, step, keys)] from the record_samples logs."""
    out = {}
    for path in sorted(folder.glob("rank*.tsv")):
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        out[int(path.stem[4:])] = [(int(e), int(s), keys.split()) for e, s, _, keys in rows]
    return out


def test_train_then_decode_and_eval(tmp_path):
    run_dir = tmp_path / "run"
    result = run_command("t2t-train", *FAST, "checkpoint_every=20", f"data_dir={tmp_path / 'data'}",
                         f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metrics after 30 steps" in result.stdout and "exact_match" in result.stdout
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    # The final step, not the one of the last periodic checkpoint (20).
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 30

    decoded = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={checkpoint}",
                          "input=12345", "decode.beam_size=2", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr
    assert len(decoded.stdout.splitlines()) == 1
    assert set(decoded.stdout.strip()) <= set("0123456789")

    evaluated = run_command("t2t-eval", "problem=algorithmic_reverse", "problem.train_size=2000",
                            "problem.eval_size=50", f"ckpt={checkpoint}", "split=test",
                            f"data_dir={tmp_path / 'data'}", f"output_file={tmp_path / 'p.txt'}",
                            cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test: 50 examples" in evaluated.stdout and "cer" in evaluated.stdout
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 50

    # From Python, as a script that imports nothing else would.
    script = ("from t2t.inference import decode_raw, load_checkpoint\n"
              f"model, problems = load_checkpoint({str(checkpoint)!r})\n"
              "print(decode_raw(model, problems[0], 0, ['12345'], beam_size=2)[0])\n")
    python = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert python.returncode == 0, python.stderr[-2000:]
    assert python.stdout == decoded.stdout

    wrong = run_command("t2t-decode", "problem=algorithmic_sort", f"ckpt={checkpoint}",
                        "input=1", cwd=tmp_path)
    assert wrong.returncode == 1
    assert "was trained on algorithmic_reverse, not algorithmic_sort" in wrong.stderr


@pytest.mark.timeout(300)
def test_decode_streams_standard_input_and_samples_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_command("t2t-train", *FAST, f"data_dir={tmp_path / 'data'}",
                          f"run_dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}"

    def decode(*options: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "t2t-decode"),
                               "problem=algorithmic_reverse", ckpt, *options], cwd=tmp_path,
                              input=stdin, capture_output=True, text=True, timeout=120)

    # Standard input as it arrives: the answer to a line comes before the next is typed.
    process = subprocess.Popen([str(Path(sys.executable).parent / "t2t-decode"),
                                "problem=algorithmic_reverse", ckpt, "decode.beam_size=1"],
                               cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        answers = []
        for line in ("1234", "5678"):
            process.stdin.write(line + "\n")
            process.stdin.flush()
            answers.append(process.stdout.readline().strip())  # stdin still open
        process.stdin.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()[-2000:]
    finally:
        process.kill()
    piped = decode("decode.beam_size=1", stdin="1234\n5678\n")
    assert piped.stdout.splitlines() == answers

    # Samples: N lines an input, reproducible by seed, within top_k; beam search's N best.
    sampled = decode("input=12345", "decode.sample=true", "decode.num_samples=4",
                     "decode.top_k=3", "decode.seed=7")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert len(sampled.stdout.splitlines()) == 4
    again = decode("input=12345", "decode.sample=true", "decode.num_samples=4",
                   "decode.top_k=3", "decode.seed=7")
    assert again.stdout == sampled.stdout
    nucleus = decode("decode.sample=true", "decode.top_p=0.000001", "decode.num_samples=2",
                     stdin="12345\n")
    greedy = decode("decode.beam_size=1", stdin="12345\n")
    assert nucleus.stdout.splitlines() == greedy.stdout.splitlines() * 2  # top_p ~0: greedy
    best = decode("input=12345", "decode.num_samples=3", "decode.beam_size=4")
    beam = decode("input=12345", "decode.beam_size=4")
    assert len(best.stdout.splitlines()) == 3 and len(set(best.stdout.splitlines())) == 3
    assert best.stdout.splitlines()[0] == beam.stdout.strip()
    long = decode("input=1", "decode.beam_size=1", "decode.min_length=6")
    assert len(long.stdout.strip()) >= 6

    for options, message in [
        (["decode.num_samples=5", "decode.beam_size=4"],
         "decode.num_samples=5 best hypotheses need decode.beam_size >= 5 (it is 4), or "
         "decode.sample=true for samples"),
        (["decode.sample=true", "decode.top_p=0"],
         "decode: top_p must be in (0, 1] (1 = no nucleus filter), got 0"),
        (["decode.sample=true", "decode.best_of=8"],
         "decode.sample=true and decode.best_of > 0 both choose how to decode; set one"),
    ]:
        refused = decode("input=12345", *options)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), \
            refused.stderr[-2000:]
    evaluated = run_command("t2t-eval", *FAST[:3], ckpt, "decode.num_samples=2",
                            f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert evaluated.returncode == 1
    assert evaluated.stderr.strip().splitlines()[-1] == (
        "error: decode.num_samples=2: t2t-eval scores one prediction per input; use t2t-decode "
        "for several")


@pytest.mark.timeout(300)
def test_averaged_checkpoint_is_the_mean_and_decodes_like_any_other(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_command("t2t-train", *FAST, "checkpoint_every=10", "keep_checkpoints=3",
                          f"data_dir={tmp_path / 'data'}", f"run_dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    kept = sorted(p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    assert [torch.load(p, weights_only=True)["global_step"] for p in kept] == [10, 20, 30]

    output = tmp_path / "avg.ckpt"
    averaged = run_command("t2t-average", f"run_dir={run_dir}", "last=2", f"output={output}",
                           cwd=tmp_path)
    assert averaged.returncode == 0, averaged.stderr[-2000:]
    assert f"2 checkpoints (steps 20, 30) averaged into {output}" in averaged.stdout
    states = [torch.load(p, weights_only=True)["state_dict"] for p in kept[1:]]
    mean = torch.load(output, weights_only=True)["state_dict"]
    for key, value in mean.items():
        if value.is_floating_point():
            assert torch.allclose(value, (states[0][key] + states[1][key]) / 2, atol=1e-6), key
    assert any(not torch.equal(mean[k], states[1][k]) for k in mean)

    decoded = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={output}",
                          "input=12345", "decode.beam_size=1", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    assert set(decoded.stdout.strip()) <= set("0123456789")
    listed = run_command("t2t-average", f"ckpt=[{kept[0]},{kept[2]}]",
                         f"output={tmp_path / 'ends.ckpt'}", cwd=tmp_path)
    assert "2 checkpoints (steps 10, 30) averaged" in listed.stdout, listed.stderr[-2000:]

    def refused(*options: str) -> str:
        result = run_command("t2t-average", *options, f"output={tmp_path / 'x.ckpt'}",
                             cwd=tmp_path)
        assert result.returncode == 1 and not (tmp_path / "x.ckpt").exists()
        return result.stderr.strip().splitlines()[-1]

    assert refused(f"run_dir={run_dir}", "last=4") == (
        f"error: {run_dir / 'checkpoints'} holds 3 checkpoint(s) of different steps, 4 asked "
        f"for; train with keep_checkpoints=4 (and checkpoint_every=STEPS) to keep that many")
    assert refused(f"ckpt=[{kept[0]}]").startswith("error: name two or more checkpoints")
    assert refused(f"ckpt=[{kept[0]},{tmp_path / 'none.ckpt'}]") == (
        f"error: checkpoint {tmp_path / 'none.ckpt'} not found")
    other = run_command("t2t-train", *FAST, "model.d_model=32", "trainer.max_steps=2",
                        f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'small'}",
                        cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    small = tmp_path / "small" / "checkpoints" / "last.ckpt"
    assert refused(f"ckpt=[{kept[0]},{small}]").startswith(
        f"error: {small} holds another model (d_model 32 vs 64 now)")


def long_run(tmp_path: Path, checkpoint_every: int) -> list[str]:
    """A 60-step t2t-train command that records the samples of every batch in tmp_path/seen."""
    return [str(Path(sys.executable).parent / "t2t-train"), *FAST,
            "problem.train_size=20000", "data.max_tokens=512", "trainer.max_steps=60",
            "trainer.val_check_interval=1000", f"checkpoint_every={checkpoint_every}",
            f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
            f"record_samples={tmp_path / 'seen'}"]


def start_and_wait(command: list[str], tmp_path: Path, steps: int) -> subprocess.Popen:
    """Start training (output to tmp_path/train.out and train.err: a pipe nobody reads
    could fill and stall it); return once it has recorded `steps` batches."""
    log = tmp_path / "seen" / "rank0.tsv"
    with open(tmp_path / "train.out", "w") as out, open(tmp_path / "train.err", "w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=err)
    deadline = time.monotonic() + 240
    while not (log.is_file() and len(log.read_text().splitlines()) >= steps):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    return process


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    command = long_run(tmp_path, checkpoint_every=10)
    log = tmp_path / "seen" / "rank0.tsv"
    process = start_and_wait(command, tmp_path, steps=25)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    saved_step = checkpoint["global_step"]
    assert 10 <= saved_step < 60
    before = records(tmp_path / "seen")[0]
    log.unlink()

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    after = records(tmp_path / "seen")[0]
    assert after[0][1] == saved_step  # the step count continues...
    assert after[-1][1] == 59 and len(after) == 60 - saved_step
    assert after[0][0] == 0  # ...inside the same epoch (the kill was mid-epoch)...
    trained = {key for _, step, keys in before if step < saved_step for key in keys}
    assert trained.isdisjoint(key for _, _, keys in after for key in keys)  # ...with new data
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {60.0}  # Adam's moments were restored, not restarted at the kill


@pytest.mark.timeout(600)
def test_sigterm_saves_the_step_reached_and_the_rerun_continues_there(tmp_path):
    command = long_run(tmp_path, checkpoint_every=1000)
    log = tmp_path / "seen" / "rank0.tsv"
    process = start_and_wait(command, tmp_path, steps=15)
    process.send_signal(signal.SIGTERM)  # as a cluster pre-empting the job
    process.wait(timeout=120)
    stderr = (tmp_path / "train.err").read_text()
    assert process.returncode == 1  # not 0: the job did not finish
    assert "stopped by SIGTERM after step" in stderr and "run the same command again" in stderr
    trained = records(tmp_path / "seen")[0]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # Saved at the step reached, not at the last periodic checkpoint (there was none).
    assert saved["global_step"] == len(trained) == trained[-1][1] + 1

    log.unlink()
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    after = records(tmp_path / "seen")[0]
    assert after[0][1] == len(trained) and after[-1][1] == 59
    seen = {key for _, _, keys in trained for key in keys}
    assert seen.isdisjoint(key for _, _, keys in after for key in keys)


@pytest.mark.timeout(300)
def test_unreadable_last_checkpoint_falls_back_and_a_foreign_one_is_refused(tmp_path):
    common = [*FAST, "trainer.val_check_interval=1000", "checkpoint_every=10",
              f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"]
    first = run_command("t2t-train", *common, "trainer.max_steps=20", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy cut short
    (previous,) = [p for p in folder.glob("*.ckpt") if p != last]

    second = run_command("t2t-train", *common, "trainer.max_steps=30", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"cannot read checkpoint {last}" in second.stdout
    assert f"resuming from {previous}" in second.stdout
    assert torch.load(last, weights_only=True)["global_step"] == 30
    assert not list(folder.glob(".*partial"))  # written under a temporary name, then renamed

    other_model = run_command("t2t-train", *common, "trainer.max_steps=40", "model.d_model=32",
                              cwd=tmp_path)
    assert other_model.returncode == 1
    assert f"{last} holds another model (d_model 64 vs 32 now)" in other_model.stderr
    sort = [arg.replace("=algorithmic_reverse", "=algorithmic_sort") for arg in common]
    other_problem = run_command("t2t-train", *sort, "trainer.max_steps=40", cwd=tmp_path)
    assert other_problem.returncode == 1
    assert "was trained on algorithmic_reverse, not algorithmic_sort" in other_problem.stderr

    torch.save({"state_dict": {}}, last)  # readable, but not one of t2t's
    foreign = run_command("t2t-train", *common, "trainer.max_steps=40", cwd=tmp_path)
    assert foreign.returncode == 1
    assert f"{last} is not a t2t checkpoint" in foreign.stderr

    for path in folder.glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint")
    third = run_command("t2t-train", *common, "trainer.max_steps=40", cwd=tmp_path)
    assert third.returncode == 1
    assert f"no readable checkpoint in {folder}" in third.stderr


def test_decode_with_a_missing_or_foreign_checkpoint_is_one_clear_error(tmp_path):
    missing = run_command("t2t-decode", "problem=algorithmic_reverse",
                          f"ckpt={tmp_path / 'nope.ckpt'}", "input=123", cwd=tmp_path)
    assert missing.returncode == 1
    assert f"error: checkpoint {tmp_path / 'nope.ckpt'} not found; pass ckpt=" in missing.stderr
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    unreadable = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={garbage}",
                             "input=123", cwd=tmp_path)
    assert unreadable.returncode == 1
    assert f"error: cannot read checkpoint {garbage}" in unreadable.stderr
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)  # a checkpoint, but not one of t2t's
    not_ours = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={foreign}",
                           "input=123", cwd=tmp_path)
    assert not_ours.returncode == 1
    assert f"error: {foreign} is not a t2t checkpoint" in not_ours.stderr
    bad_device = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={foreign}",
                             "input=123", "device=gpu0", cwd=tmp_path)
    assert bad_device.returncode == 1
    assert "error: device='gpu0' is not a device: use auto, cpu, cuda or cuda:N" in \
        bad_device.stderr


class _RunsCode:
    """Unpickled, this would call os.system: what a crafted checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


@pytest.mark.timeout(300)
def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path):
    """Checkpoints are downloaded and shared: t2t-decode, t2t-eval and a resumed t2t-train
    read them as tensors and plain data only, refuse one that carries a pickled call in one
    line, and the call never runs."""
    ran = tmp_path / "ran"
    crafted = {"state_dict": {}, "t2t": {"problems": [], "model": {}},
               "hook": _RunsCode(f"touch {ran}")}
    evil = tmp_path / "shared.ckpt"
    torch.save(crafted, evil)
    decode = run_command("t2t-decode", "problem=algorithmic_reverse", f"ckpt={evil}",
                         "input=123", cwd=tmp_path)
    evaluate = run_command("t2t-eval", "problem=algorithmic_reverse", f"ckpt={evil}",
                           f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(crafted, run_dir / "checkpoints" / "last.ckpt")
    resume = run_command("t2t-train", *FAST, f"data_dir={tmp_path / 'data'}",
                         f"run_dir={run_dir}", cwd=tmp_path)
    for result, path in ((decode, evil), (evaluate, evil),
                         (resume, run_dir / "checkpoints" / "last.ckpt")):
        assert result.returncode == 1, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: refusing checkpoint {path}: it holds Python objects"), last
        assert "posix.system" in last and "from sources you trust" in last
    assert not ran.exists()


def test_decode_device_is_resolved_or_refused_in_one_line():
    from t2t.errors import UserError
    from t2t.inference import resolve_device

    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not has_cuda:
        with pytest.raises(UserError, match="no CUDA device on this machine; use device=cpu"):
            resolve_device("cuda:0")
    with pytest.raises(UserError, match="t2t decodes on cpu or cuda"):
        resolve_device("meta")


@pytest.mark.timeout(300)
def test_non_finite_loss_stops_training_naming_step_problem_and_batch(tmp_path):
    # A learning rate of 1e30 blows the weights up after one update: the loss turns inf/NaN.
    result = run_command("t2t-train", *FAST, "optim.lr=1e30", "optim.warmup_steps=0",
                         f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                         cwd=tmp_path, timeout=280)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, result.stderr[-3000:]
    assert "non-finite training loss" in error[0]
    assert "problem algorithmic_reverse, batch of" in error[0] and "on_nonfinite_loss=skip" \
        in error[0]
    step = int(error[0].split("at step ")[1].split(",")[0])
    assert 1 <= step < 30


@pytest.mark.timeout(300)
def test_non_finite_loss_batches_are_skipped_and_counted_when_asked(tmp_path):
    result = run_command("t2t-train", *FAST, "optim.lr=1e30", "optim.warmup_steps=0",
                         "on_nonfinite_loss=skip", "trainer.max_steps=8",
                         "trainer.val_check_interval=8", f"data_dir={tmp_path / 'data'}",
                         f"run_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = int(result.stdout.split("skipped ")[1].split(" batches")[0])
    assert 1 <= skipped <= 7  # every batch after the first update
    assert "skipped a batch with a non-finite loss" in result.stderr


def test_weight_average_is_what_checkpoints_hold_and_decode_uses_and_resume_continues(
        tmp_path):
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    common = [*FAST, "ema_decay=0.9", f"data_dir={data_dir}", f"run_dir={run_dir}"]
    first = run_command("t2t-train", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    decoded = run_command("t2t-decode", "problem=algorithmic_reverse",
                          f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "input=12345",
                          cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr

    resumed = run_command("t2t-train", *common, "trainer.max_steps=40", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "metrics after 40 steps" in resumed.stdout
    later = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert later["global_step"] == 40
    # The raw weights went on from where they were, not from the average.
    moved = [k for k in raw if not torch.equal(later["current_model_state"][k], raw[k])]
    assert moved

    bad = run_command("t2t-train", *common, "ema_decay=1.5", cwd=tmp_path)
    assert bad.returncode == 1 and "ema_decay=1.5" in bad.stderr


def test_compile_switch_trains_and_its_checkpoint_decodes(tmp_path):
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    trained = run_command("t2t-train", *FAST, "trainer.max_steps=10", "compile=true",
                          f"data_dir={data_dir}", f"run_dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "metrics after 10 steps" in trained.stdout
    decoded = run_command("t2t-decode", "problem=algorithmic_reverse",
                          f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "input=12345",
                          cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr


def test_bf16_mixed_precision_trains_and_validates(tmp_path):
    # What trainer=gpu runs (bf16 autocast, fp32 weights and residual stream); CPU autocast
    # takes the same dtype paths, so a GPU is not needed to catch a dtype mismatch.
    trained = run_command("t2t-train", *FAST, "trainer.max_steps=10",
                          "trainer.val_check_interval=10",
                          "trainer.precision=bf16-mixed", f"data_dir={tmp_path / 'data'}",
                          f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "metrics after 10 steps" in trained.stdout


def test_packed_batches_train_and_a_too_short_packed_length_is_one_clear_error(tmp_path):
    common = [*FAST, "trainer.max_steps=10", "trainer.val_check_interval=10",
              f"data_dir={tmp_path / 'data'}"]
    trained = run_command("t2t-train", *common, "data.packed_length=64",
                          f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "metrics after 10 steps" in trained.stdout
    short = run_command("t2t-train", *common, "data.packed_length=12",
                        f"run_dir={tmp_path / 'short'}", cwd=tmp_path)
    assert short.returncode == 1
    assert "data.packed_length=12 is shorter than the longest train sample" in short.stderr
    assert "Traceback" not in short.stderr


def test_weight_average_ramps_up_then_decays_at_the_given_rate():
    from torch.optim.swa_utils import AveragedModel

    from t2t.checkpoints import WeightEMA

    weight = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(weight, avg_fn=WeightEMA(0.2)._kwargs["avg_fn"])
    expected = None
    for n, value in enumerate([4.0, 8.0, 0.0, 2.0, 6.0]):
        weight.weight.data.fill_(value)
        average.update_parameters(weight)
        rate = min(0.2, (1 + n) / (10 + n))  # n updates before this one: capped from n=2
        expected = value if expected is None else expected * rate + value * (1 - rate)
        assert average.module.weight.item() == pytest.approx(expected)
