"""No inputs: the modality of problems that only have targets (language modelling, drawing
without a prompt). The encoder then reads the problem token alone, and the decoder is a
language model of the targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from t2t.errors import UserError
from t2t.modality import Modality


class NoInputs(Modality):
    kind = "none"
    may_be_empty = True  # every sample's inputs are empty, and kept

    @property
    def key(self) -> str:
        return "none"

    def encode(self, raw: Any) -> bytes:
        if raw not in (None, ""):
            raise UserError(f"this problem takes no inputs, got {str(raw)[:60]!r}")
        return b""

    def load(self, data: bytes, augment: None = None) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)

    def length(self, data: bytes) -> int:
        return 0

    def bottom(self, d_model: int) -> nn.Module:
        return Nothing(d_model)


class Nothing(nn.Module):
    """(B, 0) -> (B, 0, d_model): no positions to embed."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, inputs: torch.Tensor, pad_mask: torch.Tensor | None = None):
        empty = inputs.new_zeros(inputs.shape[0], 0, self.d_model, dtype=torch.float32)
        return empty, pad_mask
