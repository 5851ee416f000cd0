"""Images: ImageModality, image_text_folder, mnist_digit_strings, ocr_rendered_text, and
t2t-train / t2t-decode end to end on an image problem."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import problems.mnist
from modalities.image import ImageModality, change_thickness
from problems.image_text import ImageTextFolder, read_metadata
from problems.mnist import MnistDigitStrings, compose, read_csv, read_idx
from problems.ocr import ALPHABET, OcrRenderedText, random_text
from t2t import data, datagen
from t2t.errors import UserError

from .conftest import SHARED_DATASETS, run_command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def noise(height: int, width: int, channels: int = 0, seed: int = 0) -> np.ndarray:
    """A random uint8 image, (H, W) or (H, W, C): every pixel differs from its neighbours."""
    shape = (height, width, channels) if channels else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    assert data[:8] == PNG_SIGNATURE
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


# -- ImageModality: encode -----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["array", "tensor", "pil", "png_bytes", "str_path", "path"])
def test_encode_gives_a_lossless_png_from_every_kind_of_input(kind, channels, tmp_path):
    pixels = noise(12, 20, channels=0 if channels == 1 else 3)
    modality = ImageModality(height=16, max_width=64, channels=channels, patch_size=4)
    file = tmp_path / "image.png"
    file.write_bytes(png_bytes(pixels))
    raw = {"array": pixels, "tensor": torch.from_numpy(pixels), "pil": Image.fromarray(pixels),
           "png_bytes": png_bytes(pixels), "str_path": str(file), "path": file}[kind]
    image = decoded(modality.encode(raw))
    assert image.mode == ("L" if channels == 1 else "RGB")
    assert image.size == (20, 12)
    assert np.array_equal(np.asarray(image), pixels)  # PNG: lossless


def test_encode_grayscale_input_for_an_rgb_modality_gives_three_equal_channels():
    gray = noise(10, 14)
    image = decoded(ImageModality(channels=3, height=16, max_width=64).encode(gray))
    assert image.mode == "RGB"
    rgb = np.asarray(image)
    assert rgb.shape == (10, 14, 3)
    for c in range(3):
        assert np.array_equal(rgb[:, :, c], gray)


def test_encode_rgb_input_for_a_grayscale_modality_gives_luminance():
    rgb = np.zeros((8, 3, 3), dtype=np.uint8)
    rgb[:, 0] = (255, 0, 0)
    rgb[:, 1] = (0, 255, 0)
    rgb[:, 2] = (0, 0, 255)
    image = decoded(ImageModality(channels=1, height=16, max_width=64).encode(rgb))
    assert image.mode == "L"
    gray = np.asarray(image).astype(int)
    assert gray.shape == (8, 3)
    # ITU-R 601-2 luma: L = 0.299 R + 0.587 G + 0.114 B
    assert np.abs(gray[0] - np.array([76, 150, 29])).max() <= 1
    # ...and load gives one channel for the stored image
    loaded = ImageModality(channels=1, height=8, max_width=64).load(
        ImageModality(channels=3, height=8, max_width=64).encode(rgb))
    assert loaded.shape == (1, 8, 3)


def test_encode_rejects_arrays_that_are_not_uint8():
    with pytest.raises(UserError, match="uint8"):
        ImageModality().encode(np.zeros((4, 4), dtype=np.float32))


@pytest.mark.parametrize("options", [dict(channels=2), dict(height=30, patch_size=4),
                                     dict(max_width=30, patch_size=4)])
def test_constructor_rejects_bad_options(options):
    with pytest.raises(UserError, match="ImageModality"):
        ImageModality(**options)


def test_encode_accepts_a_single_channel_hwc_array():
    pixels = noise(6, 9)
    image = decoded(ImageModality(channels=1, height=8, max_width=64).encode(pixels[:, :, None]))
    assert np.array_equal(np.asarray(image), pixels)


def test_encode_scales_16_bit_grayscale_instead_of_clipping(tmp_path):
    deep = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535 in steps
    Image.fromarray(deep).save(tmp_path / "deep.png")
    gray = np.asarray(decoded(ImageModality(channels=1, height=16, max_width=64)
                              .encode(tmp_path / "deep.png"))).astype(int)
    assert np.abs(gray - deep.astype(int) // 257).max() <= 1


@pytest.mark.parametrize("cut", [0.5, 0.05, 16])
def test_truncated_png_file_raises_user_error_naming_it(tmp_path, cut):
    whole = png_bytes(noise(40, 60, channels=3))
    path = tmp_path / "photo of a cat.png"
    path.write_bytes(whole[: int(len(whole) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(UserError) as error:
        ImageModality(channels=3).encode(path)
    assert str(path) in str(error.value)


def test_missing_image_raises_user_error_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "missing.png"
    with pytest.raises(UserError, match="not found") as error:
        ImageModality().encode(path)
    assert str(path) in str(error.value)
    with pytest.raises(UserError) as error:
        ImageModality().encode(str(path))
    assert str(path) in str(error.value)


# -- ImageModality: load, length, collate, bottom ------------------------------------------------

MODALITY = dict(height=16, max_width=64, channels=1, patch_size=4)


@pytest.mark.parametrize("height, width", [(16, 16), (20, 40), (10, 7), (100, 30), (33, 101),
                                           (3, 11), (200, 1), (16, 64)])
def test_load_keeps_the_aspect_ratio_within_a_pixel(height, width):
    modality = ImageModality(**MODALITY)
    image = modality.load(modality.encode(noise(height, width)))
    assert image.dtype == torch.uint8 and image.ndim == 3
    channels, rows, columns = image.shape
    assert channels == 1 and rows == 16
    assert 1 <= columns <= 64
    assert abs(columns - width * 16 / height) <= 1  # scaled to the height, ratio kept


@pytest.mark.parametrize("height, width", [(10, 400), (16, 80), (4, 1000)])
def test_wide_image_is_scaled_to_max_width_and_padded_below(height, width):
    modality = ImageModality(**MODALITY)
    white = np.full((height, width), 255, dtype=np.uint8)
    image = modality.load(modality.encode(white))
    assert tuple(image.shape) == (1, 16, 64)
    content = max(1, round(height * 64 / width))  # the scaled image's own height
    assert content < 16
    assert (image[:, :content] > 200).all()  # the picture at the top...
    assert (image[:, content:] == 0).all()  # ...and zeros below it


@pytest.mark.parametrize("channels", [1, 3])
def test_load_returns_the_configured_channels(channels):
    modality = ImageModality(**{**MODALITY, "channels": channels})
    for source in (noise(20, 30), noise(20, 30, channels=3)):
        assert modality.load(modality.encode(source)).shape[:2] == (channels, 16)


@pytest.mark.parametrize("height, width", [(16, 16), (20, 40), (10, 7), (33, 101), (10, 400),
                                           (1, 1), (16, 13), (16, 15)])
def test_length_is_the_number_of_patches_of_the_loaded_image(height, width):
    modality = ImageModality(**MODALITY)
    stored = modality.encode(noise(height, width))
    batch, mask = modality.collate([modality.load(stored)])
    assert modality.length(stored) == mask.shape[1] == mask.numel()
    patches = (batch.shape[2] // 4) * (batch.shape[3] // 4)
    assert modality.length(stored) == patches
    assert not mask.any()  # one image alone: nothing is padding


def test_collate_masks_exactly_the_padding_columns_in_reading_order():
    modality = ImageModality(**MODALITY)  # 4 patch rows
    widths = [40, 10, 4, 23]  # 10, 3 (the last one partly real), 1 and 6 patch columns
    images = [modality.load(modality.encode(noise(16, w, seed=w))) for w in widths]
    assert [i.shape[2] for i in images] == widths
    batch, mask = modality.collate(images)
    assert batch.shape == (4, 1, 16, 40) and batch.dtype == torch.uint8
    assert mask.shape == (4, 4 * 10) and mask.dtype == torch.bool
    for i, (image, width) in enumerate(zip(images, widths, strict=True)):
        real = math.ceil(width / 4)
        # column by column: 4 patches per column, the padding columns last
        expected = torch.tensor([[c >= real for _ in range(4)] for c in range(10)]).flatten()
        assert torch.equal(mask[i], expected), width
        assert torch.equal(batch[i, :, :, :width], image)
        assert (batch[i, :, :, width:] == 0).all()


@pytest.mark.parametrize("stem_channels, stem_layers", [(0, 2), (8, 2), (8, 4)])
def test_bottom_embeds_patches_and_keeps_the_mask(stem_channels, stem_layers):
    modality = ImageModality(**{**MODALITY, "channels": 3})
    images = [modality.load(modality.encode(noise(16, w, channels=3, seed=w)))
              for w in (40, 12)]
    batch, mask = modality.collate(images)
    bottom = modality.bottom(d_model=24, stem_channels=stem_channels, stem_layers=stem_layers)
    embeddings, out_mask = bottom(batch, mask)
    assert embeddings.shape == (2, 4 * 10, 24) and embeddings.dtype == torch.float32
    assert torch.equal(out_mask, mask)
    assert out_mask.shape == embeddings.shape[:2]
    # The narrow image's real patches embed the same alone as next to a wider image.
    alone, alone_mask = bottom(*modality.collate(images[1:]))
    assert alone.shape == (1, 4 * 3, 24) and not alone_mask.any()
    together = embeddings[1].view(10, 4, 24)[:3]
    assert torch.allclose(together, alone[0].view(3, 4, 24), atol=1e-5)


def image_bottom(modality: ImageModality, **settings) -> torch.nn.Module:
    """The image bottom a model built with model.bottoms.image=settings has."""
    from modalities.text import TextModality
    from t2t.model import PRESETS, T2TModel

    config = dataclasses.replace(PRESETS["tiny"], bottoms={"image": settings})
    model = T2TModel(config, [(modality, TextModality(vocab="char", alphabet="ab"))])
    return model.bottoms[modality.key.replace(".", "_")]


def test_a_convolutional_stem_is_model_config_and_needs_an_even_patch_and_two_layers():
    modality = ImageModality(**MODALITY)
    plain, stem = image_bottom(modality), image_bottom(modality, stem_channels=8)
    assert sum(p.numel() for p in stem.parameters()) > sum(p.numel() for p in plain.parameters())
    assert len(image_bottom(modality, stem_channels=8, stem_layers=4).stem) == 4
    with pytest.raises(UserError, match="even"):
        image_bottom(ImageModality(height=15, max_width=30, patch_size=(15, 6)), stem_channels=8)
    with pytest.raises(UserError, match="stem_layers must be at least 2"):
        image_bottom(modality, stem_channels=8, stem_layers=1)
    with pytest.raises(UserError, match=r"setting 'stem_channel' in model.bottoms.image; "
                                        r"did you mean stem_channels"):
        image_bottom(modality, stem_channel=8)


@pytest.mark.parametrize("ink", [255, 0])
def test_thickness_adds_or_removes_a_pixel_of_stroke_either_polarity(ink):
    image = torch.full((1, 12, 12), 255 - ink, dtype=torch.uint8)
    image[0, 2:10, 5:7] = ink  # a stroke two pixels wide
    def stroke_width(x):
        return int((x[0, 5] == ink).sum())
    assert stroke_width(change_thickness(image, thicker=ink == 255)) == 3
    assert stroke_width(change_thickness(image, thicker=ink != 255)) == 1
    assert change_thickness(image, thicker=True).dtype == torch.uint8


@pytest.mark.parametrize("modality_augment, load_augment", [(True, True), (True, False),
                                                            (False, True), (False, False)])
def test_augment_needs_both_the_modality_and_a_training_load(modality_augment, load_augment):
    modality = ImageModality(**{**MODALITY, "augment": modality_augment})
    augment = modality.augmentation(elastic=1.0, thickness=0.5) if load_augment else None
    stored = modality.encode(noise(16, 48))
    plain = modality.load(stored)
    torch.manual_seed(0)
    changed = [not torch.equal(modality.load(stored, augment=augment), plain) for _ in range(3)]
    if modality_augment and load_augment:
        assert all(changed)
    else:
        assert not any(changed)
    assert modality.load(stored, augment=augment).shape == plain.shape


def test_augmentation_settings_are_checked_once_with_one_line_each():
    from t2t.datamodule import augmentation

    modality = ImageModality(**{**MODALITY, "augment": True})
    with pytest.raises(UserError, match="thickness a chance in"):
        augmentation(modality, {"image": {"thickness": 2.0}})
    with pytest.raises(UserError, match=r"setting 'elastik' in data.augment.image; "
                                        r"did you mean elastic"):
        augmentation(modality, {"image": {"elastik": 2.0}})
    assert augmentation(modality, {"audio": {"speed_perturb": [0.9]}}).elastic == 0.0


def test_elastic_warp_bends_strokes_but_keeps_the_ink_and_the_background():
    from modalities.image import elastic_warp

    canvas = np.zeros((32, 96), dtype=np.uint8)
    canvas[4:28, 20:24] = 255  # a vertical bar, like the stroke of a "1"
    image = torch.from_numpy(canvas)[None]
    torch.manual_seed(0)
    warped = elastic_warp(image, 2.0)
    assert warped.shape == image.shape and warped.dtype == torch.uint8
    assert not torch.equal(warped, image)
    assert abs(warped.float().sum() / image.float().sum() - 1) < 0.15  # moved, not erased
    assert warped[0, :, 50:].max() == 0  # far from the bar stays background
    flat = torch.full((1, 32, 96), 200, dtype=torch.uint8)  # edges read the border: no frame
    assert torch.equal(elastic_warp(flat, 3.0), flat)


# -- image_text_folder ---------------------------------------------------------------------------


def write_folder(folder: Path, captions: dict[str, list[str]], *, fmt: str = "jsonl",
                 seed: int = 0) -> None:
    """Images named after the keys (each with its own pixels) and their metadata file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(captions):
        Image.fromarray(noise(12, 16 + i % 7, channels=3, seed=seed * 1000 + i)
                        ).save(folder / name)
    if fmt == "jsonl":
        with open(folder / "metadata.jsonl", "w") as f:
            for name, texts in captions.items():
                text = texts[0] if len(texts) == 1 else texts
                f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    else:
        with open(folder / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text"])
            for name, texts in captions.items():
                for text in texts:
                    writer.writerow([name, text])


def folder_problem(raw_dir: Path | None, **options) -> ImageTextFolder:
    return ImageTextFolder(raw_dir=str(raw_dir) if raw_dir else None, vocab="byte", height=16,
                           max_width=64, patch_size=4, **options)


def generate(problem, tmp_path: Path, **settings) -> Path:
    return datagen.generate(problem, tmp_path / "data", samples_per_shard=1000, chunk_size=64,
                         progress=False, **settings)


def test_several_captions_are_several_training_samples_and_references(tmp_path):
    captions = {f"{i}.png": [f"picture {i}", f"image number {i}", f"photo {i}"][: 1 + i % 3]
                for i in range(20)}
    write_folder(tmp_path / "raw", captions)
    problem = folder_problem(tmp_path / "raw")
    assert problem.splits == ("train", "validation")
    problem_dir = generate(problem, tmp_path)
    meta = data.read_meta(problem_dir)

    train_raws = list(problem.generate_samples("train"))
    train_images = {raw["inputs"].name for raw in train_raws}
    assert meta["splits"]["train"]["count"] == sum(len(captions[n]) for n in train_images)
    seen = []
    for sample in data.read_split(folder_problem(tmp_path / "raw"), problem_dir, "train"):
        raw = train_raws[int(sample["key"])]
        text = problem.targets.decode(sample["targets"])
        assert text == raw["targets"]
        seen.append((raw["inputs"].name, text))
    assert sorted(seen) == sorted((n, t) for n in train_images for t in captions[n])

    validation_raws = list(problem.generate_samples("validation"))
    read = list(data.read_split(folder_problem(tmp_path / "raw"), problem_dir, "validation"))
    assert len(read) == meta["splits"]["validation"]["count"] == 2  # one sample per image
    for sample in read:
        name = validation_raws[int(sample["key"])]["inputs"].name
        assert sample["references"] == captions[name]
        assert problem.targets.decode(sample["targets"]) == captions[name][0]
        assert torch.equal(sample["inputs"],
                           problem.inputs.load(problem.inputs.encode(tmp_path / "raw" / name)))


def test_csv_metadata_with_two_rows_for_one_image(tmp_path):
    write_folder(tmp_path / "raw" / "train",
                 {"a.png": ["first caption", "second caption"], "b.png": ["only one"]},
                 fmt="csv")
    write_folder(tmp_path / "raw" / "validation",
                 {"v.png": ["a view", "another view"]}, fmt="csv", seed=1)
    assert read_metadata(tmp_path / "raw" / "train") == [
        (tmp_path / "raw" / "train" / "a.png", ["first caption", "second caption"]),
        (tmp_path / "raw" / "train" / "b.png", ["only one"]),
    ]
    problem = folder_problem(tmp_path / "raw")
    problem_dir = generate(problem, tmp_path)
    train = list(data.read_split(folder_problem(tmp_path / "raw"), problem_dir, "train"))
    assert sorted(problem.targets.decode(s["targets"]) for s in train) == [
        "first caption", "only one", "second caption"]
    [validation] = data.read_split(folder_problem(tmp_path / "raw"), problem_dir, "validation")
    assert validation["references"] == ["a view", "another view"]


def split_images(problem: ImageTextFolder) -> dict[str, set[str]]:
    return {split: {str(raw["inputs"]) for raw in problem.generate_samples(split)}
            for split in problem.splits}


def test_split_subfolders_are_the_splits(tmp_path):
    raw = tmp_path / "raw"
    for seed, split in enumerate(["train", "validation", "test"]):
        write_folder(raw / split, {f"{split}{i}.png": [f"{split} {i}"] for i in range(3)},
                     seed=seed)
    problem = folder_problem(raw)
    assert problem.splits == ("train", "validation", "test")
    images = split_images(problem)
    for split in problem.splits:
        assert images[split] == {str(raw / split / f"{split}{i}.png") for i in range(3)}
    meta = data.read_meta(generate(problem, tmp_path))
    assert list(meta["splits"]) == ["train", "validation", "test"]
    assert all(s["count"] == 3 for s in meta["splits"].values())


def test_no_test_folder_no_test_split(tmp_path):
    raw = tmp_path / "raw"
    for seed, split in enumerate(["train", "validation"]):
        write_folder(raw / split, {f"{split}{i}.png": [f"{split} {i}"] for i in range(3)},
                     seed=seed)
    problem = folder_problem(raw)
    assert problem.splits == ("train", "validation")
    meta = data.read_meta(generate(problem, tmp_path))
    assert list(meta["splits"]) == ["train", "validation"]


def test_train_and_test_folders_hold_out_validation_from_train(tmp_path):
    raw = tmp_path / "raw"
    write_folder(raw / "train", {f"t{i}.png": [f"train {i}"] for i in range(30)})
    write_folder(raw / "test", {f"x{i}.png": [f"test {i}"] for i in range(4)}, seed=1)
    problem = folder_problem(raw)
    assert problem.splits == ("train", "validation", "test")
    images = split_images(problem)
    assert len(images["validation"]) == 3 and len(images["train"]) == 27
    assert images["train"].isdisjoint(images["validation"])
    assert images["train"] | images["validation"] == {str(raw / "train" / f"t{i}.png")
                                                      for i in range(30)}
    assert images["test"] == {str(raw / "test" / f"x{i}.png") for i in range(4)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_holdout_validation_is_disjoint_from_train_and_seeded(tmp_path, fmt):
    captions = {f"{i}.png": [f"caption {i}", f"other {i}"] for i in range(40)}
    write_folder(tmp_path / "raw", captions, fmt=fmt)
    images = split_images(folder_problem(tmp_path / "raw"))
    assert len(images["validation"]) == 4  # a tenth of the images
    assert images["train"].isdisjoint(images["validation"])
    assert images["train"] | images["validation"] == {str(tmp_path / "raw" / n)
                                                      for n in captions}
    assert split_images(folder_problem(tmp_path / "raw")) == images  # deterministic
    other = split_images(folder_problem(tmp_path / "raw", seed=7))
    assert other["validation"] != images["validation"]
    assert other["train"].isdisjoint(other["validation"])
    # Through the shards: no validation image is among the training images.
    problem_dir = generate(folder_problem(tmp_path / "raw"), tmp_path)

    def pixels(split):
        return {hashlib.sha1(s["inputs"].numpy().tobytes()).hexdigest() for s in
                data.read_split(folder_problem(tmp_path / "raw"), problem_dir, split)}

    train, validation = pixels("train"), pixels("validation")
    assert len(validation) == 4 and len(train) == 36
    assert train.isdisjoint(validation)


def test_flat_layout_with_a_test_folder_does_not_evaluate_on_training_images(tmp_path):
    raw = tmp_path / "raw"
    write_folder(raw, {f"a{i}.png": [f"train {i}"] for i in range(20)})
    write_folder(raw / "test", {f"x{i}.png": [f"test {i}"] for i in range(3)}, seed=1)
    problem = folder_problem(raw)
    images = split_images(problem)
    assert "test" in problem.splits
    assert images["test"].isdisjoint(images["train"])
    assert images["test"] == {str(raw / "test" / f"x{i}.png") for i in range(3)}


def bad_folder(raw: Path, bad: list[str]) -> dict[str, Path]:
    """train/ with good images and the bad ones named in `bad`; validation/ all good."""
    captions = {f"good{i}.png": [f"good {i}"] for i in range(4)}
    write_folder(raw / "train", captions)
    write_folder(raw / "validation", {"v.png": ["valid"]}, seed=1)
    files = {}
    lines = []
    for kind in bad:
        name = f"{kind}.png"
        files[kind] = raw / "train" / name
        if kind == "corrupt":
            files[kind].write_bytes(png_bytes(noise(20, 20))[:60])
        lines.append(json.dumps({"file_name": name, "text": kind}) + "\n")
    with open(raw / "train" / "metadata.jsonl", "a") as f:
        f.writelines(lines)
    return files


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_image_stops_datagen_naming_the_file(tmp_path, kind):
    files = bad_folder(tmp_path / "raw", [kind])
    with pytest.raises(UserError) as error:
        generate(folder_problem(tmp_path / "raw"), tmp_path)
    message = str(error.value)
    assert str(files[kind]) in message
    assert "on_bad_example=skip" in message


def test_bad_images_are_skipped_and_counted_with_on_bad_example_skip(tmp_path):
    files = bad_folder(tmp_path / "raw", ["missing", "corrupt"])
    problem_dir = generate(folder_problem(tmp_path / "raw"), tmp_path, on_bad_example="skip")
    train = data.read_meta(problem_dir)["splits"]["train"]
    assert train["count"] == 4
    assert train["dropped"] == {"empty": 0, "too_long": 0, "bad": 2}
    assert len(train["bad_examples"]) == 2
    for path in files.values():
        assert sum(str(path) in reason for reason in train["bad_examples"]) == 1
    read = data.read_split(folder_problem(tmp_path / "raw"), problem_dir, "train")
    assert sorted(ImageTextFolder(vocab="byte").targets.decode(s["targets"]) for s in read) == [
        f"good {i}" for i in range(4)]


def test_malformed_jsonl_line_names_path_and_line(tmp_path):
    write_folder(tmp_path / "raw", {f"{i}.png": [f"c {i}"] for i in range(12)})
    metadata = tmp_path / "raw" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[2] = '{"file_name": "2.png", "text": "unterminated'
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="invalid JSON") as error:
        generate(folder_problem(tmp_path / "raw"), tmp_path)
    assert f"{metadata}:3:" in str(error.value)


@pytest.mark.parametrize("record, problem", [
    ({"text": "no file"}, "file_name"),
    ({"file_name": "0.png", "text": 5}, "text"),
    ({"file_name": "0.png", "text": []}, "text"),
    ({"file_name": "0.png"}, "text"),
])
def test_jsonl_record_without_usable_fields_names_path_and_line(tmp_path, record, problem):
    write_folder(tmp_path / "raw", {"0.png": ["zero"]})
    metadata = tmp_path / "raw" / "metadata.jsonl"
    with open(metadata, "a") as f:
        f.write("\n" + json.dumps(record) + "\n")  # an empty line 2 is skipped
    with pytest.raises(UserError, match=problem) as error:
        read_metadata(tmp_path / "raw")
    assert f"{metadata}:3:" in str(error.value)


def test_malformed_csv_row_names_path_and_line(tmp_path):
    write_folder(tmp_path / "raw", {f"{i}.png": [f"c {i}"] for i in range(3)}, fmt="csv")
    table = tmp_path / "raw" / "metadata.csv"
    lines = table.read_text().splitlines()
    lines[3] = "2.png"  # no text column: line 4 of the file (line 1 is the header)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="text") as error:
        read_metadata(tmp_path / "raw")
    assert f"{table}:4:" in str(error.value)


def test_folder_without_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "raw").mkdir()
    Image.fromarray(noise(8, 8)).save(tmp_path / "raw" / "a.png")
    with pytest.raises(UserError, match="metadata.jsonl or metadata.csv") as error:
        generate(folder_problem(tmp_path / "raw"), tmp_path)
    assert str(tmp_path / "raw") in str(error.value)


def test_no_raw_dir_is_an_error_naming_the_option(tmp_path):
    with pytest.raises(UserError, match=r"problem\.raw_dir"):
        generate(folder_problem(None), tmp_path)
    with pytest.raises(UserError, match=r"problem\.raw_dir=.*no such folder"):
        generate(folder_problem(tmp_path / "absent"), tmp_path)


# -- mnist_digit_strings ---------------------------------------------------------------------------

MNIST_DIR = Path(problems.mnist.__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"local MNIST copy not found at {MNIST_DIR} (see {SHARED_DATASETS}/README.md)")
    return MNIST_DIR


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def hashes(images: np.ndarray) -> set[str]:
    return {digest(image) for image in images}


def test_mnist_splits_draw_from_disjoint_digit_images(mnist_dir):
    problem = MnistDigitStrings(raw_dir=str(mnist_dir))
    digits = {split: problem.digits(split) for split in ("train", "validation", "test")}
    for images, labels in digits.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert len(images) == len(labels) > 0 and set(labels.tolist()) <= set(range(10))
    sets = {split: hashes(images) for split, (images, _) in digits.items()}
    assert sets["train"].isdisjoint(sets["validation"])
    assert sets["train"].isdisjoint(sets["test"])
    assert sets["validation"].isdisjoint(sets["test"])


def recorded_samples(problem, split: str, count: int, monkeypatch) -> list[tuple[dict, list]]:
    """The first samples of a split, each with the digit images compose() was given."""
    calls = []

    def spy(digits, rng):
        calls.append([np.array(d) for d in digits])
        return compose(digits, rng)

    monkeypatch.setattr(problems.mnist, "compose", spy)
    samples = list(itertools.islice(problem.generate_samples(split), count))
    return list(zip(samples, calls, strict=True))


def test_mnist_targets_are_the_labels_of_the_composed_digits(mnist_dir, monkeypatch):
    problem = MnistDigitStrings(raw_dir=str(mnist_dir), max_digits=4, eval_size=40)
    images, labels = problem.digits("validation")
    label_of = {digest(i): int(label) for i, label in zip(images, labels, strict=True)}
    counts = set()
    for sample, digits in recorded_samples(problem, "validation", 40, monkeypatch):
        target, image = sample["targets"], sample["inputs"]
        assert 1 <= len(target) <= 4 and target.isdigit()
        assert len(target) == len(digits)
        assert target == "".join(str(label_of[digest(d)]) for d in digits)
        assert image.dtype == np.uint8 and image.ndim == 2 and image.shape[0] == 32
        assert image.shape[1] <= problem.inputs.max_width
        counts.add(len(target))
    assert counts == {1, 2, 3, 4}


def test_mnist_samples_are_deterministic_per_seed(mnist_dir):
    def first(seed, split="train"):
        problem = MnistDigitStrings(raw_dir=str(mnist_dir), seed=seed)
        return list(itertools.islice(problem.generate_samples(split), 15))

    a, b, other = first(1), first(1), first(2)
    assert len(a) == 15
    assert [s["targets"] for s in a] == [s["targets"] for s in b]
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b, strict=True))
    assert [s["targets"] for s in a] != [s["targets"] for s in other]
    assert [s["targets"] for s in a[:5]] != [s["targets"] for s in first(1, "validation")[:5]]


def test_compose_places_every_digit_on_a_32_pixel_canvas():
    digit = np.full((28, 28), 255, dtype=np.uint8)
    for count in range(1, 7):
        image = compose([digit] * count, random.Random(count))
        assert image.dtype == np.uint8 and image.shape[0] == 32
        assert 28 * count - 4 * (count - 1) <= image.shape[1] <= 216  # max_width for 6
        # Every digit whole on the canvas: at least 24 of its 28 columns (neighbours
        # overlap by up to 4) are 28 white pixels high.
        assert (image == 255).sum() >= 28 * (24 * count + 4)


def test_read_csv_names_path_and_line_of_a_bad_row(tmp_path):
    good = ",".join(["0"] * 784 + ["7"])
    path = tmp_path / "digits.csv"
    path.write_text(f"{good}\n{good}\n{','.join(['0'] * 784)}\n")
    with pytest.raises(UserError, match="785") as error:
        read_csv(path)
    assert f"{path}:3:" in str(error.value)

    gz = tmp_path / "digits.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write(f"{good}\n{good.replace('7', 'x')}\n")
    with pytest.raises(UserError, match="integer") as error:
        read_csv(gz)
    assert f"{gz}:2:" in str(error.value)

    path.write_text(f"{good}\n\n{good}\n")
    images, labels = read_csv(path)
    assert images.shape == (2, 28, 28) and labels.tolist() == [7, 7]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_give_disjoint_splits(tmp_path):
    train = np.arange(50 * 28 * 28).reshape(50, 28, 28) % 251
    train[:, 0, 0] = np.arange(50)  # every image unique
    test = np.full((10, 28, 28), 3)
    test[:, 0, 0] = 100 + np.arange(10)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), train)
    problem = MnistDigitStrings(raw_dir=str(tmp_path))
    splits = {s: problem.digits(s) for s in ("train", "validation", "test")}
    assert [len(splits[s][1]) for s in splits] == [45, 5, 10]
    sets = {s: hashes(images) for s, (images, _) in splits.items()}
    assert sets["train"].isdisjoint(sets["validation"]) and sets["train"].isdisjoint(sets["test"])
    assert sets["validation"].isdisjoint(sets["test"])

    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "rb") as f:
        whole = f.read()
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(whole[:-100])
    with pytest.raises(UserError, match="truncated") as error:
        read_idx(tmp_path / "short.gz")
    assert str(tmp_path / "short.gz") in str(error.value)


@pytest.mark.parametrize("where", ["empty_raw_dir", "no_raw_dir"])
def test_mnist_offline_without_files_names_the_raw_dir_option(tmp_path, monkeypatch, where):
    monkeypatch.setattr(problems.mnist, "MNIST_URL", "http://127.0.0.1:9/")
    if where == "empty_raw_dir":
        (tmp_path / "empty").mkdir()
        problem = MnistDigitStrings(raw_dir=str(tmp_path / "empty"))
    else:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the download cache goes there
        problem = MnistDigitStrings()
        assert str(problem.raw_dir).startswith(str(tmp_path / "home"))
    with pytest.raises(UserError, match=r"problem\.raw_dir") as error:
        problem._file("train-images-idx3-ubyte.gz")
    assert "127.0.0.1:9" in str(error.value)
    with pytest.raises(UserError, match=r"problem\.raw_dir"):
        problem.digits("test")


# -- ocr_rendered_text -----------------------------------------------------------------------------


def ocr_samples(split="validation", **options):
    return list(OcrRenderedText(eval_size=30, train_size=30, **options).generate_samples(split))


def test_ocr_is_deterministic_per_seed_and_split():
    a, b = ocr_samples(), ocr_samples()
    assert [s["targets"] for s in a] == [s["targets"] for s in b]
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b, strict=True))
    assert [s["targets"] for s in ocr_samples(seed=2)] != [s["targets"] for s in a]
    assert [s["targets"] for s in ocr_samples("test")] != [s["targets"] for s in a]
    assert [s["targets"] for s in ocr_samples("train")] != [s["targets"] for s in a]


@pytest.mark.parametrize("height, max_chars", [(32, 16), (24, 6), (48, 30)])
def test_ocr_targets_and_images(height, max_chars):
    problem = OcrRenderedText(height=height, max_chars=max_chars, eval_size=40)
    rows = []
    for sample in problem.generate_samples("validation"):
        text, image = sample["targets"], sample["inputs"]
        assert text and text == text.strip() and len(text) <= max_chars
        assert set(text) <= set(ALPHABET)
        assert problem.targets.decode(problem.targets.load(problem.targets.encode(text))) == text
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2
        # Font size is 0.45-0.8 of the height (lowercase without ascenders is about half of
        # that); margins and a slight rotation add a little.
        assert 0.3 * height <= image.shape[0] <= 2 * height
        rows.append(image.shape[0])
        assert image.min() < image.max()  # not a blank canvas
        loaded = problem.inputs.load(problem.inputs.encode(image))
        assert loaded.shape[:2] == (1, height) and loaded.shape[2] <= problem.inputs.max_width
    assert 0.5 * height <= np.median(rows) <= 1.2 * height  # rendered at the configured scale


def test_random_text_uses_the_alphabet_and_the_length_limit():
    rng = random.Random(0)
    for max_chars in (1, 3, 16):
        for _ in range(200):
            text = random_text(rng, max_chars)
            assert 1 <= len(text) <= max_chars and set(text) <= set(ALPHABET)


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_train_then_decode_one_image(tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    result = run_command(
        "t2t-train", "problem=mnist_digit_strings", f"problem.raw_dir={mnist_dir}",
        "problem.train_size=200", "problem.eval_size=20",
        "model.bottoms.image.stem_channels=8", "model.bottoms.image.stem_layers=3",
        "model=tiny", "trainer.max_steps=5",
        "trainer.val_check_interval=5", "trainer.enable_progress_bar=false",
        "data.num_workers=0", "data.max_tokens=8192", f"data_dir={tmp_path / 'data'}",
        f"run_dir={run_dir}", cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    images, _ = MnistDigitStrings(raw_dir=str(mnist_dir)).digits("test")
    picture = tmp_path / "digits.png"
    Image.fromarray(compose([images[0], images[1], images[2]], random.Random(0))).save(picture)
    decoded_run = run_command("t2t-decode", "problem=mnist_digit_strings", f"ckpt={checkpoint}",
                              f"input_file={picture}", "decode.beam_size=1", cwd=tmp_path,
                              timeout=120)
    assert decoded_run.returncode == 0, decoded_run.stderr[-3000:]
    lines = decoded_run.stdout.splitlines()
    assert len(lines) == 1, decoded_run.stdout[-2000:]  # one image in, one prediction out
    assert set(lines[0]) <= set("0123456789")

    # A folder in one call: its images, sorted, a line each (path TAB prediction), the single
    # picture's prediction among them; a file that is no image is named and skipped.
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "b.png").write_bytes(picture.read_bytes())
    Image.fromarray(compose([images[3]], random.Random(1))).save(folder / "a.jpg")
    (folder / "c.png").write_bytes(b"not a png")
    many = run_command("t2t-decode", "problem=mnist_digit_strings", f"ckpt={checkpoint}",
                       f"input_file={folder}", "decode.beam_size=1", cwd=tmp_path, timeout=120)
    assert many.returncode == 1
    assert [line.split("\t")[0] for line in many.stdout.splitlines()] == [
        str(folder / "a.jpg"), str(folder / "b.png")]
    assert many.stdout.splitlines()[1] == f"{folder / 'b.png'}\t{lines[0]}"
    assert f"t2t-decode: skipped {folder / 'c.png'}: not a readable image" in many.stderr

    # The model's settings (the stem) come with the checkpoint: decode and eval, above and
    # here, rebuild the model from it (a model without the stem would not load its weights).
    evaluated = run_command("t2t-eval", "problem=mnist_digit_strings",
                            f"problem.raw_dir={mnist_dir}",
                            "problem.train_size=200", "problem.eval_size=20", f"ckpt={checkpoint}",
                            f"data_dir={tmp_path / 'data'}", cwd=tmp_path, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test: 20 examples" in evaluated.stdout and "exact_match" in evaluated.stdout


def test_augmentation_moves_an_image_by_a_few_pixels_at_most():
    # RandomAffine's ranges: translation up to 3% of the width and 8% of the height, a
    # rotation, shear and scale about the centre, which leave a central mark in place. A
    # light mark on a dark ground: what the map uncovers is filled with black.
    from modalities.image import ImageAugmentation

    image = torch.full((1, 32, 88), 10, dtype=torch.uint8)
    image[0, 12:20, 40:48] = 230
    torch.manual_seed(0)
    centres = []
    for _ in range(40):
        mark = ImageAugmentation()(image)[0] > 120
        ys, xs = mark.nonzero(as_tuple=True)
        centres.append((float(xs.float().mean()) - 43.5, float(ys.float().mean()) - 15.5))
    assert max(abs(x) for x, _ in centres) <= 0.03 * 88 + 1
    assert max(abs(y) for _, y in centres) <= 0.08 * 32 + 1
    assert len({(round(x), round(y)) for x, y in centres}) > 5  # it does move
