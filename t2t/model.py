"""The shared Transformer body: a pre-norm encoder-decoder that every problem runs through.

Read top to bottom: config -> position encodings -> attention -> layers -> KV cache ->
`Transformer`. Token embeddings (bottoms) and output projections (tops) live in the
modalities; this body sees and returns `(B, T, C)` hidden states only. Two small pieces
tell it which problem it is solving: a learned problem token prepended to the encoder
input, and a learned per-problem BOS vector as the decoder's first input. The body owns the
position signal (and where each input sits, behind the problem token): an input bottom that
needs it declares `takes_positions = True` and is handed it (`T2TModel`), rather than
rebuilding it.

Shapes: B batch, S source length, T target length, C d_model, H heads, Dh = C // H.
Masks follow two conventions: `pad_mask` arguments are True at padding (like the data
pipeline), masks handed to SDPA are True where attention is allowed (like SDPA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2t.modality import call_with_settings

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
RECURRENCES = ("none", "shared", "act")


@dataclass
class ModelConfig:
    d_model: int = 512  # width of every hidden state (C)
    num_heads: int = 8  # attention heads; d_model must divide evenly
    num_encoder_layers: int = 6  # encoder depth
    num_decoder_layers: int = 6  # decoder depth
    d_ff: int = 2048  # hidden width of the feed-forward block
    dropout: float = 0.1  # on embeddings + positions and on every residual branch
    attention_dropout: float = 0.0  # on attention probabilities (training only)
    max_positions: int = 4096  # longest sequence the position table covers (incl. extra token)
    norm_eps: float = 1e-6  # LayerNorm epsilon (tensor2tensor used 1e-6)
    activation: str = "gelu"  # feed-forward nonlinearity: "gelu" or "relu"
    # How depth is spent. "none": num_*_layers distinct layers. "shared": one layer per side,
    # applied num_*_layers times with a step signal (a Universal Transformer, Dehghani et al.
    # 2018). "act": that shared layer applied up to num_*_layers times, each position
    # halting on its own by adaptive computation time (Graves 2016).
    recurrence: str = "none"
    halt_threshold: float = 0.99  # act: a position halts once its halting probabilities pass it
    # Modality kind -> keyword arguments of its bottoms (an image stem, say): see each
    # modality's `bottom`.
    bottoms: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain dicts (from Hydra's DictConfig too): a checkpoint stores them.
        self.bottoms = {str(kind): dict(settings) for kind, settings in self.bottoms.items()}
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.recurrence not in RECURRENCES:
            raise ValueError(f"recurrence={self.recurrence!r}: use one of "
                             f"{', '.join(RECURRENCES)}")
        if not 0 < self.halt_threshold <= 1:
            raise ValueError(f"halt_threshold={self.halt_threshold}: use a number above 0, "
                             f"at most 1")


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                        d_ff=256, dropout=0.0),
    # The quickstart's: tiny learns Morse too slowly for the quickstart's minutes.
    "mini": ModelConfig(d_model=128, num_heads=4, num_encoder_layers=3, num_decoder_layers=3,
                        d_ff=512, dropout=0.0),
    "small": ModelConfig(d_model=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3,
                         d_ff=1024, dropout=0.1),
    "base": ModelConfig(),
    "big": ModelConfig(d_model=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
                       d_ff=4096, dropout=0.3),
}


def timing_signal(length: int, channels: int, min_timescale: float = 1.0,
                  max_timescale: float = 1.0e4) -> Tensor:
    """Sinusoidal position table (length, channels), as tensor2tensor's get_timing_signal_1d."""
    # First half of the channels are sines, second half cosines, over geometrically
    # spaced timescales; unlike the interleaved variant of the paper, but what t2t shipped.
    num_timescales = channels // 2
    log_increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
    inv_timescales = min_timescale * torch.exp(torch.arange(num_timescales) * -log_increment)
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]  # (L, C/2)
    signal = torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)
    return F.pad(signal, (0, channels % 2))  # (L, C); a zero column when C is odd


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    B, T, C = x.shape
    return x.view(B, T, num_heads, C // num_heads).transpose(1, 2)  # (B, H, T, Dh)


def merge_heads(x: Tensor) -> Tensor:
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, C)


class Dropout(nn.Dropout):
    """nn.Dropout, with a cheaper mask on CPU: 16-bit random draws, four from each 64-bit
    random integer, compared with a threshold (the rate is exact to 1/65536). PyTorch's CPU
    dropout draws one Bernoulli sample per element, 7% of a CPU training step of `small`;
    this mask costs under half as much. Elsewhere (CUDA's fused dropout), nn.Dropout as is."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        n = x.numel()
        draws = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * (keep * (1 / (1 - self.p))).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # fused: one matmul instead of three
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        H = self.num_heads
        return split_heads(q, H), split_heads(k, H), split_heads(v, H)  # (B, H, T, Dh) each

    def store(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, start: int
              ) -> tuple[Tensor, Tensor, Tensor]:
        # Project x (B, T, C) and write its K/V at positions start..start+T-1 of the cache.
        q, k, v = self.project(x)  # (B, H, T, Dh) each
        k_cache[:, :, start:start + x.size(1)] = k
        v_cache[:, :, start:start + x.size(1)] = v
        return q, k, v

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                cache: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # x (B, T, C). With a cache, the new K/V are written at the start of it (prefill).
        q, k, v = self.project(x) if cache is None else self.store(x, *cache, 0)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p,
                                           is_causal=is_causal)
        return self.out(merge_heads(y))  # (B, T, C)

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int) -> Tensor:
        # x (B, 1, C) at position `pos`: store its K/V, attend over positions 0..pos.
        # No mask needed: everything already in the cache is in the past.
        q, _, _ = self.store(x, k_cache, v_cache, pos)  # (B, H, 1, Dh)
        y = F.scaled_dot_product_attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1])
        return self.out(merge_heads(y))  # (B, 1, C)


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)  # separate, so memory K/V are computed once
        self.out = nn.Linear(d_model, d_model)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)  # (B, S, C) each
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)  # (B, H, S, Dh)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
        # x (N, T, C); k, v (M, H, S, Dh), attn_mask (M, 1, 1, S), with N a multiple of M:
        # G = N // M consecutive rows (the beams of one sentence) read one memory row, whose
        # K/V are then stored and read once instead of copied for every beam.
        q = split_heads(self.q(x), self.num_heads)  # (N, H, T, Dh)
        N, H, T, Dh = q.shape
        G = N // k.size(0)
        q = q.view(-1, G, H, T, Dh).transpose(1, 2).reshape(-1, H, G * T, Dh)  # (M, H, G*T, Dh)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.view(-1, H, G, T, Dh).transpose(1, 2).reshape(N, H, T, Dh)
        return self.out(merge_heads(y))  # (N, T, C)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.activation(self.up(x)))


def positions_at(active: Tensor, x: Tensor) -> Tensor:
    """(B, T) bool, True at `active` (flat indices into x's B * T positions)."""
    flat = torch.zeros(x.size(0) * x.size(1), dtype=torch.bool, device=x.device)
    return flat.index_fill(0, active, True).view(x.shape[:2])


def add_at_active(x: Tensor, f, active: Tensor | None) -> Tensor:
    """x + f(x) for a position-wise f, computed only at `active` (flat indices into the B*T
    positions; None: all). Padding positions keep x unchanged: nothing reads them (attention
    masks them, the loss skips them), so the feed-forward block need not spend FLOPs there."""
    if active is None:
        return x + f(x)
    flat = x.flatten(0, 1)
    # Under autocast f returns bf16/fp16 while the residual stream stays fp32; index_add,
    # unlike +, does not promote.
    return flat.index_add(0, active, f(flat.index_select(0, active)).to(flat.dtype)).view_as(x)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.attn = SelfAttention(c.d_model, c.num_heads, c.attention_dropout)
        self.norm2 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.ff = FeedForward(c.d_model, c.d_ff, c.activation)
        self.drop = Dropout(c.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, active: Tensor | None = None) -> Tensor:
        # Pre-norm: the residual stream is never normalised, which keeps deep stacks stable
        # without learning-rate warmup tricks; the stack's final LayerNorm cleans up.
        x = x + self.drop(self.attn(self.norm1(x), attn_mask=attn_mask))
        return add_at_active(x, lambda h: self.drop(self.ff(self.norm2(h))), active)  # (B, S, C)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.self_attn = SelfAttention(c.d_model, c.num_heads, c.attention_dropout)
        self.norm2 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.cross_attn = CrossAttention(c.d_model, c.num_heads, c.attention_dropout)
        self.norm3 = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.ff = FeedForward(c.d_model, c.d_ff, c.activation)
        self.drop = Dropout(c.dropout)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor,
                cache: tuple[Tensor, Tensor] | None = None, active: Tensor | None = None,
                self_mask: Tensor | None = None) -> Tensor:
        # Teacher forcing over all T positions at once; is_causal lets SDPA pick fused kernels.
        # Packed rows bring their own causal mask, which also keeps segments apart.
        x = x + self.drop(self.self_attn(self.norm1(x), attn_mask=self_mask,
                                         is_causal=self_mask is None, cache=cache))
        x = x + self.drop(self.cross_attn(self.norm2(x), *memory_kv, attn_mask=memory_mask))
        return add_at_active(x, lambda h: self.drop(self.ff(self.norm3(h))), active)  # (B, T, C)

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int,
             memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor) -> Tensor:
        x = x + self.drop(self.self_attn.step(self.norm1(x), k_cache, v_cache, pos))
        x = x + self.drop(self.cross_attn(self.norm2(x), *memory_kv, attn_mask=memory_mask))
        x = x + self.drop(self.ff(self.norm3(x)))
        return x  # (B, 1, C)


@dataclass
class KVCache:
    """Decoder state for incremental decoding: self-attention K/V for each step of depth (each
    decoder layer, or each application of a shared one), cross-attention K/V for each layer.

    Self-attention K/V are preallocated to `max_length` and filled one position per
    `decode_step`. A reorder copies only the filled positions, into the buffers the previous
    reorder left (`spare_k`, `spare_v`): the cache is sized for decode.max_length (256 by
    default), and copying all of it, or into freshly allocated memory, every beam step made
    beam-4 decoding of Multi30k 5x slower. Cross-attention K/V are projected from the memory
    once and kept at one row per source sentence (M rows): decoder row n reads memory row
    n // group. Beam search expands each sentence to `group` consecutive beam rows and
    reorders beams only within their sentence, so the memory side is never copied.
    """

    self_k: list[Tensor]  # per step of depth (N, H, max_length, Dh)
    self_v: list[Tensor]  # per step of depth (N, H, max_length, Dh)
    cross_k: list[Tensor]  # per layer (M, H, S+1, Dh)
    cross_v: list[Tensor]  # per layer (M, H, S+1, Dh)
    memory_mask: Tensor  # (M, 1, 1, S+1) bool, True = may attend
    length: int = 0  # decoder positions already in the cache
    group: int = 1  # decoder rows per memory row: N = M * group
    # Per step, the buffer the next reorder writes into (the one the last reorder left).
    spare_k: list[Tensor | None] = field(init=False)
    spare_v: list[Tensor | None] = field(init=False)

    def __post_init__(self) -> None:
        self.spare_k = [None] * len(self.self_k)
        self.spare_v = [None] * len(self.self_v)

    @property
    def max_length(self) -> int:
        return self.self_k[0].size(2)

    @property
    def batch_size(self) -> int:
        return self.memory_mask.size(0) * self.group

    def reorder(self, index: Tensor) -> None:
        """Select decoder rows in place: `index` (N',) long; for beam expansion, reordering and
        letting finished rows go."""
        index = index.to(self.memory_mask.device)
        filled = self.length
        for caches, spares in ((self.self_k, self.spare_k), (self.self_v, self.spare_v)):
            for i, cache in enumerate(caches):
                target = spares[i]
                if target is None or target.size(0) < index.numel():
                    target = cache.new_empty(index.numel(), *cache.shape[1:])
                target = target[:index.numel()]  # fewer rows: finished ones left the batch
                torch.index_select(cache[:, :, :filled], 0, index, out=target[:, :, :filled])
                caches[i], spares[i] = target, cache
        memory_rows = index // self.group  # the memory row each new decoder row reads
        M = self.memory_mask.size(0)
        group, rest = divmod(index.numel(), M)
        # One host sync: do the new rows still read their memory rows in consecutive groups?
        if not (rest == 0 and torch.equal(
                memory_rows, torch.arange(index.numel(), device=index.device) // group)):
            for tensors in (self.cross_k, self.cross_v):
                tensors[:] = [t.index_select(0, memory_rows) for t in tensors]
            self.memory_mask = self.memory_mask.index_select(0, memory_rows)
            group = 1
        self.group = group


@dataclass
class Ponder:
    """What adaptive computation spent in one pass of the encoder or the decoder."""

    steps: Tensor  # (B, T) float: layer applications per position; 0 at padding
    real: Tensor  # (B, T) bool: the positions that count (not padding)
    # Graves' ponder cost, mean over the real positions of steps + remainder: the remainder
    # (1 - the halting probabilities before the last step) carries the gradient that teaches
    # to halt sooner.
    cost: Tensor  # () float

    @property
    def mean_steps(self) -> Tensor:
        return self.steps.sum() / self.real.sum().clamp(min=1)


class Transformer(nn.Module):
    """Encoder-decoder body shared by all problems; see the module docstring for shapes.

    With `config.recurrence` "shared" or "act", each side has one layer that is applied
    num_*_layers times (at most, for act), with the position signal and a step signal added
    before each application, as in the Universal Transformer. Step i of depth always uses
    self-attention cache slot i, so cached decoding and beam search work for every kind of
    depth. Under act each position halts on its own: from then on its state is frozen (later
    steps read it, as keys and values, but never change it), and its output is the sum of
    its states weighted by its halting probabilities. `ponder` holds what the last pass of
    each side spent.
    """

    def __init__(self, config: ModelConfig, num_problems: int = 1):
        super().__init__()
        self.config = config
        c = config
        self.problem_embedding = nn.Embedding(num_problems, c.d_model)  # prepended to the source
        self.bos = nn.Embedding(num_problems, c.d_model)  # first decoder input, per problem
        shared = c.recurrence != "none"
        self.encoder = nn.ModuleList(
            EncoderLayer(c) for _ in range(1 if shared else c.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.decoder = nn.ModuleList(
            DecoderLayer(c) for _ in range(1 if shared else c.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.drop = Dropout(c.dropout)
        # Not persistent: it is a pure function of the config, no need to save it.
        self.register_buffer("positions", timing_signal(c.max_positions, c.d_model),
                             persistent=False)
        if shared:
            steps = max(c.num_encoder_layers, c.num_decoder_layers)
            self.register_buffer("step_signal", timing_signal(steps, c.d_model),
                                 persistent=False)
        if c.recurrence == "act":  # the halting units: one probability per position and step
            # They read the normalised state: the residual stream grows from step to step.
            self.encoder_halting = nn.Sequential(nn.LayerNorm(c.d_model, eps=c.norm_eps),
                                                 nn.Linear(c.d_model, 1))
            self.decoder_halting = nn.Sequential(nn.LayerNorm(c.d_model, eps=c.norm_eps),
                                                 nn.Linear(c.d_model, 1))
        self.ponder: dict[str, Ponder] = {}
        self.apply(self._init_weights)
        # The problem token and BOS stand in for embedded tokens, which modalities scale to
        # roughly unit size per channel; at std 0.02 they would drown in the position signal.
        nn.init.normal_(self.problem_embedding.weight, std=1.0)
        nn.init.normal_(self.bos.weight, std=1.0)
        if c.recurrence == "act":
            # Halting probability sigmoid(1) = 0.73 at first: two steps a position, so that
            # training starts shallow and deepens where the loss pays for it (Graves 2016).
            for unit in (self.encoder_halting, self.decoder_halting):
                nn.init.constant_(unit[1].bias, 1.0)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        """Number of trainable parameters of the body (no bottoms or tops)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def compile_layers(self) -> None:
        """torch.compile every encoder and decoder layer in place (regional compilation):
        one compiled graph per layer, dynamic shapes for token-budget batches, the same
        state_dict keys. On an H100 it trained `base` 2.6x faster than eager
        (benchmarks/PERF_NOTES.md); compiling the whole loss failed in Inductor there."""
        for layer in [*self.encoder, *self.decoder]:
            layer.compile(dynamic=True)

    def _signal(self, start: int, end: int) -> Tensor:
        # The position signal (end - start, C) of positions start..end-1.
        if end > self.config.max_positions:
            raise ValueError(f"sequence reaches position {end}, beyond "
                             f"max_positions={self.config.max_positions}")
        return self.positions[start:end]

    def _add_positions(self, x: Tensor, start: int = 0) -> Tensor:
        # x (B, T, C) holds positions start..start+T-1.
        return self.drop(x + self._signal(start, start + x.size(1)).to(x.dtype))

    def input_positions(self, length: int) -> Tensor:
        """(length, C): row i is the position signal the encoder adds to input i (0-based),
        for input bottoms that need it (`takes_positions`, see `T2TModel`). The problem token
        is position 0, so input i sits at position i + 1. ValueError beyond max_positions."""
        return self._signal(1, 1 + length)

    def _add_positions_at(self, x: Tensor, positions: Tensor) -> Tensor:
        # x (B, T, C), positions (B, T): packed rows, whose segments each count from 0, so
        # none is beyond the row's width (checked so, not by reading them: no device sync).
        if positions.size(1) > self.config.max_positions:
            raise ValueError(f"packed rows of {positions.size(1)} positions are longer than "
                             f"max_positions={self.config.max_positions}")
        return self.drop(x + self.positions[positions].to(x.dtype))

    def _stack(self, side: str, x: Tensor, signal: Tensor, real: Tensor | None,
               active: Tensor | None, apply: Callable, keep: Callable | None = None
               ) -> Tensor:
        """Run the encoder's or decoder's depth over x (B, T, C) and return its states.

        apply(layer, step, x, active) -> x applies the side's layer `layer` (an index) as
        step `step` of depth (the self-attention cache slot), its feed-forward block only at
        `active` (flat positions, None: all). signal: the position signal of x's positions
        ((T, C) or (B, T, C)), added again before each step of a recurrent depth. The
        positions that are not padding, which act runs: `active`, or else real (B, T) bool,
        or else all.
        keep(step, x), given with a cache: store the keys and values of x at a step that
        need not run because every position has halted (later positions will read them).
        """
        c = self.config
        if c.recurrence == "none":
            for i in range(len(getattr(self, side))):
                x = apply(i, i, x, active)
            return x
        steps = getattr(c, f"num_{side}_layers")
        if c.recurrence == "shared":
            for step in range(steps):
                x = apply(0, step, x + self._step_signal(signal, step, x.dtype), active)
            return x
        return self._act(side, x, signal, real, active, steps, apply, keep)

    def _step_signal(self, signal: Tensor, step: int, dtype: torch.dtype) -> Tensor:
        return (signal + self.step_signal[step]).to(dtype)

    def _act(self, side: str, x: Tensor, signal: Tensor, real: Tensor | None,
             active: Tensor | None, steps: int, apply: Callable, keep: Callable | None
             ) -> Tensor:
        """Adaptive computation time over the shared layer (see `_stack`, `Ponder`)."""
        halting_unit = getattr(self, f"{side}_halting")
        B, T, _ = x.shape
        if active is not None:
            real = positions_at(active, x)
        elif real is None:
            real = torch.ones(B, T, dtype=torch.bool, device=x.device)
        halted = ~real  # padding never runs
        summed = torch.zeros(B, T, device=x.device)  # halting probability spent so far
        remainder = torch.zeros_like(summed)
        updates = torch.zeros_like(summed)
        state, output = x, torch.zeros_like(x)
        for step in range(steps):
            x = state + self._step_signal(signal, step, state.dtype)
            if bool(halted.all()):  # the rest would change nothing
                if keep is None:
                    break
                keep(step, x)
                continue
            running = ~halted
            p = torch.sigmoid(halting_unit(x).squeeze(-1).float())  # (B, T)
            # A position halts at the step its probabilities would pass the threshold, or at
            # the last step, with the remainder to 1 as that step's weight.
            halts = running & ((summed + p > self.config.halt_threshold) | (step == steps - 1))
            weight = torch.where(halts, 1.0 - summed, torch.where(running, p, 0.0))
            remainder = torch.where(halts, 1.0 - summed, remainder)
            summed = summed + weight
            updates = updates + running
            y = apply(0, step, x, running.flatten().nonzero().squeeze(1))
            output = output + weight.unsqueeze(-1).to(y.dtype) * y
            state = torch.where(running.unsqueeze(-1), y, state)  # halted: frozen
            halted = halted | halts
        cost = ((updates + remainder) * real).sum() / real.sum().clamp(min=1)
        self.ponder[side] = Ponder(steps=updates, real=real, cost=cost)
        return output

    def encode(self, x: Tensor, pad_mask: Tensor, problem: Tensor,
               packing: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Run the encoder over embedded inputs with the problem token in front.

        x: (B, S, C) embedded inputs; pad_mask: (B, S) bool, True = padding;
        problem: (B,) long problem ids. Returns (memory (B, S+1, C), memory_pad_mask (B, S+1)).
        Packed rows (`packing`, see t2t.datamodule.packed_rows) hold several segments, each
        starting with a BOS where the problem token goes: memory keeps their shape (B, S).
        """
        if packing is not None:
            return self._encode_packed(x, problem, packing)
        B = x.size(0)
        token = self.problem_embedding(problem)[:, None, :].to(x.dtype)  # (B, 1, C)
        x = torch.cat([token, x], dim=1)  # (B, S+1, C)
        # The problem token is never padding, so every row has a key to attend to and
        # softmax never sees an all-masked row (which would give NaN).
        pad_mask = torch.cat([pad_mask.new_zeros(B, 1), pad_mask.bool()], dim=1)  # (B, S+1)
        attn_mask = ~pad_mask[:, None, None, :]  # (B, 1, 1, S+1), True = attend
        x = self._add_positions(x)
        active = (~pad_mask).flatten().nonzero().squeeze(1)  # real positions, for add_at_active
        x = self._stack("encoder", x, self._signal(0, x.size(1)), ~pad_mask, active,
                        lambda i, step, x, active: self.encoder[i](x, attn_mask, active))
        return self.encoder_norm(x), pad_mask

    def _encode_packed(self, x: Tensor, problem: Tensor, packing: dict[str, Tensor]
                       ) -> tuple[Tensor, Tensor]:
        segments, positions = packing["inputs_segments"], packing["inputs_positions"]
        starts = ((positions == 0) & (segments > 0)).unsqueeze(-1)  # (B, S, 1)
        x = torch.where(starts, self.problem_embedding(problem)[:, None, :].to(x.dtype), x)
        x = self._add_positions_at(x, positions)
        # Attend within the segment. Padding (segment 0) attends to padding, so no row of
        # the mask is empty (an empty one gives NaN); nothing reads those positions.
        attn_mask = (segments[:, :, None] == segments[:, None, :]).unsqueeze(1)  # (B, 1, S, S)
        pad_mask = segments == 0
        active = (~pad_mask).flatten().nonzero().squeeze(1)
        x = self._stack("encoder", x, self.positions[positions], ~pad_mask, active,
                        lambda i, step, x, active: self.encoder[i](x, attn_mask, active))
        return self.encoder_norm(x), pad_mask

    def decode(self, y: Tensor, memory: Tensor, memory_pad_mask: Tensor, problem: Tensor,
               cache: KVCache | None = None, active: Tensor | None = None,
               packing: dict[str, Tensor] | None = None) -> Tensor:
        """Teacher-forced decoder pass; the per-problem BOS is prepended here.

        y: (B, T, C) embedded target tokens 1..T (no BOS, no shift: pass the whole target).
        Returns (B, T+1, C) hidden states where position t predicts target token t+1
        (1-based): position 0 (the BOS) predicts the first token and position T, after the
        last token, predicts EOS. So logits over all T+1 positions are compared with
        `targets + [EOS]`.
        With `cache` (fresh from `new_cache`), it also fills the cache, so `decode_step`
        can continue after y (decoding forced to start with a given prefix).
        With `active` (flat indices into the B * (T+1) positions: those with a label, i.e. BOS
        and the real target tokens), the feed-forward blocks skip the others (padding).
        Packed rows (`packing`): y embeds BOS + tokens of each segment, the problem's BOS vector
        replaces each of those BOS, and the result keeps y's shape (B, T, C).
        """
        if packing is not None:
            return self._decode_packed(y, memory, problem, active, packing)
        x = torch.cat([self.bos(problem)[:, None, :].to(y.dtype), y], dim=1)  # (B, T+1, C)
        x = self._add_positions(x)
        signal = self._signal(0, x.size(1))
        if cache is None:
            memory_mask = ~memory_pad_mask[:, None, None, :]  # (B, 1, 1, S+1)
            memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.decoder]
            x = self._stack("decoder", x, signal, None, active,
                            lambda i, step, x, active: self.decoder[i](
                                x, memory_kv[i], memory_mask, active=active))
        else:
            if cache.length != 0:
                raise ValueError("decode with a cache needs a fresh one (length 0)")
            if x.size(1) > cache.max_length:
                raise ValueError(f"{x.size(1)} positions do not fit a cache of {cache.max_length}")

            def apply(i: int, step: int, x: Tensor, active: Tensor | None) -> Tensor:
                return self.decoder[i](x, (cache.cross_k[i], cache.cross_v[i]),
                                       cache.memory_mask, cache=(cache.self_k[step],
                                                                 cache.self_v[step]))

            def keep(step: int, x: Tensor) -> None:
                layer = self.decoder[0]
                layer.self_attn.store(layer.norm1(x), cache.self_k[step], cache.self_v[step], 0)

            x = self._stack("decoder", x, signal, None, None, apply, keep)
            cache.length = x.size(1)
        return self.decoder_norm(x)

    def _decode_packed(self, y: Tensor, memory: Tensor, problem: Tensor, active: Tensor | None,
                       packing: dict[str, Tensor]) -> Tensor:
        segments, positions = packing["targets_segments"], packing["targets_positions"]
        starts = ((positions == 0) & (segments > 0)).unsqueeze(-1)  # (B, T, 1)
        x = torch.where(starts, self.bos(problem)[:, None, :].to(y.dtype), y)
        x = self._add_positions_at(x, positions)
        T = x.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        self_mask = ((segments[:, :, None] == segments[:, None, :]) & causal).unsqueeze(1)
        # A target segment reads its own source segment; padding reads everything, so that
        # its row of the mask is never empty (NaN).
        memory_mask = ((segments[:, :, None] == packing["inputs_segments"][:, None, :])
                       | (segments == 0)[:, :, None]).unsqueeze(1)  # (B, 1, T, S)
        memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.decoder]
        x = self._stack("decoder", x, self.positions[positions], segments > 0, active,
                        lambda i, step, x, active: self.decoder[i](
                            x, memory_kv[i], memory_mask, active=active, self_mask=self_mask))
        return self.decoder_norm(x)

    def new_cache(self, memory: Tensor, memory_pad_mask: Tensor, max_length: int) -> KVCache:
        """Empty cache for up to `max_length` decoder positions (BOS included).

        memory: (B, S+1, C) and memory_pad_mask: (B, S+1) as returned by `encode`.
        """
        c = self.config
        B = memory.size(0)
        cross_k, cross_v = [], []
        for layer in self.decoder:
            k, v = layer.cross_attn.project_memory(memory)  # (B, H, S+1, Dh)
            cross_k.append(k)
            cross_v.append(v)
        # Same dtype as the projections, so autocast-ed K/V are stored without a cast.
        shape = (B, c.num_heads, max_length, c.d_model // c.num_heads)
        dtype = cross_k[0].dtype if cross_k else memory.dtype
        # Empty, not zeros: a position is only read once written, and zero-filling a cache
        # sized for decode.max_length is measurable in a decode (benchmarks/PERF_NOTES.md).
        steps = c.num_decoder_layers  # of depth: one cache slot each, shared layer or not
        self_k = [memory.new_empty(shape, dtype=dtype) for _ in range(steps)]
        self_v = [memory.new_empty(shape, dtype=dtype) for _ in range(steps)]
        memory_mask = ~memory_pad_mask.bool()[:, None, None, :]  # (B, 1, 1, S+1)
        return KVCache(self_k, self_v, cross_k, cross_v, memory_mask)

    def decode_step(self, y: Tensor | None, cache: KVCache, problem: Tensor) -> Tensor:
        """One incremental decoder step at position `cache.length`, which it then advances.

        y: (B, 1, C) embedding of the last emitted token, or None on the first step (the
        BOS of `problem` (B,) is used). Returns (B, C): the hidden state that predicts the
        next token, equal to the matching position of `decode`.
        """
        pos = cache.length
        if (y is None) != (pos == 0):
            raise ValueError("decode_step takes y=None exactly on the first step (cache.length 0)")
        if pos >= cache.max_length:
            raise ValueError(f"cache is full: max_length={cache.max_length}")
        if y is None:
            y = self.bos(problem)[:, None, :]  # (B, 1, C)
        x = self._add_positions(y, start=pos)  # (B, 1, C)

        def apply(i: int, step: int, x: Tensor, active: Tensor | None) -> Tensor:
            return self.decoder[i].step(x, cache.self_k[step], cache.self_v[step], pos,
                                        (cache.cross_k[i], cache.cross_v[i]), cache.memory_mask)

        def keep(step: int, x: Tensor) -> None:
            layer = self.decoder[0]
            layer.self_attn.store(layer.norm1(x), cache.self_k[step], cache.self_v[step], pos)

        x = self._stack("decoder", x, self._signal(pos, pos + 1), None, None, apply, keep)
        cache.length = pos + 1
        return self.decoder_norm(x)[:, 0]  # (B, C)


# -- The full model: the body plus the bottoms and tops of the problems it serves ---------------


def module_key(modality_key: str) -> str:
    return modality_key.replace(".", "_")  # ModuleDict keys may not contain dots


class T2TModel(nn.Module):
    """The shared body with each problem's input bottom, target bottom and target top.

    `modalities[i]` is problem i's (inputs, targets) pair of modality objects (anything with
    `key`, `kind`, `bottom(d_model, **config.bottoms[kind])` and `top(d_model, bottom)`).
    Modules are keyed by modality key: problems, or the two sides of one problem, whose
    modalities have equal keys share weights (a joint vocabulary ties input embedding,
    target embedding and softmax).

    Position contract: the body owns the position signal. An input bottom whose class sets
    `takes_positions = True` is called as `bottom(inputs, pad_mask, positions)`, with
    `positions` (S, C) = `body.input_positions(S)` for the inputs' S positions (dim 1): row i
    is the signal the encoder adds to input i (so such a modality is not `packable`: packed
    rows count positions per segment). Other bottoms are called as `bottom(inputs,
    pad_mask)`. A bottom never imports this module to rebuild the signal.
    """

    def __init__(self, config: ModelConfig, modalities: list[tuple]):
        super().__init__()
        self.config = config
        self.body = Transformer(config, num_problems=len(modalities))
        self.bottoms, self.tops = nn.ModuleDict(), nn.ModuleDict()
        self.keys: list[tuple[str, str]] = []
        for inputs, targets in modalities:
            for modality in (inputs, targets):
                key = module_key(modality.key)
                if key not in self.bottoms:
                    settings = config.bottoms.get(modality.kind, {})
                    self.bottoms[key] = call_with_settings(
                        modality.bottom, settings, f"model.bottoms.{modality.kind}",
                        config.d_model)
            target_key = module_key(targets.key)
            if target_key not in self.tops:
                self.tops[target_key] = targets.top(config.d_model, self.bottoms[target_key])
            self.keys.append((module_key(inputs.key), target_key))

    def encode(self, problem: int, inputs: Tensor, inputs_pad: Tensor,
               packing: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        bottom = self.bottoms[self.keys[problem][0]]
        if getattr(bottom, "takes_positions", False):
            positions = self.body.input_positions(inputs.size(1))  # (S, C)
            x, pad = bottom(inputs, inputs_pad, positions)  # (B, S, C), (B, S)
        else:
            x, pad = bottom(inputs, inputs_pad)  # (B, S, C), (B, S)
        problems = torch.full((x.shape[0],), problem, dtype=torch.long, device=x.device)
        return self.body.encode(x, pad, problems, packing)  # (B, S+1, C), (B, S+1)

    def forward(self, problem: int, inputs: Tensor, inputs_pad: Tensor, targets: Tensor
                ) -> Tensor:
        """Teacher forcing: logits (B, T+1, V); position t predicts target t (T: EOS)."""
        memory, memory_pad = self.encode(problem, inputs, inputs_pad)
        return self.teacher_forced(problem, memory, memory_pad, targets)

    def teacher_forced(self, problem: int, memory: Tensor, memory_pad: Tensor,
                       targets: Tensor) -> Tensor:
        """Decoder logits (B, T+1, V) over an encoded batch (see `forward`)."""
        return self.top(problem)(self.decoder_states(problem, memory, memory_pad, targets))

    def decoder_states(self, problem: int, memory: Tensor, memory_pad: Tensor,
                       targets: Tensor, active: Tensor | None = None,
                       packing: dict[str, Tensor] | None = None) -> Tensor:
        """Teacher-forced decoder hidden states (B, T+1, C), before the top; with `active`,
        computed only there (see `Transformer.decode`); (B, T, C) for packed rows."""
        y, _ = self.bottoms[self.keys[problem][1]](targets)  # (B, T, C)
        problems = torch.full((y.shape[0],), problem, dtype=torch.long, device=y.device)
        return self.body.decode(y, memory, memory_pad, problems, active=active, packing=packing)

    def top(self, problem: int) -> nn.Module:
        """The problem's target top: hidden states (..., C) -> logits (..., V)."""
        return self.tops[self.keys[problem][1]]

    def encoder_logits(self, problem: int, memory: Tensor, memory_pad: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """Target-vocabulary logits (B, S, V) at the inputs' encoder positions and their (B, S)
        padding mask, through the same top as the decoder: the CTC auxiliary loss reads them,
        with PAD (id 0, whose tied logit stays 0) as the CTC blank. No extra parameters.
        The problem token in front is left out: it attends to the whole input, and CTC there
        finds a shortcut (a short target at that one position, blanks after) that teaches
        no alignment."""
        return self.top(problem)(memory[:, 1:]), memory_pad[:, 1:]

    def decoder(self, problem: int) -> IncrementalModel:
        return IncrementalModel(self, problem)


class IncrementalModel:
    """`t2t.decoding.IncrementalDecoder` for one problem: state = the KV cache."""

    def __init__(self, model: T2TModel, problem: int):
        self.model, self.problem = model, problem
        self.target_key = model.keys[problem][1]

    def start(self, inputs: Tensor, inputs_pad: Tensor, max_length: int) -> KVCache:
        memory, memory_pad = self.model.encode(self.problem, inputs, inputs_pad)
        return self.model.body.new_cache(memory, memory_pad, max_length + 1)

    def step(self, tokens: Tensor | None, cache: KVCache) -> tuple[Tensor, KVCache]:
        y = None
        if tokens is not None:
            y, _ = self.model.bottoms[self.target_key](tokens[:, None])  # (N, 1, C)
        problems = torch.full((cache.batch_size,), self.problem, dtype=torch.long,
                              device=cache.memory_mask.device)
        hidden = self.model.body.decode_step(y, cache, problems)  # (N, C)
        return self.model.tops[self.target_key](hidden), cache  # (N, V)

    def reorder(self, cache: KVCache, index: Tensor) -> KVCache:
        cache.reorder(index)
        return cache
