"""Every registered problem: generate a few samples, encode, write a shard, read it back,
train one step and decode with the tiny model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from modalities import TextModality
from t2t import data, datagen
from t2t.datamodule import PlannedBatches, PlanSettings
from t2t.inference import decode_raw
from t2t.lit_module import T2TLitModule
from t2t.metrics import LIKELIHOOD_METRICS, METRICS
from t2t.modality import ProjectsLinearly
from t2t.model import PRESETS, T2TModel
from t2t.registry import discover, problems

from .conftest import dataset_dir

discover()


def _text_pairs_files(tmp_path: Path) -> dict:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"sentence {i}\tSatz {i}\n" for i in range(40)))
    return {"train": str(tsv), "vocab": "byte"}


def _text_lm_corpus(tmp_path: Path) -> dict:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of the corpus\n" for i in range(40)))
    return {"train": str(corpus), "vocab": "byte"}


def _image_folder(tmp_path: Path) -> dict:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(30):
            Image.new("RGB", (40 + i, 20), color=(i * 8, 100, 200)).save(folder / f"{i}.png")
            f.write(f'{{"file_name": "{i}.png", "text": ["picture {i}", "image {i}"]}}\n')
    return {"raw_dir": str(folder), "vocab": "byte", "height": 16, "max_width": 64}


def _speech_manifest(tmp_path: Path) -> dict:
    import numpy as np
    import soundfile

    (tmp_path / "clips").mkdir()
    with open(tmp_path / "manifest.jsonl", "w") as f:
        for i in range(30):
            wave = np.sin(np.arange(1600 + 100 * i) * (0.1 + 0.01 * i)).astype(np.float32) / 2
            soundfile.write(tmp_path / "clips" / f"{i}.wav", wave, 16000)
            text = "clip number"[i % 11:] + " " + "clip number"[:i % 11]  # same characters
            f.write(f'{{"audio_filepath": "clips/{i}.wav", "text": "{text.strip()}"}}\n')
    return {"manifest": str(tmp_path / "manifest.jsonl")}


# Options a problem needs to run here (local data instead of downloads). A problem missing
# from this table must work with its defaults: the test fails otherwise, loudly.
TEST_OPTIONS = {
    "translate_deen_multi30k": lambda tmp: {"raw_dir": str(dataset_dir("multi30k"))},
    "text_pairs": _text_pairs_files,
    "text_lm": _text_lm_corpus,
    "mnist_digit_strings": lambda tmp: {"raw_dir": str(dataset_dir("mnist"))},
    "draw_digit_strings": lambda tmp: {"raw_dir": str(dataset_dir("mnist"))},
    "image_text_folder": _image_folder,
    "speech_manifest": _speech_manifest,
    "spoken_digits_fsdd": lambda tmp: {"raw_dir": str(dataset_dir("fsdd"))},
    "rna_eterna100": lambda tmp: {"raw_dir": str(dataset_dir("rna"))},
}


@pytest.mark.parametrize("name", problems.names())
def test_problem_round_trips_through_a_shard(name, tmp_path):
    cls = problems.get(name)
    options = TEST_OPTIONS[name](tmp_path) if name in TEST_OPTIONS else {}
    assert cls.description(), f"{name} needs a docstring: t2t-problems shows its first line"
    assert set(cls.metrics) <= set(METRICS) | set(LIKELIHOOD_METRICS), (
        f"{name} names unknown metrics")

    problem = cls(**options)
    settings = {"max_samples": 3, "max_length": None}
    datagen.generate(problem, tmp_path / "data", **settings, progress=False)
    problem_dir = data.open_shards(problem, tmp_path / "data", settings)
    meta = data.read_meta(problem_dir)
    for split in problem.splits:
        raws = list(itertools.islice(problem.generate_samples(split), 3))
        assert meta["splits"][split]["count"] == len(raws) == 3
        read = list(data.read_split(cls(**options), problem_dir, split))
        assert sorted(int(sample["key"]) for sample in read) == [0, 1, 2]
        for sample in read:  # the key is the sample's index in generate_samples
            raw = raws[int(sample["key"])]
            for role in ("inputs", "targets"):
                modality = getattr(problem, role)
                expected = modality.load(modality.encode(raw[role]))
                assert torch.equal(sample[role], expected), (name, split, role)
                if isinstance(modality, TextModality):
                    assert modality.decode(sample[role]) == raw[role]

    # One training step and one decode with the tiny model on those shards.
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)])
    module = T2TLitModule(model, [problem])
    # A benchmark has only an evaluation split: one step on it still checks the batches.
    split = "train" if "train" in problem.splits else problem.splits[0]
    batch = next(iter(PlannedBatches(problem, problem_dir, split, 0, PlanSettings())))
    # The loss fused with the target top's projection, a few positions at a time, is the
    # plain loss, gradients included (eval: no dropout, so both compute one function).
    assert isinstance(model.top(0), ProjectsLinearly)
    model.eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    results = []
    for lit in (T2TLitModule(model, [problem], loss_chunk_rows=5),
                T2TLitModule(model, [problem], loss_chunk_rows=0)):
        loss, _ = lit.loss(batch, label_smoothing=0.1, ctc_weight=lit.ctc_weights[0])
        results.append((loss, torch.autograd.grad(loss, trained, allow_unused=True)))
    (fused, fused_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fused, plain)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, tokens = module.loss(batch, label_smoothing=0.1, ctc_weight=module.ctc_weights[0])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and tokens > 0
    raw_inputs = [raw["inputs"] for raw in itertools.islice(problem.generate_samples("test"
                  if "test" in problem.splits else "validation"), 2)]
    predictions = decode_raw(model.eval(), problem, 0, raw_inputs, beam_size=2, max_length=8)
    assert len(predictions) == 2


def test_a_user_modality_gets_the_base_class_defaults():
    from t2t.modality import Modality

    class Points(Modality):  # what a user writes for inputs-only data: no describe, no top
        kind = "points"

    points = Points()
    assert points.describe() == "points"
    assert points.augmentation() is None
    with pytest.raises(NotImplementedError):
        points.top(8, None)
