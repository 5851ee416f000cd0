"""Training and decoding speed of t2t against Hugging Face BART of the same size, side by side.

Both models get the same batches (token-budget batches with length bucketing, drawn from the
real Multi30k shards that t2t-datagen writes), the same AdamW and the same label-smoothed
loss; both decode the same source sentences to exactly --decode-length tokens (EOS is
banned in both, so neither stops early). Printed: training target tokens/s (real tokens:
non-pad, EOS included), padding fraction, achieved FLOP/s and MFU against a matrix-product
peak measured in this run, decoding sentences/s (greedy and beam 4), peak memory (GPU).

Model FLOPs are the issue's count, 6 x N x target tokens, with N the weights that multiply
(matrices, the tied embedding/softmax once; no position tables, biases or norms): source and
target sentences have about the same length here, so this stands for the encoder's share too.

    python benchmarks/throughput.py                                  # CPU, small, fp32
    python benchmarks/throughput.py --device cuda --model base --precision bf16 --compile layers
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # problems/, modalities/

from budget import SHARED  # noqa: E402

from t2t import decoding  # noqa: E402
from t2t.data import generate  # noqa: E402
from t2t.datamodule import PlannedBatches, PlanSettings  # noqa: E402
from t2t.lit_module import T2TLitModule, add_eos  # noqa: E402
from t2t.model import PRESETS, T2TModel  # noqa: E402
from t2t.registry import discover, get_problem_class  # noqa: E402

PAD, EOS, BOS = decoding.PAD, decoding.EOS, decoding.BOS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matrix product, the best of several timed repeats."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(5 if device.type == "cpu" else 20):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def multi30k_batches(data_dir: str, raw_dir: str | None, max_tokens: int, max_rows: int,
                     window: int, count: int):
    """The problem and the first `count` training batches of its epoch plan, as t2t trains."""
    discover()
    problem = get_problem_class("translate_deen_multi30k")(raw_dir=raw_dir)
    problem_dir = generate(problem, data_dir, progress=False)
    settings = PlanSettings(max_tokens=max_tokens, max_rows=max_rows, window=window)
    batches = []
    for batch in PlannedBatches(problem, problem_dir, "train", 0, settings):
        batches.append({k: batch[k] for k in ("inputs", "inputs_pad", "targets")})
        if len(batches) == count:
            break
    return problem, batches


def matrix_weights(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if p.ndim >= 2 and "position" not in name and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# -- the two contestants: a training loss and a fixed-length decoder each ------------------------


class T2T:
    name = "t2t"

    def __init__(self, problem, config, device):
        self.model = T2TModel(config, [(problem.inputs, problem.targets)]).to(device)
        self.lit = T2TLitModule(self.model, [problem], label_smoothing=0.1)
        self.loss = self.lit.loss
        self.vocab = problem.targets.vocab_size

    def train_loss(self, batch):
        return self.loss({**batch, "problem": 0}, 0.1)[0]

    def compile(self, whole: bool):
        if whole:
            self.loss = torch.compile(self.lit.loss, dynamic=True)
        else:  # regional: what t2t-train compile=true does
            self.model.body.compile_layers()

    @torch.no_grad()
    def decode(self, batch, length: int, beam: int):
        decoder = self.model.decoder(0)
        B = len(batch["inputs"])
        state = decoder.start(batch["inputs"], batch["inputs_pad"], length)
        no_eos = None

        def allowed(prefix):  # EOS banned: every hypothesis runs to `length` tokens
            nonlocal no_eos
            if no_eos is None or no_eos.size(0) != prefix.size(0):
                no_eos = torch.ones(prefix.size(0), self.vocab, dtype=torch.bool,
                                    device=prefix.device)
                no_eos[:, EOS] = False
            return no_eos

        if beam == 1:
            return decoding.greedy(decoder, state, B, length, allowed=allowed)
        return decoding.beam_search(decoder, state, B, beam, length, allowed=allowed)[0]


class Bart:
    name = "HF BART"

    def __init__(self, problem, config, device, vocab_size: int):
        from transformers import BartConfig, BartForConditionalGeneration

        c = config
        self.model = BartForConditionalGeneration(BartConfig(
            vocab_size=vocab_size, d_model=c.d_model, encoder_layers=c.num_encoder_layers,
            decoder_layers=c.num_decoder_layers, encoder_attention_heads=c.num_heads,
            decoder_attention_heads=c.num_heads, encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff,
            activation_function=c.activation, dropout=c.dropout,
            attention_dropout=c.attention_dropout, max_position_embeddings=1024,
            pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, decoder_start_token_id=BOS,
            forced_eos_token_id=None, scale_embedding=True,
        )).to(device)
        self.forward = self.model

    def train_loss(self, batch):
        labels = add_eos(batch["targets"])  # (B, T+1) like t2t: the tokens, then EOS
        decoder_inputs = F.pad(labels[:, :-1], (1, 0), value=BOS)  # shifted right
        logits = self.forward(input_ids=batch["inputs"], attention_mask=~batch["inputs_pad"],
                              decoder_input_ids=decoder_inputs,
                              decoder_attention_mask=decoder_inputs != PAD).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=PAD, label_smoothing=0.1)

    def compile(self, whole: bool):
        if whole:
            self.forward = torch.compile(self.model, dynamic=True)
        else:
            for layer in [*self.model.model.encoder.layers, *self.model.model.decoder.layers]:
                layer.compile(dynamic=True)

    @torch.no_grad()
    def decode(self, batch, length: int, beam: int):
        beam_options = {"length_penalty": 0.6, "early_stopping": False} if beam > 1 else {}
        return self.model.generate(
            input_ids=batch["inputs"], attention_mask=~batch["inputs_pad"], num_beams=beam,
            do_sample=False, max_new_tokens=length, min_new_tokens=length, use_cache=True,
            **beam_options)[:, 1:]  # without the decoder's start token


def manual_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """SDPA spelled out: on Multi30k's ~30-token sentences the fused kernels, built for long
    sequences, fill a fraction of their tiles; here torch.compile sees every step."""
    scores = (q * (scale or q.size(-1) ** -0.5)) @ k.transpose(-2, -1)  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, -math.inf)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:  # additive (HF BART's)
        scores = scores + attn_mask
    weights = F.dropout(scores.float().softmax(-1), dropout_p)
    return weights.to(v.dtype) @ v


# -- measurements -----------------------------------------------------------------------------


def to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def real_tokens(batch) -> int:
    return int((batch["targets"] != PAD).sum()) + len(batch["targets"])  # + one EOS per row


def padding(batches) -> float:
    real = sum(real_tokens(b) for b in batches)
    slots = sum(b["targets"].numel() + len(b["targets"]) for b in batches)
    return 1.0 - real / slots


def train_speed(contestant, batches, device, autocast, warmup: int, steps: int,
                profile: bool = False):
    """Target tokens/s over `steps` optimizer steps after `warmup` (compilation, caches)."""
    model = contestant.model
    model.train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                                  weight_decay=0.0, **fused)
    gpu_batches = [to(b, device) for b in batches]
    tokens = [real_tokens(b) for b in batches]

    def step(i):
        with autocast():
            loss = contestant.train_loss(gpu_batches[i % len(gpu_batches)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(warmup):
        step(i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profiler = torch.profiler.profile() if profile else contextlib.nullcontext()
    start = time.perf_counter()
    with profiler:
        for i in range(warmup, warmup + steps):
            loss = step(i)
        loss = float(loss.detach())  # the one host sync, after the timed steps were queued
    sync(device)
    seconds = time.perf_counter() - start
    done = sum(tokens[i % len(tokens)] for i in range(warmup, warmup + steps))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    if profile:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    if not math.isfinite(loss):
        sys.exit(f"{contestant.name}: non-finite training loss {loss}")
    return done / seconds, memory


def decode_speed(contestant, batch, device, autocast, length: int, beam: int, repeats: int):
    model = contestant.model
    model.eval()
    batch = to(batch, device)
    with autocast():
        out = contestant.decode(batch, length, beam)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            out = contestant.decode(batch, length, beam)
        sync(device)
    seconds = time.perf_counter() - start
    produced = int((out != PAD).sum(dim=1).min())
    return repeats * len(batch["inputs"]) / seconds, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", choices=["layers", "whole"],
                        help="torch.compile each layer, or the whole training loss")
    parser.add_argument("--sdpa", choices=["flash", "efficient", "cudnn", "math", "manual"],
                        help="force this attention kernel (default: PyTorch's choice); "
                             "manual: matmul-softmax-matmul in Python, for torch.compile")
    parser.add_argument("--window", type=int, default=4096,
                        help="samples sorted together by length (bucketing)")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="padded target tokens per batch (default: ~64 sentences)")
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--decode-length", type=int, default=30)
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="print the training steps' top operators (torch.profiler)")
    parser.add_argument("--skip", default="", help="comma list: hf, decode")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--raw-dir", default=str(SHARED / "multi30k")
                        if (SHARED / "multi30k").is_dir() else None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) \
        if args.precision == "bf16" else contextlib.nullcontext
    peak = matmul_peak(device, dtype)

    config = PRESETS[args.model]
    max_tokens = args.max_tokens or 64 * 24  # ~64 Multi30k pairs of ~18 +- 6 tokens
    problem, batches = multi30k_batches(args.data_dir, args.raw_dir, max_tokens, args.max_rows,
                                        args.window, args.batches)
    vocab_size = problem.targets.vocab_size
    decode_batch = {k: v[: args.decode_batch] for k, v in
                    max(batches, key=lambda b: len(b["inputs"])).items()}

    contestants = []
    contestants.append(T2T(problem, config, device))
    if "hf" not in skip:
        contestants.append(Bart(problem, config, device, vocab_size))

    if args.sdpa == "manual":
        F.scaled_dot_product_attention = manual_attention  # what the model calls, replaced
    elif args.sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION}[args.sdpa]
        sdpa_kernel(backend).__enter__()  # for the whole run
    rows = []
    for c in contestants:
        torch.manual_seed(0)
        if args.compile:
            c.compile(whole=args.compile == "whole")
        n = matrix_weights(c.model)
        tokens_per_s, memory = train_speed(c, batches, device, autocast, args.warmup,
                                           args.steps, profile=args.profile)
        flops = 6 * n * tokens_per_s
        row = {"name": c.name, "params": n, "tok/s": tokens_per_s, "flops": flops,
               "mfu": flops / peak, "mem": memory, "pad": padding(batches)}
        if "decode" not in skip:
            for beam in (1, 4):
                speed, produced = decode_speed(c, decode_batch, device, autocast,
                                               args.decode_length, beam, args.decode_repeats)
                if produced != args.decode_length:
                    sys.exit(f"{c.name}: beam {beam} produced {produced} tokens, expected "
                             f"{args.decode_length}")
                row[f"beam{beam}"] = speed
        rows.append(row)
        del c.model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print()
    print(f"{name}, {torch.get_num_threads()} threads, {args.precision}"
          f"{f', torch.compile ({args.compile})' if args.compile else ''}"
          f"{f', SDPA {args.sdpa}' if args.sdpa else ''}; model {args.model}; "
          f"matmul peak {peak / 1e12:.3f} TFLOP/s; {len(batches)} batches of <= {max_tokens} "
          f"padded tokens, {sum(len(b['inputs']) for b in batches) / len(batches):.0f} pairs "
          f"on average; {args.steps} timed steps")
    print()
    print("| model | matrix weights | train tok/s | padding | TFLOP/s | MFU | greedy sent/s "
          "| beam-4 sent/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['tok/s']:,.0f} | {r['pad']:.3f} | "
              f"{r['flops'] / 1e12:.3f} | {r['mfu']:.1%} | {r.get('beam1', math.nan):.1f} | "
              f"{r.get('beam4', math.nan):.1f} | {r['mem']:.2f} |")
    if len(rows) == 2:
        a, b = rows
        print()
        print(f"t2t / HF BART: training {a['tok/s'] / b['tok/s']:.2f}x"
              + ("" if "decode" in skip else
                 f", greedy {a['beam1'] / b['beam1']:.2f}x, beam-4 {a['beam4'] / b['beam4']:.2f}x"))


if __name__ == "__main__":
    main()
