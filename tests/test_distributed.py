"""Several processes and nodes, as users launch them: DDP on two CPU processes (gloo) for a
problem of every family, two torchrun "nodes" on this machine, and shards streamed over HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import REPO, dataset_dir, run_command

BIN = Path(sys.executable).parent


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()

QUIET = ["trainer.enable_progress_bar=false", "eval.max_decode_length=12", "eval.examples=1",
         "model=tiny"]


def squeezed(text: str) -> str:
    """Text without whitespace: rich wraps table titles wherever it likes."""
    return "".join(text.split())


def family_options(name: str) -> list[str]:
    """A small problem of each family: learned SentencePiece text, image, audio, RNA, and a
    mixture of two of them (one with a learned vocabulary)."""
    multi30k = dataset_dir("multi30k") if name in ("text", "mixture") else None
    text = {"name": "translate_deen_multi30k", "raw_dir": str(multi30k), "vocab_size": 600}
    rna = {"name": "rna_design", "min_length": 12, "max_length": 30, "eval_size": 8}
    if name == "text":
        return [f"problem={text['name']}", f"problem.raw_dir={multi30k}",
                f"problem.vocab_size={text['vocab_size']}"]
    if name == "image":
        return ["problem=ocr_rendered_text", "problem.max_chars=6", "problem.eval_size=8"]
    if name == "audio":
        return ["problem=morse_code", "problem.max_chars=3", "problem.eval_size=8"]
    if name == "rna":
        return ["problem=rna_design", "problem.max_length=30", "problem.eval_size=8"]
    members = ",".join("{" + ",".join(f"{k}:'{v}'" if isinstance(v, str) else f"{k}:{v}"
                                      for k, v in m.items()) + "}" for m in (text, rna))
    return ["problem=mixture", f"problem.members=[{members}]"]


def train_command(options: list[str], data_dir: Path, run_dir: Path, seen: Path) -> list[str]:
    return [str(BIN / "t2t-train"), *options, *QUIET, "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.max_steps=-1", "trainer.max_epochs=2",
            "trainer.val_check_interval=1000", "datagen.max_samples=240",
            "eval.decode_batches=1000",
            "data.max_tokens=600", "data.window=64", "data.num_workers=1",
            "checkpoint_every=3", f"data_dir={data_dir}", f"run_dir={run_dir}",
            f"record_samples={seen}"]


def trained_batches(seen: Path) -> dict[int, dict[int, tuple[int, int, list[str]]]]:
    """rank -> step -> (epoch, problem, keys); a step trained again after a resume keeps
    its last record (and must equal the first: checked by the caller)."""
    out: dict[int, dict[int, tuple[int, int, list[str]]]] = {}
    for path in sorted(seen.glob("rank*.tsv")):
        steps: dict[int, tuple[int, int, list[str]]] = {}
        for line in path.read_text().splitlines():
            epoch, step, problem, keys = line.split("\t")
            record = (int(epoch), int(problem), keys.split())
            assert steps.setdefault(int(step), record) == record, f"step {step} changed"
        out[int(path.stem[4:])] = steps
    return out


def member_epochs(batches: dict[int, dict[int, tuple]], member: int, size: int) -> int:
    """Walk one member's batches in step order, both ranks together: no sample may come back
    before all `size` samples came once (a member epoch). Returns the complete member epochs."""
    seen: set[str] = set()
    complete = 0
    steps = sorted({s for rank in batches.values() for s, r in rank.items() if r[1] == member})
    for step in steps:
        for rank in sorted(batches):
            epoch, problem, keys = batches[rank][step]
            assert problem == member, f"ranks trained different members at step {step}"
            for key in keys:
                assert key not in seen, f"sample {key} of member {member} seen twice"
                seen.add(key)
        if len(seen) == size:
            complete, seen = complete + 1, set()
    return complete


def kill_when_checkpointed(command: list[str], cwd: Path, run_dir: Path, seen: Path
                           ) -> None:
    """Start training; once it has saved a checkpoint and trained a step past it, SIGKILL
    every process of the run (a crash: nothing is saved on the way out)."""
    log = cwd / "killed.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, "the run ended before it could be killed:\n" + \
                log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint:\n" + log.read_text()[-3000:]
            rows = (seen / "rank0.tsv").read_text().splitlines() if (
                seen / "rank0.tsv").is_file() else []
            if (run_dir / "checkpoints" / "last.ckpt").is_file() and len(rows) >= 5:
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    """One data_dir for the family runs: the mixture reuses the single problems' shards."""
    return tmp_path_factory.mktemp("ddp-data")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", ["text", "image", "audio", "rna", "mixture"])
def test_ddp_trains_every_family_resumes_after_a_kill_and_evaluates(family, shared_data,
                                                                    tmp_path):
    options = family_options(family)
    run_dir, seen = tmp_path / "run", tmp_path / "seen"
    command = train_command(options, shared_data, run_dir, seen)
    kill_when_checkpointed(command, tmp_path, run_dir, seen)
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    batches = trained_batches(seen)
    assert sorted(batches) == [0, 1], "both ranks trained"
    assert sorted(batches[0]) == sorted(batches[1]) == list(range(len(batches[0])))
    names = [m.split(":")[0] for m in options if m.startswith("problem=")]
    members = (["translate_deen_multi30k", "rna_design"] if names == ["problem=mixture"]
               else [names[0].removeprefix("problem=")])
    for index, name in enumerate(members):
        meta = json.loads((shared_data / name / "meta.json").read_text())
        size = meta["splits"]["train"]["count"]
        complete = member_epochs(batches, index, size)
        # Validation scored what both ranks decoded: the whole split, each sample once.
        decoded = meta["splits"]["validation"]["count"]
        assert squeezed(f"{name}: example decodes (of {decoded} decoded)") in \
            squeezed(resumed.stdout)
        if len(members) == 1:  # a single problem: its epochs are the trainer's
            assert complete == 2
            for epoch in (0, 1):
                keys = [k for rank in batches.values() for e, _, ks in rank.values()
                        if e == epoch for k in ks]
                assert len(keys) == len(set(keys)) == size, f"epoch {epoch}"
        else:
            assert complete >= 1, f"member {name} never completed an epoch"

    member_options = options if len(members) == 1 else family_options("text")
    evaluated = run_command(
        "t2t-eval", *[o for o in member_options if o.startswith("problem")],
        f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
        "split=validation", "datagen.max_samples=240", "decode.beam_size=1",
        "decode.max_length=12", "decode.best_of=0", f"data_dir={shared_data}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "validation:" in squeezed(evaluated.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_lines(prefix: str) -> list[str]:
    """The README's commands of its "Several devices and nodes" section starting with prefix."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Several devices and nodes\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith(prefix)]


def test_readme_ddp_command_trains_a_sentencepiece_problem_on_two_processes(tmp_path):
    (line,) = readme_lines("t2t-train")
    args = shlex.split(line.replace("../shared/datasets/multi30k", str(dataset_dir("multi30k"))))
    result = run_command(*args, cwd=tmp_path, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metrics after 6 steps" in result.stdout
    assert (tmp_path / "outputs" / "translate_deen_multi30k-tiny" / "checkpoints" /
            "last.ckpt").is_file()


# Smaller data than the README's lines train on (the same commands otherwise).
SMALL = ["problem.train_size=1000", "problem.eval_size=40", "eval.max_decode_length=12",
         "trainer.enable_progress_bar=false"]


def two_nodes(tmp_path: Path, *extra: str) -> list[str]:
    """The README's two torchrun lines, one "node" each, both on this machine (on a free
    port), in tmp_path."""
    port = str(free_port())
    processes = []
    for line in readme_lines("torchrun"):
        args = shlex.split(line.replace("$(which t2t-train)", str(BIN / "t2t-train")))
        args[args.index("--master-port") + 1] = port
        processes.append(subprocess.Popen([str(BIN / "torchrun"), *args[1:], *extra],
                                          cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    assert len(processes) == 2
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, output[-3000:]
        outputs.append(output)
    return outputs


@pytest.mark.timeout(600)
def test_two_torchrun_nodes_train_once_on_shards_generated_once(tmp_path):
    # Shards not generated yet: the first process of the run writes them, the other node
    # waits for them; nobody writes them twice.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    outputs = two_nodes(fresh, *SMALL)
    assert sum(o.count("algorithmic_reverse/train:") for o in outputs) == 1, outputs
    assert sum("metrics after 4 steps" in o for o in outputs) == 1
    checkpoints = fresh / "outputs" / "algorithmic_reverse-tiny" / "checkpoints"
    assert [p.name for p in checkpoints.glob("*.ckpt")] == ["last.ckpt"]
    # Shards already there: both nodes just read them.
    again = tmp_path / "again"
    again.mkdir()
    outputs = two_nodes(again, *SMALL, f"data_dir={fresh / 'data'}")
    assert sum(o.count("algorithmic_reverse/train:") for o in outputs) == 0
    assert sum("metrics after 4 steps" in o for o in outputs) == 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output is the commands', not this
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.timeout(600)
def test_training_and_eval_stream_shards_from_an_http_data_dir(served, tmp_path):
    root, url = served
    problem = ["problem=translate_deen_multi30k", f"problem.raw_dir={dataset_dir('multi30k')}",
               "problem.vocab_size=600"]
    datagen = ["datagen.max_samples=200"]
    made = run_command("t2t-datagen", *problem, *datagen, f"data_dir={root / 'data'}",
                       cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    remote = f"data_dir={url}/data"
    trained = run_command("t2t-train", *problem, *datagen, *QUIET, "trainer.max_steps=4",
                          "trainer.val_check_interval=4", "data.num_workers=1", remote,
                          f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "metrics after 4 steps" in trained.stdout
    assert not (tmp_path / "data").exists(), "nothing is written locally"
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluated = run_command("t2t-eval", *problem, *datagen, f"ckpt={checkpoint}", remote,
                            "split=test", "decode.beam_size=1", "decode.max_length=12",
                            cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert squeezed("test: 200 examples") in squeezed(evaluated.stdout)

    # The sha256 check holds for remote shards: a changed byte is named, not trained on.
    shard = root / "data" / "translate_deen_multi30k" / "test-000000.tar.gz"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF
    shard.write_bytes(bytes(content))
    corrupt = run_command("t2t-eval", *problem, *datagen, f"ckpt={checkpoint}", remote,
                          "split=test", cwd=tmp_path)
    assert corrupt.returncode == 1
    assert f"shard {url}/data/translate_deen_multi30k/test-000000.tar.gz is corrupt" in \
        corrupt.stderr

    # Nothing at the URL: one line saying how shards get there.
    shutil.rmtree(root / "data")
    missing = run_command("t2t-train", *problem, *datagen, *QUIET, remote,
                          f"run_dir={tmp_path / 'other'}", cwd=tmp_path)
    assert missing.returncode == 1
    assert "no shards of translate_deen_multi30k" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_setup_waits_for_shards_with_its_own_fingerprint_then_says_what_it_found(tmp_path):
    from problems.algorithmic import AlgorithmicReverse
    from problems.text_pairs import TextPairs
    from t2t.data import open_shards, read_meta
    from t2t.datagen import generate
    from t2t.errors import UserError

    small = {"train_size": 200, "eval_size": 10}
    with pytest.raises(UserError, match=r"no shards of algorithmic_reverse .* after waiting 0 s "
                                        r"\(no meta.json\)"):
        open_shards(AlgorithmicReverse(**small), tmp_path, {}, wait_s=0.1, poll_s=0.05)
    generate(AlgorithmicReverse(**small), tmp_path, progress=False)
    # Shards of other options are stale for this process: it does not take them.
    with pytest.raises(UserError, match="its meta.json has fingerprint"):
        open_shards(AlgorithmicReverse(train_size=300, eval_size=10), tmp_path, {},
                    wait_s=0.1, poll_s=0.05)
    # Shards written while it waits are taken as soon as they are there.
    writer = threading.Timer(0.3, generate, (AlgorithmicReverse(**{**small, "seed": 2}),
                                             tmp_path / "late"), {"progress": False})
    writer.start()
    location = open_shards(AlgorithmicReverse(**{**small, "seed": 2}), tmp_path / "late", {},
                           wait_s=60, poll_s=0.05)
    writer.join()
    assert read_meta(location)["options"]["seed"] == 2
    # Setup restores what datagen learned (datagen leaves nothing behind in the problem).
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"ab{i}\tba{i}\n" for i in range(40)))
    generate(TextPairs(train=str(pairs), vocab="char"), tmp_path, progress=False)
    problem = TextPairs(train=str(pairs), vocab="char")
    assert problem.targets.needs_fit
    open_shards(problem, tmp_path, {})
    assert not problem.targets.needs_fit


@pytest.mark.skipif(torch_cuda(), reason="this machine has a GPU")
def test_gpu_trainers_on_a_machine_without_a_gpu_are_one_line(tmp_path):
    for options in (["trainer=fsdp", "trainer.accelerator=cpu"], ["trainer=gpu"]):
        result = run_command("t2t-train", "problem=algorithmic_reverse", *options,
                             f"data_dir={tmp_path}", cwd=tmp_path)
        assert result.returncode == 1, options
        assert result.stderr.startswith("error: the trainer settings do not work here"), \
            result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unreachable_url_data_dir_and_datagen_to_a_url_are_one_line():
    from problems.algorithmic import AlgorithmicReverse
    from t2t.data import read_meta
    from t2t.datagen import generate
    from t2t.errors import UserError

    # Datagen writes locally only (it once made a folder named "http:").
    with pytest.raises(UserError, match="datagen writes to a local data_dir, not http://"):
        generate(AlgorithmicReverse(train_size=10), "http://127.0.0.1:1/data")

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/data/algorithmic_reverse"
        with pytest.raises(UserError, match=f"cannot read {url}/meta.json: "):
            read_meta(url)
