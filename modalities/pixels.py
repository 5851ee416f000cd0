"""Small grey images as targets: each pixel quantised to one of `levels` grey levels and
written as a token (the Image Transformer's discrete pixels), column after column, top to
bottom. Columns rather than rows: a strip of any width is then a sequence of whole columns
that EOS ends, so the model need not know the width before it draws."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modalities.image import _pil_image
from modalities.text import TextEmbedding, TiedSoftmax
from t2t.errors import UserError
from t2t.modality import Modality
from t2t.tokens import EOS, NUM_RESERVED, content_ids


class PixelModality(Modality):
    """Grey images `height` pixels high (scaled to it, keeping the aspect), at most
    `max_width` wide, as `levels` grey levels a pixel."""

    kind = "pixels"
    extension = "pix"
    output_suffix = ".png"  # t2t-decode writes each drawing (t2t.modality.SavesPredictions)
    length_limited = False  # height x max_width at most: encode refuses wider ones

    def __init__(self, height: int = 28, levels: int = 16, max_width: int = 168):
        if height < 1 or max_width < 1 or not 2 <= levels <= 256:
            raise UserError(f"PixelModality height={height}, levels={levels}, max_width="
                            f"{max_width}: use a height and width of 1 or more and 2 to 256 "
                            f"levels")
        self.height, self.levels, self.max_width = height, levels, max_width
        self.longest_target = height * max_width

    @property
    def key(self) -> str:
        return f"pixels:h{self.height}:l{self.levels}"

    @property
    def vocab_size(self) -> int:
        return NUM_RESERVED + self.levels

    def describe(self) -> str:
        return f"pixels({self.height}px, {self.levels} levels)"

    def encode(self, raw: Any) -> bytes:
        image = _pil_image(raw).convert("L")
        if image.height != self.height:
            width = max(1, round(image.width * self.height / image.height))
            image = image.resize((width, self.height))
        if image.width > self.max_width:
            raise UserError(f"an image target {image.width} pixels wide at height "
                            f"{self.height}; this problem draws at most {self.max_width} "
                            f"(max_width): crop it, or raise max_width")
        levels = np.asarray(image, dtype=np.int64) * self.levels // 256  # (H, W) 0..levels-1
        return levels.T.astype(np.uint8).tobytes()  # column after column

    def load(self, data: bytes, augment: None = None) -> torch.Tensor:
        values = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        return values + NUM_RESERVED

    def length(self, data: bytes) -> int:
        return len(data)

    def decode(self, ids: Any) -> np.ndarray:
        """Ids -> a (height, W) uint8 grey image: up to the first EOS, PAD and BOS skipped;
        a last column cut short is filled with black."""
        levels = [min(max(i - NUM_RESERVED, 0), self.levels - 1) for i in content_ids(ids)]
        columns = -(-len(levels) // self.height)
        grid = np.zeros(columns * self.height, dtype=np.int64)
        grid[:len(levels)] = levels
        pixels = grid.reshape(columns, self.height).T * 255 // (self.levels - 1)
        return pixels.astype(np.uint8)

    def save(self, value: np.ndarray, path: Path) -> None:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        if value.shape[1] == 0:  # nothing drawn (EOS first): a file has one column at least
            value = np.zeros((self.height, 1), dtype=np.uint8)
        Image.fromarray(value).save(path)  # (H, W) uint8: grey

    def output_constraint(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Pixels only, the end only after a whole column, and nothing after max_width columns
        (t2t.modality.ConstrainsOutput): a model that may end anywhere ends a sampled picture
        early by chance, the small end probabilities of hundreds of tokens adding up."""

        def allowed(prefix: torch.Tensor) -> torch.Tensor:
            rows, length = prefix.shape
            mask = torch.zeros(rows, self.vocab_size, dtype=torch.bool, device=prefix.device)
            mask[:, NUM_RESERVED:] = length < self.longest_target  # then max_width is full
            mask[:, EOS] = length > 0 and length % self.height == 0
            return mask

        return allowed

    def bottom(self, d_model: int) -> nn.Module:
        return TextEmbedding(self.vocab_size, d_model)

    def top(self, d_model: int, bottom: nn.Module) -> nn.Module:
        return TiedSoftmax(bottom.embedding)
