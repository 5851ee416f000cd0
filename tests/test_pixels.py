"""PixelModality: small grey images as target tokens, column after column."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities import PixelModality, TextModality
from t2t.errors import UserError
from t2t.problem import Problem, Verifier
from t2t.tokens import EOS, NUM_RESERVED, PAD


def strip(width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, width), dtype=np.uint8)


@pytest.mark.parametrize("width", [1, 28, 84])
def test_an_image_comes_back_quantised_whatever_its_width(width):
    pixels = PixelModality(height=28, levels=16)
    image = strip(width)
    ids = pixels.load(pixels.encode(image))
    assert ids.shape == (28 * width,) and pixels.length(pixels.encode(image)) == 28 * width
    assert int(ids.min()) >= NUM_RESERVED and int(ids.max()) < pixels.vocab_size
    drawn = pixels.decode(ids)
    assert drawn.shape == (28, width) and drawn.dtype == np.uint8
    expected = (image.astype(int) * 16 // 256) * 255 // 15  # the level's grey
    assert np.array_equal(drawn, expected)


def test_pixels_go_column_after_column_top_to_bottom():
    pixels = PixelModality(height=2, levels=2)
    image = np.array([[0, 255, 0], [255, 255, 0]], dtype=np.uint8)
    assert (pixels.load(pixels.encode(image)) - NUM_RESERVED).tolist() == [0, 1, 1, 1, 0, 0]


def test_decoding_stops_at_eos_and_fills_a_short_last_column_with_black():
    pixels = PixelModality(height=3, levels=4)
    ids = torch.tensor([NUM_RESERVED + 3] * 4 + [EOS, NUM_RESERVED + 3, PAD])
    drawn = pixels.decode(ids)
    assert drawn.tolist() == [[255, 255], [255, 0], [255, 0]]


def test_an_image_of_another_height_is_scaled_keeping_its_aspect():
    pixels = PixelModality(height=14, levels=8)
    assert pixels.decode(pixels.load(pixels.encode(strip(56)))).shape == (14, 28)


def test_an_image_target_wider_than_max_width_is_one_line():
    pixels = PixelModality(height=28, max_width=56)
    with pytest.raises(UserError, match="an image target 84 pixels wide at height 28; this "
                                        "problem draws at most 56 .max_width."):
        pixels.encode(strip(84))
    with pytest.raises(UserError, match="levels=1"):
        PixelModality(levels=1)


def test_nothing_drawn_is_saved_as_one_black_column(tmp_path):
    from PIL import Image

    pixels = PixelModality(height=4)
    empty = pixels.decode(torch.tensor([EOS]))
    assert empty.shape == (4, 0)
    pixels.save(empty, tmp_path / "empty.png")
    with Image.open(tmp_path / "empty.png") as drawing:
        assert drawing.size == (1, 4) and drawing.getextrema() == (0, 0)


def test_the_top_scores_each_grey_level_with_the_bottoms_embedding():
    pixels = PixelModality(levels=16)
    bottom = pixels.bottom(32)
    top = pixels.top(32, bottom)
    ids = pixels.load(pixels.encode(strip(2)))[None]
    embedded, _ = bottom(ids)
    assert embedded.shape == (1, 56, 32)
    assert top(embedded).shape == (1, 56, pixels.vocab_size)
    assert top.embedding is bottom.embedding  # tied


@pytest.mark.timeout(600)
def test_draw_digit_strings_trains_and_t2t_decode_writes_the_drawings(tmp_path):
    from PIL import Image

    from .conftest import dataset_dir, run_command

    problem = ["problem=draw_digit_strings", f"problem.raw_dir={dataset_dir('mnist')}",
               "problem.train_size=64", "problem.eval_size=8"]
    trained = run_command("t2t-train", *problem, "model=tiny", "trainer.max_steps=2",
                          "trainer.enable_progress_bar=false", "data.num_workers=0",
                          "trainer.val_check_interval=2", "eval.examples=0",
                          f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
                          cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def decode(*options: str) -> list[str]:
        result = run_command("t2t-decode", "problem=draw_digit_strings", f"ckpt={ckpt}",
                             "decode.max_length=64", *options, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()

    assert decode("input=4 0 7", f"output_file={tmp_path / 'out.png'}") == [
        str(tmp_path / "out.png")]
    with Image.open(tmp_path / "out.png") as drawing:
        assert drawing.mode == "L" and drawing.height == 16 and drawing.width <= 4  # 64 / 16
    sampled = decode("input=1 2", "decode.sample=true", "decode.num_samples=2",
                     f"output_file={tmp_path / 'drawn' / 'x.png'}")
    assert sampled == [str(tmp_path / "drawn" / f"x-{i}.png") for i in range(2)]
    assert all(Path(path).is_file() for path in sampled)

    # One model checks another: a reader of digit strings verifies the drawings (best of 2).
    # The reader is how predictions are checked, not part of the data or the model: it is
    # given at decode time and the checkpoint does not keep it.
    reader_run = tmp_path / "reader"
    read = run_command("t2t-train", "problem=mnist_digit_strings", *problem[1:], "model=tiny",
                       "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                       "data.num_workers=0", "trainer.val_check_interval=2", "eval.examples=0",
                       f"data_dir={tmp_path / 'data'}", f"run_dir={reader_run}",
                       cwd=tmp_path, timeout=600)
    assert read.returncode == 0, read.stderr[-3000:]
    reader = reader_run / "checkpoints" / "last.ckpt"
    checked = decode("input=3 1", f"problem.reader={reader}", "decode.best_of=2",
                     f"output_file={tmp_path / 'checked.png'}")
    assert checked == [str(tmp_path / "checked.png")]
    with Image.open(tmp_path / "checked.png") as drawing:
        assert drawing.height == 16
    from t2t.inference import load_checkpoint

    _, (saved,) = load_checkpoint(ckpt)
    assert "reader" not in saved.options and not isinstance(saved, Verifier)
    _, (checking,) = load_checkpoint(ckpt, {"draw_digit_strings": {"reader": str(reader)}})
    assert isinstance(checking, Verifier) and checking.options == saved.options
    assert checking.verify("4 0 7", np.zeros((16, 0), dtype=np.uint8)) == 0.0  # nothing drawn
    # Scored by perplexity, teacher-forced; with a reader, t2t-eval also draws each test
    # string and counts the drawings the reader reads back.
    evaluated = run_command("t2t-eval", *problem, f"ckpt={ckpt}", f"data_dir={tmp_path / 'data'}",
                            cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert re.search(r"perplexity\W+\d+\.\d+", evaluated.stdout), evaluated.stdout
    assert "teacher-forced" in evaluated.stdout and "verified" not in evaluated.stdout
    evaluated = run_command("t2t-eval", *problem, f"ckpt={ckpt}", f"data_dir={tmp_path / 'data'}",
                            f"problem.reader={reader}", "decode.best_of=2", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert re.search(r"perplexity\W+\d+\.\d+", evaluated.stdout), evaluated.stdout
    assert re.search(r"verified \d/8;", evaluated.stdout), evaluated.stdout
    # Bad readers: one line each, before any drawing.
    for options, message in [
        ([f"problem.reader={tmp_path / 'none.ckpt'}"],
         f"problem.reader={tmp_path / 'none.ckpt'}: no such checkpoint; pass one of a model "
         f"that reads digit strings"),
        (["decode.best_of=2"], "problem draw_digit_strings has no verifier (a verify(inputs, "
                               "prediction) method) without problem.reader, so it cannot be "
                               "decoded by search; use decode.best_of=0"),
    ]:
        result = run_command("t2t-decode", "problem=draw_digit_strings", f"ckpt={ckpt}",
                             "input=5", *options, cwd=tmp_path)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith(f"error: {message}"), result.stderr
    # Without decode.max_length a drawing may be as wide as the problem's widest strip.
    result = run_command("t2t-decode", "problem=draw_digit_strings", f"ckpt={ckpt}",
                         "input=5", f"output_file={tmp_path / 'whole.png'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(tmp_path / "whole.png") as drawing:
        assert drawing.height == 16 and drawing.width <= saved.targets.max_width == 55



class FirstPixelWhite(Problem):
    """Draw anything; a picture is right when its top-left pixel is white."""

    inputs = TextModality(vocab="char", alphabet="ab")
    targets = PixelModality(height=2, levels=2, max_width=3)

    def generate_samples(self, split: str):
        yield from ()

    def verify(self, inputs: str, picture: np.ndarray) -> float:
        return float(picture.shape[1] > 0 and picture[0, 0] == 255)


def test_best_of_n_keeps_a_picture_the_verifier_accepts():
    from t2t.inference import search
    from t2t.model import PRESETS, T2TModel

    problem = FirstPixelWhite()
    torch.manual_seed(0)
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    seen: list[np.ndarray] = []
    check = problem.verify
    problem.verify = lambda inputs, picture: seen.append(picture) or check(inputs, picture)
    loaded = problem.inputs.load(problem.inputs.encode("ab"))
    kept = search(model, problem, 0, loaded, best_of=16, max_length=7, seed=0)
    # Pictures are arrays, which no dict can key: candidates are told apart by their tokens.
    accepted = [picture for picture in seen if check("ab", picture) == 1.0]
    assert len(seen) > 1 and accepted, "no sample verified: choose another seed"
    assert isinstance(kept, np.ndarray) and kept is accepted[0]


def test_every_decoding_draws_whole_columns_of_pixels():
    """An untrained model ends anywhere and may emit any token; a picture ends only after a
    whole column and holds only pixels, in sampling, greedy and beam search alike."""
    from t2t import decoding
    from t2t.model import PRESETS, T2TModel
    from t2t.problem import constraint_for

    problem = FirstPixelWhite()
    problem.targets = PixelModality(height=3, levels=2, max_width=4)
    torch.manual_seed(0)
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    inputs, pad = problem.inputs.collate([problem.inputs.load(problem.inputs.encode("ab"))] * 64)
    allowed = constraint_for(problem, inputs, pad)
    decoder = model.decoder(0)
    longest = problem.targets.longest_target + 1
    with torch.no_grad():
        sampled = decoding.sample(decoder, decoder.start(inputs, pad, longest), 64, longest,
                                  temperature=2.0, allowed=allowed,
                                  generator=torch.Generator().manual_seed(0))
        greedy = decoding.greedy(decoder, decoder.start(inputs[:1], pad[:1], longest), 1,
                                 longest, allowed=allowed)
        beams, _ = decoding.beam_search(decoder, decoder.start(inputs[:1], pad[:1], longest),
                                        batch_size=1, beam_size=4, max_length=longest,
                                        allowed=allowed)
    rows = decoding.strip(sampled) + decoding.strip(greedy) + decoding.strip(beams)
    lengths = set()
    for row in rows:
        pixels = row[:-1] if row and row[-1] == EOS else row
        assert all(t >= NUM_RESERVED for t in pixels), row
        assert len(pixels) % 3 == 0 and 0 < len(pixels) <= 12, row
        lengths.add(len(pixels))
    assert len(lengths) > 1  # the samples still end at different columns
