"""RNA: secondary structures (dot-bracket) as inputs, nucleotide sequences as targets.

A structure input is a dot-bracket string, optionally with a per-position sequence constraint
in IUPAC letters (N = any base; A, C, G, U locked; R, Y, S, W, K, M, B, D, H, V sets), given
as `"((((....)))) NNNNGAAANNNN"` (space-separated) or `{"structure": ..., "constraint": ...}`.
Stored as int8 rows (structure symbol, constraint letter, partner index + 1). The bottom adds
to each position's symbol and constraint embeddings its pairing partner: the partner's own
sinusoidal position (the signal the body adds there, so attention can find it; the body
hands it over, see `StructureEmbedding`) and the partner's signed distance, bucketed. The
body is unchanged.

A sequence target is A, C, G, U (T is read as U) after the reserved ids (t2t.tokens).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from modalities.text import TextEmbedding, TiedSoftmax
from t2t.errors import UserError
from t2t.modality import Modality
from t2t.tokens import EOS, NUM_RESERVED, content_ids

STRUCTURE = "(.)"
BASES = "ACGU"
IUPAC = {"A": "A", "C": "C", "G": "G", "U": "U", "T": "U", "N": "ACGU", "R": "AG", "Y": "CU",
         "S": "CG", "W": "AU", "K": "GU", "M": "AC", "B": "CGU", "D": "AGU", "H": "ACU",
         "V": "ACG"}
CONSTRAINT_LETTERS = "NACGURYSWKMBDHV"  # stored ids: 1 + index (0 = padding)
# Watson-Crick and wobble pairs: what may stand opposite each base in a helix.
PAIRS = {"A": "U", "C": "G", "G": "CU", "U": "AG"}
BASE_IDS = {base: NUM_RESERVED + i for i, base in enumerate(BASES)}  # A=4 C=5 G=6 U=7


def pair_table(structure: str, max_length: int | None = None) -> list[int]:
    """partner[i] = j for a pair (i, j), -1 unpaired; a clear error naming the position of any
    character that is not ( . ), of a ')' that closes nothing and of a '(' never closed."""
    if not isinstance(structure, str) or not structure:
        raise UserError("an RNA structure must be a non-empty dot-bracket string, e.g. "
                        "'((((....))))'")
    if max_length is not None and len(structure) > max_length:
        raise UserError(f"structure of length {len(structure)} is longer than the "
                        f"{max_length} this modality takes (max_length)")
    partner, stack = [-1] * len(structure), []
    for i, symbol in enumerate(structure):
        if symbol == "(":
            stack.append(i)
        elif symbol == ")":
            if not stack:
                raise UserError(f"structure position {i + 1}: ')' closes no '(' in "
                                f"{_excerpt(structure, i)}")
            j = stack.pop()
            partner[i], partner[j] = j, i
        elif symbol != ".":
            raise UserError(f"structure position {i + 1}: {symbol!r} is not one of ( . ) in "
                            f"{_excerpt(structure, i)} (pseudoknots are not supported)")
    if stack:
        raise UserError(f"structure position {stack[-1] + 1}: '(' is never closed in "
                        f"{_excerpt(structure, stack[-1])}")
    return partner


def _excerpt(text: str, i: int) -> str:
    return repr(text[max(0, i - 10): i]) + " >" + repr(text[i]) + "< " + repr(text[i + 1: i + 11])


def parse_design_input(raw: Any, max_length: int | None = None) -> tuple[str, str]:
    """(structure, constraint) from a string `"STRUCTURE [CONSTRAINT]"` or a dict; the
    constraint defaults to all N and is checked against the structure's pairs."""
    if isinstance(raw, dict):
        structure, constraint = raw.get("structure"), raw.get("constraint")
    elif isinstance(raw, str):
        structure, _, constraint = raw.strip().partition(" ")
        constraint = constraint.strip() or None
    else:
        raise UserError(f"an RNA design input is a dot-bracket string, got {type(raw).__name__}")
    partner = pair_table(structure, max_length)
    constraint = (constraint or "N" * len(structure)).upper()
    if len(constraint) != len(structure):
        raise UserError(f"constraint has length {len(constraint)}, the structure "
                        f"{len(structure)}; give one IUPAC letter per position")
    for i, letter in enumerate(constraint):
        if letter not in IUPAC:
            raise UserError(f"constraint position {i + 1}: {letter!r} is not an IUPAC "
                            f"nucleotide letter ({''.join(IUPAC)})")
        j = partner[i]
        if j > i and not pairable(IUPAC[letter], IUPAC[constraint[j]]):
            raise UserError(f"constraint positions {i + 1} and {j + 1} pair in the structure "
                            f"but {letter} and {constraint[j]} cannot form a base pair")
    return structure, constraint.replace("T", "U")


def pairable(left: str, right: str) -> bool:
    return any(b in PAIRS[a] for a in left for b in right)


class StructureModality(Modality):
    """The structures to design for (a problem's inputs): dot-bracket, with optional sequence
    constraints."""

    kind = "rna_structure"
    extension = "struct"
    length_limited = False  # max_length is checked by encode itself

    def __init__(self, max_length: int = 512):
        self.max_length = max_length

    @property
    def key(self) -> str:
        return f"rna_structure:{self.max_length}"

    def describe(self) -> str:
        return "rna structure"

    def encode(self, raw: Any) -> bytes:
        structure, constraint = parse_design_input(raw, self.max_length)
        partner = pair_table(structure)
        rows = np.array([[STRUCTURE.index(s) + 1 for s in structure],
                         [CONSTRAINT_LETTERS.index(c) + 1 for c in constraint],
                         [j + 1 for j in partner]], dtype=np.int16)
        return rows.T.astype("<i2").tobytes()

    def load(self, data: bytes, augment: None = None) -> torch.Tensor:
        """(L, 3) long: structure symbol id, constraint letter id, partner index + 1 (0: none)."""
        rows = np.frombuffer(data, dtype="<i2").reshape(-1, 3)
        return torch.from_numpy(rows.astype(np.int64))

    def length(self, data: bytes) -> int:
        return len(data) // 6

    def decode(self, loaded: torch.Tensor) -> str:
        """Loaded (L, 3) rows (padding dropped) -> the raw input again: "STRUCTURE", or
        "STRUCTURE CONSTRAINT" when some position is constrained (for verifiers and logs)."""
        rows = loaded[loaded[:, 0] > 0].tolist()
        structure = "".join(STRUCTURE[s - 1] for s, _, _ in rows)
        constraint = "".join(CONSTRAINT_LETTERS[c - 1] for _, c, _ in rows)
        return structure if set(constraint) <= {"N"} else f"{structure} {constraint}"

    def bottom(self, d_model: int) -> nn.Module:
        return StructureEmbedding(d_model)


class StructureEmbedding(nn.Module):
    """(B, L, 3) structure rows -> (B, L, d_model): symbol + constraint + partner knowledge.

    It takes positions (t2t.model.T2TModel's contract): `forward(rows, pad_mask, positions)`
    gets the body's position signal `positions` (L, d_model), row i the signal the encoder adds
    to input i, and adds a projection of each partner's row to its position."""

    takes_positions = True

    def __init__(self, d_model: int, offset_buckets: int = 32):
        super().__init__()
        self.symbol = nn.Embedding(len(STRUCTURE) + 1, d_model, padding_idx=0)
        self.constraint = nn.Embedding(len(CONSTRAINT_LETTERS) + 1, d_model, padding_idx=0)
        self.offset = nn.Embedding(2 * offset_buckets + 1, d_model)
        self.partner_position = nn.Linear(d_model, d_model, bias=False)
        self.offset_buckets = offset_buckets
        for table in (self.symbol, self.constraint, self.offset):
            nn.init.normal_(table.weight, std=1.0)  # unit scale, like the text embeddings

    def forward(self, rows: torch.Tensor, pad_mask: torch.Tensor, positions: torch.Tensor):
        symbol, constraint, partner = rows.unbind(-1)  # (B, L) each
        paired = partner > 0
        index = torch.arange(rows.shape[1], device=rows.device)
        offset = torch.where(paired, partner - 1 - index[None, :], 0)  # (B, L) j - i
        x = self.symbol(symbol) + self.constraint(constraint)
        x = x + self.offset(self._bucket(offset)) * paired[..., None]
        partner_signal = positions[(partner - 1).clamp(min=0)]  # (B, L, C)
        x = x + self.partner_position(partner_signal) * paired[..., None]
        return x, pad_mask

    def _bucket(self, offset: torch.Tensor) -> torch.Tensor:
        # Signed log buckets: exact up to 8, then logarithmic, like T5's relative positions.
        n = self.offset_buckets
        size = offset.abs().float().clamp(min=1)
        log_bucket = 8 + (torch.log(size / 8) / math.log(512 / 8) * (n - 8)).long()
        bucket = torch.where(size <= 8, size.long(), log_bucket.clamp(max=n))
        return n + offset.sign() * bucket


class NucleotideModality(Modality):
    """RNA sequences over A, C, G, U (targets); ids A=4, C=5, G=6, U=7 after the reserved."""

    kind = "rna_sequence"
    extension = "ids"
    length_limited = False  # as long as its structure

    @property
    def key(self) -> str:
        return "rna_sequence:ACGU"

    @property
    def vocab_size(self) -> int:
        return NUM_RESERVED + len(BASES)

    def describe(self) -> str:
        return "rna sequence"

    def encode(self, raw: str) -> bytes:
        sequence = raw.upper().replace("T", "U")
        bad = next((i for i, b in enumerate(sequence) if b not in BASES), None)
        if bad is not None:
            raise UserError(f"sequence position {bad + 1}: {raw[bad]!r} is not A, C, G, U or T")
        return np.array([BASE_IDS[b] for b in sequence], dtype=np.uint8).tobytes()

    def load(self, data: bytes, augment: None = None) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))

    def length(self, data: bytes) -> int:
        return len(data)

    def decode(self, ids: Any) -> str:
        return "".join(BASES[i - NUM_RESERVED] for i in content_ids(ids)
                       if NUM_RESERVED <= i < self.vocab_size)

    def bottom(self, d_model: int) -> nn.Module:
        return TextEmbedding(self.vocab_size, d_model)

    def top(self, d_model: int, bottom: nn.Module) -> nn.Module:
        return TiedSoftmax(bottom.embedding)


# -- decoding constraint ---------------------------------------------------------------------


def _base_masks(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(letters, V) allowed tokens per constraint letter id, and (V, V) tokens that may pair
    with each token (PAD and non-bases pair with anything: rows not being decoded)."""
    letters = torch.zeros(len(CONSTRAINT_LETTERS) + 1, vocab_size, dtype=torch.bool)
    letters[0, list(BASE_IDS.values())] = True
    for k, letter in enumerate(CONSTRAINT_LETTERS, start=1):
        letters[k, [BASE_IDS[b] for b in IUPAC[letter]]] = True
    partners = torch.ones(vocab_size, vocab_size, dtype=torch.bool)
    for base, opposite in PAIRS.items():
        partners[BASE_IDS[base]] = False
        partners[BASE_IDS[base], [BASE_IDS[b] for b in opposite]] = True
    return letters, partners


class PairingConstraint:
    """`allowed(prefix)` for decoding sequences for a batch of structures (t2t.decoding):
    position t may take the bases its constraint letter allows that can still pair with its
    partner's (the decoded base when the partner came first, else the partner's letter); EOS
    comes exactly at the structure's length."""

    def __init__(self, rows: torch.Tensor, vocab_size: int):
        letters, partners = _base_masks(vocab_size)
        symbol, constraint, partner = rows.cpu().unbind(-1)  # (B, L)
        self.lengths = (symbol > 0).sum(dim=1)  # (B,)
        self.partner = partner - 1  # (B, L), -1: unpaired or padding
        allowed = letters[constraint]  # (B, L, V)
        # A base is only worth placing if some base its partner may take pairs with it.
        opposite = allowed.gather(1, self.partner.clamp(min=0)[..., None].expand_as(allowed))
        pairs_with_opposite = (opposite[..., None, :] & partners[None, None]).any(-1)
        self.allowed = torch.where((self.partner >= 0)[..., None],
                                   allowed & pairs_with_opposite, allowed)
        self.partners = partners

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        rows, t = prefix.shape
        batch = len(self.lengths)
        which = torch.arange(rows) // (rows // batch)  # beams and copies follow their row
        V = self.partners.shape[0]
        length = self.lengths[which]
        mask = torch.zeros(rows, V, dtype=torch.bool)
        inside = t < length
        if t < self.allowed.shape[1]:
            mask[inside] = self.allowed[which, t][inside]
            partner = self.partner[which, t]
            decoded = inside & (partner >= 0) & (partner < t)
            if bool(decoded.any()):
                opposite = prefix.cpu()[decoded, partner[decoded]]
                mask[decoded] &= self.partners[opposite]
        mask[~inside, EOS] = True
        return mask.to(prefix.device)
