"""benchmarks/gpu_suite.sh, the GPU measurements in one run, at tiny sizes on the CPU: every
phase runs to its table, so that a lent GPU's minutes go to measuring, not to fixing it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, dataset_dir

pytestmark = pytest.mark.timeout(900)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row (not the header separators) in `text`."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines()
            if line.startswith("|") and not re.fullmatch(r"\|(-+\|)+", line.strip())]


def test_the_gpu_suite_writes_every_phase_table_at_tiny_sizes(tmp_path):
    for name in ("multi30k", "mnist", "fsdd"):
        dataset_dir(name)
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "T2T_SUITE_TINY": "1",
                   "T2T_SUITE_DATA": str(tmp_path / "data"),
                   # python3 there: this interpreter, with t2t's packages
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh")], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    tables = {path.stem: path.read_text() for path in out.glob("*.md")}
    assert sorted(tables) == ["data", "decode_base", "modalities", "profile_base", "train_base",
                              "train_big"]
    for name, text in tables.items():
        assert "phase failed" not in text, (name, text[-3000:],
                                            (out / "suite.log").read_text()[-3000:])

    for name in ("train_base", "train_big"):
        rows = {row[0]: row for row in table_rows(tables[name])}
        assert {"t2t", "t2t, rows packed to 128", "HF BART, t2t's batches",
                "HF BART, 64-pair batches (HF default)"} <= set(rows), tables[name]
        assert ("t2t, loss_chunk_rows 0" in rows) == (name == "train_base")  # loss unfused
        for row in rows.values():
            if row[0] != "model":
                assert float(row[2].replace(",", "")) > 0  # train tok/s
                assert row[5].endswith("%")  # MFU
    assert "top operators of the timed training steps" in tables["profile_base"]
    decoded = {row[0]: row for row in table_rows(tables["decode_base"])}
    assert {"1", "4"} <= set(decoded), tables["decode_base"]
    assert all(float(cell) > 0 for cell in decoded["4"][1:5])  # sentences/s, both beams
    loaders = {row[0]: row for row in table_rows(tables["modalities"])}
    assert {"text", "image", "audio", "RNA"} <= set(loaders), tables["modalities"]
