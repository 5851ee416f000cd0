"""A trained model as two `torch.export` programs per problem, to run without t2t's model code:
the encoder, and one decoder step with its cache passed in and out.

    encoder(inputs, inputs_pad) -> (cross_k, cross_v, memory_mask)
        inputs, inputs_pad: a collated batch, as the problem's input modality collates it;
        cross_k, cross_v (L, B, H, S, Dh): each decoder layer's keys and values of the
        encoded inputs; memory_mask (B, 1, 1, S) bool, True where the decoder may attend.
    step(tokens, position, self_k, self_v, cross_k, cross_v, memory_mask)
            -> (logits, self_k, self_v)
        tokens (B,) long: the token emitted at the previous position (read from position 1
        on; position 0 starts from the problem's BOS); position: a () long tensor;
        self_k, self_v (L, B, H, T, Dh): the decoder's cache for T positions, returned with
        this position's keys and values written; logits (B, V) of the next token.

`ExportedDecoder` runs the two with `t2t.decoding`'s greedy and beam search, as t2t-decode
runs the eager model. The step attends over the whole cache with a mask instead of over the
filled part, so that every shape in it is known before it runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ENCODER, STEP = "encoder.pt2", "step.pt2"


class Encoder(nn.Module):
    def __init__(self, model: Any, problem: int):
        super().__init__()
        self.model, self.problem = model, problem

    def forward(self, inputs: Tensor, inputs_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory, memory_pad = self.model.encode(self.problem, inputs, inputs_pad)
        keys, values = zip(*(layer.cross_attn.project_memory(memory)
                             for layer in self.model.body.decoder), strict=True)
        return torch.stack(keys), torch.stack(values), ~memory_pad[:, None, None, :]


class Step(nn.Module):
    def __init__(self, model: Any, problem: int):
        super().__init__()
        self.body, self.problem = model.body, problem
        target_key = model.keys[problem][1]
        self.bottom, self.top = model.bottoms[target_key], model.tops[target_key]

    def forward(self, tokens: Tensor, position: Tensor, self_k: Tensor, self_v: Tensor,
                cross_k: Tensor, cross_v: Tensor, memory_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        body = self.body
        embedded, _ = self.bottom(tokens[:, None])  # (B, 1, C)
        bos = body.bos(torch.full_like(tokens, self.problem))[:, None, :]
        x = torch.where(position == 0, bos, embedded)
        x = x + body.positions.index_select(0, position.reshape(1)).to(x.dtype)
        seen = (torch.arange(self_k.size(3), device=x.device) <= position)[None, None, None]
        new_k, new_v = [], []
        for i, layer in enumerate(body.decoder):
            q, k, v = layer.self_attn.project(layer.norm1(x))  # (B, H, 1, Dh) each
            keys = self_k[i].index_copy(2, position.reshape(1), k)
            values = self_v[i].index_copy(2, position.reshape(1), v)
            attended = nn.functional.scaled_dot_product_attention(q, keys, values,
                                                                  attn_mask=seen)
            x = x + layer.self_attn.out(attended.transpose(1, 2).flatten(2))
            x = x + layer.cross_attn(layer.norm2(x), cross_k[i], cross_v[i],
                                     attn_mask=memory_mask)
            x = x + layer.ff(layer.norm3(x))
            new_k.append(keys)
            new_v.append(values)
        return self.top(body.decoder_norm(x)[:, 0]), torch.stack(new_k), torch.stack(new_v)


def export_problem(model: Any, problem: Any, index: int, example: list[Any],
                   max_length: int = 256) -> tuple[Any, Any]:
    """(encoder program, step program) of the model's problem `index`; `example` is a few
    loaded inputs of it (values of different lengths, so that lengths stay free)."""
    from torch.export import Dim, export

    model = model.eval()
    inputs, inputs_pad = problem.inputs.collate(example)
    # Which sizes may vary is the modality's business (a sentence's length, an image's width,
    # a recording's samples): AUTO lets export find them, and keep the others fixed.
    in_shapes = tuple({d: Dim.AUTO for d in range(t.dim())} for t in (inputs, inputs_pad))
    with torch.no_grad():
        encoder = export(Encoder(model, index), (inputs, inputs_pad), dynamic_shapes=in_shapes)
        cross_k, cross_v, memory_mask = encoder.module()(inputs, inputs_pad)
        c = model.config
        L, B, H = len(model.body.decoder), inputs.size(0), c.num_heads
        cache = torch.zeros(L, B, H, max_length + 1, c.d_model // H)
        tokens, position = torch.zeros(B, dtype=torch.long), torch.tensor(0)
        # The encoded length is free, or fixed where the encoder sees no inputs (a language
        # model: the problem token alone): AUTO finds which.
        batch, memory, steps = Dim("batch"), Dim.AUTO, Dim("steps")
        step = export(Step(model, index),
                      (tokens, position, cache, cache.clone(), cross_k, cross_v, memory_mask),
                      dynamic_shapes=({0: batch}, None, {1: batch, 3: steps},
                                      {1: batch, 3: steps}, {1: batch, 3: memory},
                                      {1: batch, 3: memory}, {0: batch, 3: memory}))
    return encoder, step


def save(folder: Path, encoder: Any, step: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # A tied embedding and softmax share one tensor: the archive stores it once and warns
        # about weights off the CPU, which these are not (export runs on the CPU).
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(encoder, folder / ENCODER)
        torch.export.save(step, folder / STEP)


class ExportedDecoder:
    """`t2t.decoding.IncrementalDecoder` over the exported programs: state = the cache."""

    def __init__(self, encoder: Any, step: Any):
        self.encoder, self.step_program = encoder.module(), step.module()

    @classmethod
    def load(cls, folder: Path) -> ExportedDecoder:
        return cls(torch.export.load(folder / ENCODER), torch.export.load(folder / STEP))

    def start(self, inputs: Tensor, inputs_pad: Tensor, max_length: int) -> dict[str, Any]:
        cross_k, cross_v, memory_mask = self.encoder(inputs, inputs_pad)
        L, B, H, _, Dh = cross_k.shape
        cache = cross_k.new_zeros(L, B, H, max_length + 1, Dh)
        return {"self_k": cache, "self_v": cache.clone(), "cross_k": cross_k,
                "cross_v": cross_v, "memory_mask": memory_mask, "position": 0}

    def step(self, tokens: Tensor | None, state: dict[str, Any]) -> tuple[Tensor, dict]:
        rows = state["self_k"].size(1)
        if tokens is None:
            tokens = torch.zeros(rows, dtype=torch.long, device=state["self_k"].device)
        logits, state["self_k"], state["self_v"] = self.step_program(
            tokens, torch.tensor(state["position"]), state["self_k"], state["self_v"],
            state["cross_k"], state["cross_v"], state["memory_mask"])
        state["position"] += 1
        return logits, state

    def reorder(self, state: dict[str, Any], index: Tensor) -> dict[str, Any]:
        """Beam search: keep, or repeat, decoder rows (each with its own memory row here)."""
        state["self_k"] = state["self_k"].index_select(1, index)
        state["self_v"] = state["self_v"].index_select(1, index)
        for key in ("cross_k", "cross_v"):
            state[key] = state[key].index_select(1, index)
        state["memory_mask"] = state["memory_mask"].index_select(0, index)
        return state
