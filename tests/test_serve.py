"""t2t-serve over real HTTP on 127.0.0.1, for a checkpoint of a mixture of one problem of each
family (learned-vocabulary text, image, audio, RNA): its answers are t2t-decode's, 50
concurrent requests are decoded in batches, and a bad request gets a 4xx with one line while
the server stays up."""

from __future__ import annotations

import io
import queue
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile
from PIL import Image

from .conftest import FAMILY_MEMBERS, GERMAN_WORDS, family_mixture_checkpoint, run_command

pytestmark = pytest.mark.xdist_group("serve")  # one worker trains the checkpoint once

WORDS = GERMAN_WORDS
MEMBERS = FAMILY_MEMBERS
# The server and t2t-decode decode alike: the model alone (no RNA search), short outputs.
DECODE = ["decode.max_length=24", "decode.best_of=0"]
INPUTS_EACH = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, list], dict[str, list[str]]]:
    """(a mixture checkpoint, each member's inputs (text or files), and the predictions
    t2t-decode gives them). The weights are the initial ones: serving runs the same code
    whatever they are, and the RNA designs, which follow each input's structure, differ from
    input to input, so an answer sent to the wrong request shows."""
    folder = tmp_path_factory.mktemp("serve")
    ckpt = family_mixture_checkpoint(folder, "trainer.max_steps=1", "optim.lr=0")
    rng = random.Random(0)

    from t2t.registry import discover, problems
    discover()
    inputs: dict[str, list] = {"text_pairs": [" ".join(rng.choices(WORDS, k=3))
                                              for _ in range(INPUTS_EACH)]}
    for name in ("ocr_rendered_text", "morse_code", "rna_design"):
        problem = problems.get(name)(**MEMBERS[name])
        samples = list(problem.generate_samples("test"))[:INPUTS_EACH]
        if name == "rna_design":
            inputs[name] = [s["inputs"] for s in samples]
            continue
        inputs[name] = []
        for i, sample in enumerate(samples):
            path = folder / name / f"{i}.{'png' if name.startswith('ocr') else 'wav'}"
            path.parent.mkdir(exist_ok=True)
            if name.startswith("ocr"):
                Image.fromarray(sample["inputs"]).save(path)
            else:
                soundfile.write(path, *sample["inputs"])
            inputs[name].append(path)

    expected = {}
    for name, values in inputs.items():
        listing = folder / f"{name}.txt"
        listing.write_text("".join(f"{v}\n" for v in values))
        result = run_command("t2t-decode", f"problem={name}", f"ckpt={ckpt}",
                             f"input_file={listing}", *DECODE, cwd=folder, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        assert len(lines) == INPUTS_EACH, result.stdout
        # Files: "path<TAB>prediction"; RNA: the formatted line; text: the prediction.
        expected[name] = [line.split("\t", 1)[1] if isinstance(v, Path) else line
                          for v, line in zip(values, lines, strict=True)]
    assert len(set(expected["rna_design"])) == INPUTS_EACH, expected["rna_design"]
    return ckpt, inputs, expected


def start_server(ckpt: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A t2t-serve process on a free port, and its address once it listens."""
    script = Path(sys.executable).parent / "t2t-serve"
    process = subprocess.Popen([str(script) if script.exists() else "t2t-serve",
                                f"ckpt={ckpt}", "port=0", *DECODE, *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(s) for s in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"t2t-serve did not start: {process.stderr.read()[-3000:]}") from None
    assert line.startswith("t2t-serve: ") and " on http://127.0.0.1:" in line, line
    return process, re.search(r" on (http://127\.0\.0\.1:\d+)", line).group(1)


@pytest.fixture(scope="module")
def server(trained) -> Iterator[str]:
    process, url = start_server(trained[0], "max_upload_mb=1")
    yield url
    process.terminate()
    process.wait(timeout=30)


def post(url: str, name: str, value) -> requests.Response:
    if isinstance(value, Path):
        return requests.post(f"{url}/predict/{name}", timeout=120,
                             files={"file": (value.name, value.read_bytes())})
    return requests.post(f"{url}/predict/{name}", json={"input": value}, timeout=120)


def answer(name: str, reply: dict) -> str:
    """What t2t-decode prints for it: the formatted line where the problem formats one."""
    line = reply["formatted"] if name == "rna_design" else reply["prediction"]
    return line.replace("\r", "\\r").replace("\n", "\\n")  # t2t-decode's one line


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(MEMBERS))
def test_the_server_answers_each_member_as_t2t_decode_does(trained, server, name):
    _, inputs, expected = trained
    for value, prediction in zip(inputs[name], expected[name], strict=True):
        reply = post(server, name, value)
        assert reply.status_code == 200, reply.text
        assert reply.json()["problem"] == name
        assert answer(name, reply.json()) == prediction


@pytest.mark.timeout(900)
def test_fifty_concurrent_requests_are_answered_as_t2t_decode_does_in_batches(trained, server):
    _, inputs, expected = trained
    jobs = [(name, i) for name in MEMBERS for i in range(INPUTS_EACH)]
    jobs = (jobs * 4)[:50]
    before = requests.get(f"{server}/health", timeout=30).json()
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: post(server, job[0], inputs[job[0]][job[1]]), jobs))
    for (name, i), reply in zip(jobs, replies, strict=True):
        assert reply.status_code == 200, reply.text
        assert answer(name, reply.json()) == expected[name][i], (name, i)
    after = requests.get(f"{server}/health", timeout=30).json()
    assert after["requests"] - before["requests"] == 50
    assert after["batches"] - before["batches"] < 50  # some were decoded together


@pytest.mark.timeout(900)
def test_bad_requests_get_a_4xx_with_one_line_and_the_server_stays_up(trained, server):
    _, inputs, expected = trained

    def detail(reply: requests.Response, status: int) -> str:
        assert reply.status_code == status, (reply.status_code, reply.text)
        return reply.json()["detail"]

    served = ", ".join(MEMBERS)
    assert detail(post(server, "morse_cod", "x"), 404) == (
        f"unknown problem 'morse_cod'; did you mean morse_code? this model serves {served}")
    assert detail(requests.post(f"{server}/predict", json={"input": "x"}, timeout=30), 400) == (
        f"this model serves {served}: POST to /predict/<problem>, or start t2t-serve with "
        f"problem=NAME")
    assert detail(post(server, "ocr_rendered_text", "some text"), 400) == (
        "an image problem takes a file: send it as a multipart upload named 'file' (curl -F "
        "file=@PATH)")
    assert detail(post(server, "text_pairs", inputs["morse_code"][0]), 400) == (
        'a text problem takes JSON {"input": "..."} (or a text/plain body)')
    broken = requests.post(f"{server}/predict/morse_code", timeout=30,
                           files={"file": ("clip.wav", b"RIFF\x00\x00not really a wave")})
    assert detail(broken, 400).startswith("upload clip.wav: audio bytes: not a readable audio "
                                          "file (")
    big = io.BytesIO()
    soundfile.write(big, np.zeros(8000 * 70, dtype=np.float32), 8000, format="WAV")
    assert detail(requests.post(f"{server}/predict/morse_code", timeout=60,
                                files={"file": ("long.wav", big.getvalue())}), 413).startswith(
        "the request is 1.1 MB; t2t-serve takes at most 1 MB (max_upload_mb)")
    latin1 = requests.post(f"{server}/predict/text_pairs", data="Mädchen".encode("latin-1"),
                           headers={"content-type": "text/plain"}, timeout=30)
    assert detail(latin1, 400) == "the text is not UTF-8 (invalid continuation byte at byte 1)"
    assert detail(post(server, "text_pairs", "x" * 5000), 413).startswith(
        "the input is ")  # more positions than the model has
    # Still up, and still right.
    reply = post(server, "text_pairs", inputs["text_pairs"][0])
    assert reply.status_code == 200 and reply.json()["prediction"] == expected["text_pairs"][0]


@pytest.mark.timeout(600)
def test_problem_chooses_what_post_predict_answers(trained):
    ckpt, inputs, expected = trained
    process, url = start_server(ckpt, "problem=rna_design")
    try:
        reply = requests.post(f"{url}/predict", json={"input": inputs["rna_design"][0]},
                              timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["formatted"] == expected["rna_design"][0]
        assert requests.get(f"{url}/health", timeout=30).json()["default"] == "rna_design"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.timeout(300)
def test_a_port_in_use_is_one_line(trained):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_command("t2t-serve", f"ckpt={trained[0]}", f"port={port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pass another "
        f"port=N (0: any free one)")
