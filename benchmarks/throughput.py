"""Training and decoding speed of t2t against Hugging Face BART of the same size, side by side.

Both models train on the same sentence pairs, drawn from the real Multi30k shards that
t2t-datagen writes, with the same AdamW and the same label-smoothed loss. BART is measured
twice: on t2t's own batches (token budget, length bucketing: the same kernels' work, so
the ratio is the implementations' speed alone) and batched as Hugging Face's Seq2SeqTrainer
does by default (the same pairs in random order, 64 per batch, padded to the longest by
DataCollatorForSeq2Seq: what a BART user gets). Both decode the same source sentences, in
batches of each --decode-batch size, to exactly --decode-length tokens (EOS banned in both, so
neither stops early), or with --decode-lengths reference each to its reference translation's
length (EOS forced there in both: sentences finish at different steps, as a trained model's
do, and what a decoder does with finished ones shows).

Printed: training target tokens/s (real tokens: non-pad, EOS included), padding fraction,
achieved FLOP/s and MFU against a matrix-product peak measured in this run, decoding
sentences/s (greedy and beam 4, per batch size), peak memory (GPU). The contestants' timed
steps and decodes are interleaved, in rounds, so that the drift of a shared machine hits them
alike; decoding reports the best of --decode-repeats. Last (fixed lengths), the time t2t's
decodes spend in their matrix products alone (the same shapes, nothing else): what bounds any
decoder of this model here.

Model FLOPs are the issue's count, 6 x N x target tokens, with N the weights that multiply
(matrices, the tied embedding/softmax once; no position tables, biases or norms): source and
target sentences have about the same length here, so this stands for the encoder's share too.

    python benchmarks/throughput.py                                  # CPU, small, fp32
    python benchmarks/throughput.py --device cuda --model base --precision bf16 --compile layers
    python benchmarks/throughput.py --packed-length 128      # t2t with data.packed_length too
    python benchmarks/throughput.py --skip train --decode-batch 1,32,256 \
        --decode-lengths reference
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
from lightning.fabric.utilities.apply_func import move_data_to_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # problems/, modalities/

from budget import SHARED  # noqa: E402

from t2t import decoding  # noqa: E402
from t2t.data import open_shards  # noqa: E402
from t2t.datagen import generate  # noqa: E402
from t2t.datamodule import PlannedBatches, PlanSettings  # noqa: E402
from t2t.lit_module import T2TLitModule, add_eos  # noqa: E402
from t2t.model import PRESETS, T2TModel  # noqa: E402
from t2t.registry import discover, get_problem_class  # noqa: E402
from t2t.tokens import BOS, EOS, PAD  # noqa: E402


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
                     window: int, count: int, packed_length: int = 0):
    """The problem and the first `count` training batches of its epoch plan, as t2t trains
    (with `packed_length`, as t2t trains with data.packed_length)."""
    discover()
    problem = get_problem_class("translate_deen_multi30k")(raw_dir=raw_dir)
    generate(problem, data_dir, progress=False)
    problem_dir = open_shards(problem, data_dir, {})
    settings = PlanSettings(max_tokens=max_tokens, max_rows=max_rows, window=window,
                            packed_length=packed_length)
    batches = []
    keys = ("inputs", "inputs_pad", "targets", "labels", "packing")
    for batch in PlannedBatches(problem, problem_dir, "train", 0, settings):
        batches.append({k: batch[k] for k in keys if k in batch})
        if len(batches) == count:
            break
    return problem, batches


def hf_default_batches(batches, rows: int, seed: int = 0):
    """The same pairs as `batches`, shuffled and `rows` per batch, each padded to its longest
    (a random sampler + DataCollatorForSeq2Seq: Hugging Face's Seq2SeqTrainer default)."""
    pairs = []
    for b in batches:
        for source, source_pad, target in zip(b["inputs"], b["inputs_pad"], b["targets"],
                                              strict=True):
            pairs.append((source[~source_pad], target[target != PAD]))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    pairs = [pairs[i] for i in order]
    out = []
    for start in range(0, len(pairs), rows):
        chunk = pairs[start:start + rows]
        inputs = torch.nn.utils.rnn.pad_sequence([s for s, _ in chunk], batch_first=True,
                                                 padding_value=PAD)
        targets = torch.nn.utils.rnn.pad_sequence([t for _, t in chunk], batch_first=True,
                                                  padding_value=PAD)
        out.append({"inputs": inputs, "inputs_pad": inputs == PAD, "targets": targets})
    return out


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
        self.vocab_size = problem.targets.vocab_size
        self.lit = T2TLitModule(self.model, [problem], label_smoothing=0.1)
        self.loss = self.lit.loss

    def train_loss(self, batch):
        return self.loss({**batch, "problem": 0}, 0.1)[0]

    def compile(self, whole: bool):
        if whole:
            self.loss = torch.compile(self.lit.loss, dynamic=True)
        else:  # regional: what t2t-train compile=true does
            self.model.body.compile_layers()

    @torch.no_grad()
    def decode(self, batch, length: int, beam: int, lengths=None):
        decoder = self.model.decoder(0)
        B = len(batch["inputs"])
        # The cache sized as t2t-decode sizes it (decode.max_length), not to the 30 steps run.
        state = decoder.start(batch["inputs"], batch["inputs_pad"], max(length, 256))
        if lengths is not None:  # each sentence to its own length, then EOS
            options = {"allowed": ends_at(lengths, self.vocab_size), "max_length": length + 1}
        else:  # EOS banned: every hypothesis runs to `length` tokens (BART: min_new_tokens)
            options = {"min_length": length, "max_length": length}
        if beam == 1:
            return decoding.greedy(decoder, state, B, **options)
        return decoding.beam_search(decoder, state, B, beam, **options)[0]


def ends_at(lengths: torch.Tensor, vocab_size: int):
    """A t2t decoding constraint: EOS banned before each batch row's length, the only choice
    at it (rows of beams follow their batch row)."""

    def allowed(prefix: torch.Tensor) -> torch.Tensor:
        rows, step = prefix.shape
        length = lengths.to(prefix.device).repeat_interleave(rows // len(lengths))
        mask = torch.ones(rows, vocab_size, dtype=torch.bool, device=prefix.device)
        mask[:, EOS] = length == step
        mask[length == step] = F.one_hot(torch.tensor(EOS), vocab_size).bool().to(prefix.device)
        return mask

    return allowed


def hf_ends_at(lengths: torch.Tensor):
    """The same as `ends_at` for Hugging Face's generate (a LogitsProcessor)."""
    from transformers import LogitsProcessor

    class EndsAt(LogitsProcessor):
        def __call__(self, input_ids, scores):
            rows, step = input_ids.size(0), input_ids.size(1) - 1  # after the start token
            length = lengths.to(scores.device).repeat_interleave(rows // len(lengths))
            at = length == step
            eos = scores[:, EOS].clone()
            scores[at] = -math.inf
            scores[:, EOS] = torch.where(at, eos, -math.inf)
            return scores

    return EndsAt()


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
    def decode(self, batch, length: int, beam: int, lengths=None):
        from transformers import LogitsProcessorList

        options = {"length_penalty": 0.6, "early_stopping": False} if beam > 1 else {}
        if lengths is not None:
            options |= {"logits_processor": LogitsProcessorList([hf_ends_at(lengths)]),
                        "max_new_tokens": length + 1}
        else:
            options |= {"max_new_tokens": length, "min_new_tokens": length}
        out = self.model.generate(
            input_ids=batch["inputs"], attention_mask=~batch["inputs_pad"], num_beams=beam,
            do_sample=False, use_cache=True, **options)[:, 1:]  # without the start token
        return out.masked_fill(out == EOS, PAD)


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


@torch.no_grad()
def decode_matmul_seconds(model: T2TModel, rows: int, beam: int, length: int,
                          device: torch.device, repeats: int) -> tuple[float, float]:
    """The matrix products of t2t's fixed-length decode of `rows` sentences, and nothing else:
    every decoder linear and the vocabulary projection at the rows each step has (`rows` on
    the first, `rows * beam` after), on random inputs. Best of `repeats` (seconds), and the
    FLOPs they do. No implementation of the same model and search does less arithmetic, so at
    this machine's speed for these shapes it bounds any decoder's sentences/s from above."""
    linears = [m.weight for layer in model.body.decoder for m in layer.modules()
               if isinstance(m, torch.nn.Linear) and m is not layer.cross_attn.kv]
    weights = [*linears, model.tops[model.keys[0][1]].embedding.weight]
    flops = sum(2 * w.numel() * (rows + rows * beam * (length - 1)) for w in weights)
    inputs = {n: {w.size(1): torch.randn(n, w.size(1), device=device) for w in weights}
              for n in (rows, rows * beam)}
    best = math.inf
    for _ in range(1 + repeats):
        sync(device)
        start = time.perf_counter()
        for step in range(length):
            x = inputs[rows if step == 0 else rows * beam]
            for w in weights:
                F.linear(x[w.size(1)], w)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, flops


def labels(batch):
    return batch["labels"] if "labels" in batch else add_eos(batch["targets"])


def real_tokens(batch) -> int:
    return int((labels(batch) != PAD).sum())  # the target tokens and each one's EOS


def padding(batches) -> float:
    real = sum(real_tokens(b) for b in batches)
    return 1.0 - real / sum(labels(b).numel() for b in batches)


SAME, DEFAULT = "HF BART, t2t's batches", "HF BART, 64-pair batches (HF default)"


class Run:
    """One contestant on one list of batches: training steps and decodes, timed in pieces
    that `main` interleaves with the other runs'."""

    def __init__(self, name, contestant, batches, device, autocast):
        self.name, self.contestant, self.device, self.autocast = name, contestant, device, autocast
        self.batches = [move_data_to_device(b, device) for b in batches]
        self.tokens = [real_tokens(b) for b in batches]
        self.padding = padding(batches)
        self.steps = self.seconds = self.real = 0
        self.decode_seconds: dict[int, list[float]] = {}
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(contestant.model.parameters(), lr=1e-4,
                                           betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, **fused)
        self.loss = torch.zeros(())

    def step(self, i: int):
        self.contestant.model.train()
        with self.autocast():
            loss = self.contestant.train_loss(self.batches[i % len(self.batches)])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def train(self, steps: int, timed: bool, profiler=None):
        """`steps` optimizer steps; timed ones count target tokens and seconds."""
        sync(self.device)
        start = time.perf_counter()
        with profiler or contextlib.nullcontext():
            for _ in range(steps):
                i = self.steps
                self.loss = self.step(i).detach()  # read after the timed steps: no host sync
                self.steps += 1
                if timed:
                    self.real += self.tokens[i % len(self.tokens)]
        sync(self.device)
        if timed:
            self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def decode(self, batch, length: int, beam: int, lengths=None) -> torch.Tensor:
        """Time one decode of `batch`; returns each sentence's number of tokens."""
        model = self.contestant.model
        model.eval()
        with self.autocast():
            sync(self.device)
            start = time.perf_counter()
            out = self.contestant.decode(batch, length, beam, lengths)
            sync(self.device)
        rows = len(batch["inputs"])
        self.decode_seconds.setdefault((rows, beam), []).append(time.perf_counter() - start)
        return (out != PAD).sum(dim=1).cpu()


def decode_pool(batches, seed: int = 0) -> dict:
    """Every source sentence of `batches` and its reference length, shuffled: decoding
    batches of sentences in no order of length, as a user's test file comes."""
    width = max(b["inputs"].size(1) for b in batches)
    inputs = torch.cat([F.pad(b["inputs"], (0, width - b["inputs"].size(1)), value=PAD)
                        for b in batches])
    lengths = torch.cat([(b["targets"] != PAD).sum(dim=1) for b in batches])
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    return {"inputs": inputs[order], "inputs_pad": inputs[order] == PAD,
            "lengths": lengths[order]}


def take(pool: dict, rows: int) -> dict:
    """The first `rows` sentences of the pool (cycled if it holds fewer), padded to the
    longest of them."""
    index = torch.arange(rows) % len(pool["inputs"])
    batch = {k: v[index] for k, v in pool.items()}
    width = int((~batch["inputs_pad"]).sum(dim=1).max())
    return {**batch, "inputs": batch["inputs"][:, :width],
            "inputs_pad": batch["inputs_pad"][:, :width]}


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
    parser.add_argument("--packed-length", type=int, default=0,
                        help="t2t trains on batches packed into rows of this length "
                             "(data.packed_length); BART keeps the unpacked ones")
    parser.add_argument("--loss-chunk-rows", default="4096",
                        help="t2t's optim.loss_chunk_rows (0: the loss unfused); a comma list "
                             "adds a t2t contestant for each further value")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode-batch", default="32",
                        help="sentences decoded at once; a comma list for several sizes")
    parser.add_argument("--decode-length", type=int, default=30,
                        help="tokens per sentence (fixed), or at most (reference)")
    parser.add_argument("--decode-lengths", default="fixed", choices=["fixed", "reference"],
                        help="fixed: every sentence to --decode-length tokens, EOS banned; "
                             "reference: each to its reference translation's length (EOS "
                             "banned before, forced there), so sentences finish at their own "
                             "step, as trained models' do")
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="print the training steps' top operators (torch.profiler)")
    parser.add_argument("--skip", default="", help="comma list: hf, train, decode")
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

    chunk_rows = [int(n) for n in args.loss_chunk_rows.split(",")]
    torch.manual_seed(0)
    t2t = T2T(problem, config, device)
    t2t.lit.loss_chunk_rows = chunk_rows[0]
    runs = [Run("t2t", t2t, batches, device, autocast)]
    for rows in chunk_rows[1:]:
        torch.manual_seed(0)
        other = T2T(problem, config, device)
        other.lit.loss_chunk_rows = rows
        runs.append(Run(f"t2t, loss_chunk_rows {rows}", other, batches, device, autocast))
    if args.packed_length:  # the same token budget, the plan t2t-train packs
        packed = multi30k_batches(args.data_dir, args.raw_dir, max_tokens, args.max_rows,
                                  args.window, args.batches, args.packed_length)[1]
        runs.append(Run(f"t2t, rows packed to {args.packed_length}", t2t, packed, device,
                        autocast))
    if "hf" not in skip:
        torch.manual_seed(0)
        bart = Bart(problem, config, device, vocab_size)
        runs.append(Run(SAME, bart, batches, device, autocast))
        runs.append(Run(DEFAULT, bart, hf_default_batches(batches, 64), device, autocast))

    if args.sdpa == "manual":
        F.scaled_dot_product_attention = manual_attention  # what the model calls, replaced
    elif args.sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION}[args.sdpa]
        sdpa_kernel(backend).__enter__()  # for the whole run
    if args.compile:
        for c in {id(r.contestant): r.contestant for r in runs}.values():
            c.compile(whole=args.compile == "whole")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print()
    print(f"{name}, {torch.get_num_threads()} threads, {args.precision}"
          f"{f', torch.compile ({args.compile})' if args.compile else ''}"
          f"{f', SDPA {args.sdpa}' if args.sdpa else ''}; model {args.model}; "
          f"matmul peak {peak / 1e12:.3f} TFLOP/s; t2t's loss_chunk_rows {args.loss_chunk_rows}")
    if "train" not in skip:
        train(args, runs, device, peak, batches, max_tokens)
    if "decode" not in skip:
        decode(args, [run for run in runs if run.name in ("t2t", SAME)], t2t, batches, device,
               peak)


def train(args, runs, device, peak, batches, max_tokens) -> None:
    """Warm-up (compilation, allocator), then timed rounds, contestants interleaved."""
    for run in runs:
        run.train(args.warmup, timed=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profilers = {run.name: torch.profiler.profile() for run in runs} if args.profile else {}
    rounds = max(1, args.steps // 5)
    for r in range(rounds):
        for run in runs:
            steps = args.steps // rounds + (r < args.steps % rounds)
            run.train(steps, timed=True, profiler=profilers.get(run.name))
    for run in runs:
        if not math.isfinite(float(run.loss)):
            sys.exit(f"{run.name}: non-finite training loss {float(run.loss)}")
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, profiler in profilers.items():
        print(f"\n{name}: top operators of the timed training steps")
        print(profiler.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))

    rows = []
    for run in runs:
        tokens_per_s = run.real / run.seconds
        n = matrix_weights(run.contestant.model)
        flops = 6 * n * tokens_per_s
        rows.append({"name": run.name, "params": n, "tok/s": tokens_per_s, "flops": flops,
                     "mfu": flops / peak, "pad": run.padding})
    print(f"\nTraining: {len(batches)} batches of <= {max_tokens} padded tokens, "
          f"{sum(len(b['inputs']) for b in batches) / len(batches):.0f} pairs on average; "
          f"{args.steps} timed steps")
    print()
    print("| model | matrix weights | train tok/s | padding | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['tok/s']:,.0f} | {r['pad']:.3f} | "
              f"{r['flops'] / 1e12:.3f} | {r['mfu']:.1%} |")
    print(f"\npeak GPU memory, all contestants: {memory:.2f} GiB" if device.type == "cuda" else "")
    by_name = {r["name"]: r for r in rows}
    if SAME in by_name:
        same, default = by_name[SAME], by_name[DEFAULT]
        for ours in [r for r in rows if r["name"] not in (SAME, DEFAULT)]:
            print(f"{ours['name']} / HF BART: training {ours['tok/s'] / same['tok/s']:.2f}x on "
                  f"t2t's batches, {ours['tok/s'] / default['tok/s']:.2f}x against HF's default "
                  "batching")


def decode(args, decoders, t2t, batches, device, peak) -> None:
    """The same sentences for each contestant, one warm-up decode each, then interleaved
    repeats; the best of them. t2t and BART decode the same way whichever batches they
    trained on."""
    pool = decode_pool(batches)
    sizes = [int(n) for n in args.decode_batch.split(",")]
    reference = args.decode_lengths == "reference"
    speed = {}  # (contestant, rows, beam) -> sentences/s
    for rows in sizes:
        batch = move_data_to_device(take(pool, rows), device)
        lengths = batch["lengths"].clamp(max=args.decode_length) if reference else None
        expected = (lengths.cpu() if reference else
                    torch.full((rows,), args.decode_length))
        for beam in (1, 4):
            for repeat in range(1 + args.decode_repeats):
                for run in decoders:
                    produced = run.decode(batch, args.decode_length, beam, lengths)
                    if not torch.equal(produced, expected):
                        sys.exit(f"{run.name}: beam {beam}, batch {rows} produced "
                                 f"{produced.tolist()} tokens, expected {expected.tolist()}")
                    if repeat == 0:
                        run.decode_seconds[rows, beam].clear()  # warm-up
            for run in decoders:
                speed[run.name, rows, beam] = rows / min(run.decode_seconds[rows, beam])
    mean = float(pool["lengths"].clamp(max=args.decode_length).float().mean())
    print(f"\nDecoding (best of {args.decode_repeats}): "
          + (f"each sentence to its reference length (mean {mean:.1f}, at most "
             f"{args.decode_length}), then EOS" if reference else
             f"{args.decode_length} tokens each, EOS banned") + "; sentences/s")
    print()
    names = [run.name for run in decoders]
    labels = {run.name: run.contestant.name for run in decoders}
    print("| batch | " + " | ".join(f"{labels[n]}, {b}" for b in ("greedy", "beam 4")
                                    for n in names)
          + (" | t2t / HF, greedy | t2t / HF, beam 4 |" if len(names) > 1 else " |"))
    print("|---|" + "---|" * (2 * len(names) + (2 if len(names) > 1 else 0)))
    for rows in sizes:
        cells = [f"{speed[n, rows, b]:.1f}" for b in (1, 4) for n in names]
        if len(names) > 1:
            cells += [f"{speed[names[0], rows, b] / speed[names[1], rows, b]:.2f}x"
                      for b in (1, 4)]
        print(f"| {rows} | " + " | ".join(cells) + " |")
    if not reference:
        print("\nt2t's decoding, its matrix products alone (the same shapes, nothing else; best "
              f"of {args.decode_repeats}):")
        for rows in sizes:
            for beam in (1, 4):
                seconds, flops = decode_matmul_seconds(t2t.model, rows, beam,
                                                       args.decode_length, device,
                                                       args.decode_repeats)
                measured = rows / speed["t2t", rows, beam]
                print(f"- batch {rows}, beam {beam}: {seconds:.3f} s of the {measured:.3f} s a "
                      f"decode took ({flops / seconds / 1e9:.0f} GFLOP/s): at most "
                      f"{rows / seconds:.1f} sent/s at this speed, {rows * peak / flops:.1f} "
                      "at the matmul peak")


if __name__ == "__main__":
    main()
