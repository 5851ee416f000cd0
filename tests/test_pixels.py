"""PixelModality: small grey images as target tokens, column after column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modalities import PixelModality
from t2t.errors import UserError
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
