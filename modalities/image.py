"""Images as patch sequences (ViT-style) for the shared encoder.

Stored in shards as PNG (lossless) or JPEG bytes, as given; decoded in data-loader workers
with torchvision.io and scaled to `height` pixels keeping the aspect ratio (narrower than
`max_width`, else scaled to fit it and padded below). A batch pads widths to its widest image;
the bottom cuts `patch_size` patches (squares, or (height, width) rectangles: full-height
strips suit a line of text), embeds them with one strided convolution, adds learned row and
column embeddings (2-D position) and masks the patches that are only padding.
Patches are ordered column by column, so the sequence reads left to right like text.
Grayscale (channels=1) and RGB (channels=3) both work; images are converted on load.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2t.errors import UserError
from t2t.modality import Modality


def _pil_image(raw: Any):
    """PIL image from a PIL image, an (H, W[, C]) uint8 array, encoded bytes or a file path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(raw, Image.Image):
        return raw
    if isinstance(raw, np.ndarray | torch.Tensor):
        array = np.asarray(raw)
        if array.dtype != np.uint8:
            raise UserError(f"image arrays must be uint8 (0-255), got {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:  # (H, W, 1): grayscale
            array = array[:, :, 0]
        return Image.fromarray(array)
    name = str(raw) if isinstance(raw, str | Path) else "image bytes"
    try:
        if isinstance(raw, bytes | bytearray):
            image = Image.open(io.BytesIO(raw))
        else:
            image = Image.open(Path(raw))
        image.load()  # decode now: a truncated file fails here, with its name
        return _eight_bit(image)
    except FileNotFoundError:
        raise UserError(f"{name}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"{name}: not a readable image ({error})") from None


def _eight_bit(image):
    """16-bit grayscale (scans, medical images) scaled to 0-255; PIL's own conversion to "L"
    clips at 255 instead and turns such an image almost white."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or array.max() > 255:
        array = array / 257.0  # 65535 -> 255
    return Image.fromarray(np.round(array).clip(0, 255).astype(np.uint8))


class ImageModality(Modality):
    """Images (inputs only): height x (up to) max_width pixels, cut into patch_size patches."""

    kind = "image"
    extension = "png"
    file_suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    length_limited = False  # scaled to height x max_width on load

    def __init__(self, height: int = 32, max_width: int = 256, channels: int = 1,
                 patch_size: int | Sequence[int] = 4, augment: bool = False):
        if channels not in (1, 3):
            raise UserError(f"ImageModality channels must be 1 (grayscale) or 3 (RGB), "
                            f"got {channels}")
        # A square side, or (height, width): tall strips suit a line of text (see ocr.py).
        patch_height, patch_width = ((patch_size, patch_size) if isinstance(patch_size, int)
                                     else tuple(patch_size))
        if height % patch_height or max_width % patch_width:
            raise UserError(f"ImageModality: height {height} and max_width {max_width} must "
                            f"be multiples of the patch height {patch_height} and width "
                            f"{patch_width}")
        self.height, self.max_width, self.channels = height, max_width, channels
        # augment: whether training may move, warp and recolour these images (the problem
        # knows; a chart's axes may not be mirrored); how much is the run's data.augment.image.
        self.patch_height, self.patch_width, self.augment = patch_height, patch_width, augment

    @property
    def key(self) -> str:
        return (f"image:{self.channels}x{self.height}x{self.max_width}:"
                f"p{self.patch_height}x{self.patch_width}")

    def describe(self) -> str:
        return f"image({'gray' if self.channels == 1 else 'rgb'} {self.height}px)"

    # -- data ------------------------------------------------------------------------------

    def encode(self, raw: Any) -> bytes:
        image = _pil_image(raw).convert("L" if self.channels == 1 else "RGB")
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    def _scaled_size(self, width: int, height: int) -> tuple[int, int]:
        scale = min(self.height / height, self.max_width / width)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def augmentation(self, *, elastic: float = 0.0, thickness: float = 0.0
                     ) -> ImageAugmentation | None:
        return ImageAugmentation(elastic, thickness) if self.augment else None

    def load(self, data: bytes, augment: ImageAugmentation | None = None) -> torch.Tensor:
        """(C, height, W) uint8 with W <= max_width."""
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as F

        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        width, height = self._scaled_size(image.shape[2], image.shape[1])
        image = F.resize(image, [height, width], antialias=True)
        if augment is not None:
            image = augment(image)
        if height < self.height:  # images wider than max_width: pad below
            image = F.pad(image, [0, 0, 0, self.height - height])
        return image

    def length(self, data: bytes) -> int:
        from PIL import Image

        width, height = Image.open(io.BytesIO(data)).size  # reads the header only
        scaled_width, _ = self._scaled_size(width, height)
        return (self.height // self.patch_height) * math.ceil(scaled_width / self.patch_width)

    def collate(self, values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, height, W) uint8 padded on the right to whole patches, and the (B, T)
        patch padding mask (True = padding). Patches are ordered column by column (top to
        bottom within a column), so the sequence reads left to right like the text in the
        image, and an image's padding is the end of its sequence."""
        columns = [math.ceil(v.shape[2] / self.patch_width) for v in values]
        width = max(columns) * self.patch_width
        batch = torch.zeros(len(values), self.channels, self.height, width, dtype=torch.uint8)
        for i, image in enumerate(values):
            batch[i, :, :, : image.shape[2]] = image
        column_is_pad = torch.arange(max(columns))[None, :] >= torch.tensor(columns)[:, None]
        rows = self.height // self.patch_height
        mask = column_is_pad[:, :, None].expand(-1, -1, rows).flatten(1)
        return batch, mask

    # -- model side ------------------------------------------------------------------------

    def bottom(self, d_model: int, *, stem_channels: int = 0, stem_layers: int = 2
               ) -> nn.Module:
        """Patch embeddings, after a small convolutional stem of `stem_channels` channels
        (a hybrid ViT, Dosovitskiy et al. 2021; 0: none): 3x3 convolutions see strokes
        wherever they fall in a patch, which a linear patch embedding must learn position
        by position. stem_layers: 2 (full size, then halving) or more, the rest at half
        size: each one widens what a patch embedding sees by 4 pixels of the image."""
        patch = (self.patch_height, self.patch_width)
        if stem_channels and (patch[0] % 2 or patch[1] % 2):
            raise UserError(f"model.bottoms.image: a convolutional stem halves the image, so "
                            f"the patch size {patch} must be even (or stem_channels=0)")
        if stem_channels and stem_layers < 2:
            raise UserError(f"model.bottoms.image: stem_layers must be at least 2 (one "
                            f"convolution at full size, one that halves it), got {stem_layers}")
        return ImagePatches(self.channels, patch, d_model, rows=self.height // patch[0],
                            columns=self.max_width // patch[1],
                            stem_channels=stem_channels, stem_layers=stem_layers)


class ImageAugmentation:
    """Random changes to a training image: a small affine map and new brightness and
    contrast; `elastic`: pixels of smooth random displacement (elastic distortion, Simard et
    al. 2003), which varies the strokes themselves where an affine map moves them rigidly;
    `thickness`: the chance that strokes get a pixel thicker or thinner (dilation or erosion,
    half each): pens and scans vary in line width, which no warp changes."""

    def __init__(self, elastic: float = 0.0, thickness: float = 0.0):
        if elastic < 0 or not 0.0 <= thickness <= 1.0:
            raise UserError(f"data.augment.image: elastic must be >= 0 pixels and thickness a "
                            f"chance in [0, 1], got elastic={elastic}, thickness={thickness}")
        self.elastic, self.thickness = elastic, thickness

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        # The draws of v2.RandomAffine(degrees=3, translate=(0.03, 0.08), scale=(0.9, 1.05),
        # shear=5) and ColorJitter(brightness=0.3, contrast=0.3), made here and applied with
        # the functional kernels: the transform classes cost 2.5x as much per small image,
        # and a data-loader worker shares the CPU with training.
        angle, dx, dy, scale, shear, brightness, contrast = (
            torch.rand(7) * torch.tensor([6.0, 0.06, 0.16, 0.15, 10.0, 0.6, 0.6])
            + torch.tensor([-3.0, -0.03, -0.08, 0.9, -5.0, 0.7, 0.7])).tolist()
        height, width = image.shape[-2:]
        image = F.affine(image, angle=angle, translate=[round(dx * width), round(dy * height)],
                         scale=scale, shear=[shear, 0.0])
        image = F.adjust_contrast(F.adjust_brightness(image, brightness), contrast)
        if self.elastic:
            image = elastic_warp(image, self.elastic)
        if self.thickness and torch.rand(()) < self.thickness:
            image = change_thickness(image, thicker=bool(torch.rand(()) < 0.5))
        return image


def elastic_warp(image: torch.Tensor, pixels: float, cell: int = 8) -> torch.Tensor:
    """(C, H, W) uint8 displaced by a random field smooth over `cell`-pixel cells, about
    `pixels` pixels at its strongest. The field is drawn on the coarse grid and upsampled,
    ~20x cheaper than torchvision's ElasticTransform, which blurs full-size noise."""
    _, height, width = image.shape
    coarse = torch.randn(1, 2, max(2, height // cell), max(2, width // cell)) * (pixels / 2)
    shift = nn.functional.interpolate(coarse, size=(height, width), mode="bicubic",
                                      align_corners=True)[0]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    # grid_sample wants where to read each output pixel from, in [-1, 1] coordinates.
    grid = torch.stack([(xs + shift[0]) * 2 / max(1, width - 1) - 1,
                        (ys + shift[1]) * 2 / max(1, height - 1) - 1], dim=-1)
    warped = nn.functional.grid_sample(image[None].float(), grid[None], mode="bilinear",
                                       padding_mode="border", align_corners=True)[0]
    return warped.round().clamp(0, 255).to(torch.uint8)


def change_thickness(image: torch.Tensor, thicker: bool) -> torch.Tensor:
    """(C, H, W) uint8 with bright strokes a pixel thicker (a 2x2 maximum filter) or
    thinner (minimum); dark strokes on a light ground the other way round."""
    x = nn.functional.pad(image[None].float(), (0, 1, 0, 1), mode="replicate")
    sign = 1.0 if thicker else -1.0
    return (sign * nn.functional.max_pool2d(sign * x, 2, stride=1))[0].to(torch.uint8)


class ImagePatches(nn.Module):
    """(B, C, H, W) uint8 -> (B, cols*rows, d_model) patch embeddings with 2-D positions.

    The embeddings are layer-normalised: unit scale per channel like scaled token
    embeddings. Unnormalised (~0.06 per channel) the content drowned in the body's position
    signal, and the model learned to ignore the image: on 64 single MNIST digits it never
    got below the prior's loss, where with the norm it memorised them in 60 steps."""

    def __init__(self, channels: int, patch_size: tuple[int, int], d_model: int, rows: int,
                 columns: int, stem_channels: int = 0, stem_layers: int = 2):
        super().__init__()
        self.patch_height, self.patch_width = patch_size
        self.stem = nn.ModuleList()
        if stem_channels:  # full resolution, then half: the patch embedding reads half-size
            self.stem.append(nn.Conv2d(channels, stem_channels, 3, padding=1))
            self.stem.append(nn.Conv2d(stem_channels, stem_channels, 3, stride=2, padding=1))
            for _ in range(stem_layers - 2):
                self.stem.append(nn.Conv2d(stem_channels, stem_channels, 3, padding=1))
            channels, patch_size = stem_channels, (patch_size[0] // 2, patch_size[1] // 2)
        self.project = nn.Conv2d(channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(d_model)
        self.row = nn.Parameter(torch.randn(rows, d_model) * 0.02)
        self.column = nn.Parameter(torch.randn(columns, d_model) * 0.02)

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor):
        x = images.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1], on the device
        if len(self.stem):
            # Zero the batch's padding columns before and after every convolution, as the
            # convolution's own zero padding does at an image's edge: an image gets the same
            # embeddings alone and beside wider ones.
            rows = x.shape[2] // self.patch_height  # the mask is column by column
            valid = (~pad_mask[:, ::rows]).repeat_interleave(self.patch_width, dim=1)
            valid = valid[:, None, None, :].to(x.dtype)  # (B, 1, 1, W) pixel columns
            x = x * valid
            for conv in self.stem:
                valid = valid[..., :: conv.stride[1]]
                x = nn.functional.gelu(conv(x)) * valid
        x = self.norm(self.project(x).permute(0, 3, 2, 1))  # (B, cols, rows, C)
        cols, rows = x.shape[1], x.shape[2]
        x = x + self.row[:rows][None, None] + self.column[:cols][None, :, None]
        return x.flatten(1, 2), pad_mask  # (B, cols*rows, C), (B, cols*rows)
