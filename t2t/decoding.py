"""Model-agnostic decoding: greedy, beam search, sampling, constraints, verifier-guided best-of-N.

Everything runs over an `IncrementalDecoder` (one `step` per emitted token, `reorder` to select
rows of its state, e.g. a KV cache) and is batched: the per-step work is tensor ops over all
rows and beams at once; Python loops only run over time steps (and, in best-of-N, over the
candidates handed to the Python verifier).

Conventions shared by every function here:
- Results are `(B, L)` token ids without BOS, EOS dropped, right-padded with PAD; `strip` turns
  them into lists. L is the longest result in the batch (at most `max_length`).
- PAD and BOS are never emitted: they are not outputs, and excluding them keeps results unambiguous.
- Scores are model log-probabilities: `log_softmax` of the step output is taken *before* any
  mask, so a constraint removes choices without inflating the probability of what is left.
- Constraints: `allowed(prefix) -> mask`, prefix `(N, t)` long (tokens emitted so far, t may be 0),
  mask `(N, V)` bool, True = may come next. Rows are in batch order: N = B and row i is batch row
  i for greedy, sampling and best-of-N (rows not drawn in a best-of-N round hold a PAD prefix);
  N = B * beam_size and row i belongs to batch row i // beam_size for beam search. Every
  unfinished row must keep at least one allowed token, else ValueError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from t2t.tokens import BOS, EOS, PAD

Allowed = Callable[[torch.Tensor], torch.Tensor]


class IncrementalDecoder(Protocol):
    """What decoding needs from a model: one step at a time over a reorderable state."""

    def step(self, tokens: torch.Tensor | None, state: Any) -> tuple[torch.Tensor, Any]:
        """tokens: (N,) last emitted token per row, or None on the first step (the model uses
        its BOS). Returns logits or log-probabilities (N, V) for the next token, and the state."""
        ...

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """Select rows of the state (index: (N',) long), to expand rows into beams and reorder."""
        ...


def forced_start(prompts: torch.Tensor, vocab_size: int) -> Allowed:
    """A constraint that makes each batch row's output begin with its prompt: `prompts`
    (B, P) token ids, right-padded with PAD (an empty prompt leaves a row free). Rows of beams
    or repeated samples (N = B * k, consecutive) follow their batch row."""

    def allowed(prefix: torch.Tensor) -> torch.Tensor:
        rows, step = prefix.shape
        mask = torch.ones(rows, vocab_size, dtype=torch.bool, device=prefix.device)
        if step < prompts.size(1):
            token = prompts[:, step].to(prefix.device).repeat_interleave(
                rows // prompts.size(0))
            forced = token != PAD
            mask[forced] = False
            mask[forced, token[forced]] = True
        return mask

    return allowed


def both(first: Allowed | None, second: Allowed | None) -> Allowed | None:
    """The constraint of two at once (either may be None)."""
    if first is None or second is None:
        return first or second
    return lambda prefix: first(prefix) & second(prefix)


def strip(ids: torch.Tensor) -> list[list[int]]:
    """(B, L) decoding result -> one list of token ids per row, PAD removed."""
    return [[t for t in row if t != PAD] for row in ids.tolist()]


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _check_rows(logits: torch.Tensor, rows: int) -> None:
    if logits.dim() != 2 or logits.size(0) != rows:
        raise ValueError(
            f"decoder.step returned shape {tuple(logits.shape)}, expected ({rows}, vocab_size)"
        )


def _allowed_mask(
    allowed: Allowed,
    prefix: torch.Tensor,
    vocab: int,
    keep: torch.Tensor | None,
    batch_size: int,
) -> torch.Tensor:
    if keep is not None:
        # Decoding a subset of rows: hand `allowed` the whole batch so that row i stays batch
        # row i (row-dependent constraints need that); rows not decoded hold a PAD prefix.
        full = prefix.new_full((batch_size, prefix.size(1)), PAD)
        full[keep] = prefix
        prefix = full
    mask = allowed(prefix)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError("allowed(prefix) must return a bool tensor (N, vocab_size)")
    if mask.shape != (prefix.size(0), vocab):
        raise ValueError(
            f"allowed(prefix) returned shape {tuple(mask.shape)}, "
            f"expected {(prefix.size(0), vocab)} for a prefix of shape {tuple(prefix.shape)}"
        )
    return mask if keep is None else mask[keep]


def _masked_logp(
    logits: torch.Tensor,
    prefix: torch.Tensor | None,
    done: torch.Tensor,
    allowed: Allowed | None,
    keep: torch.Tensor | None = None,
    batch_size: int = 0,
    ban_eos: bool = False,
) -> torch.Tensor:
    """(N, V) log-probs of the next token with PAD, BOS (EOS too when `ban_eos`) and disallowed
    tokens at -inf; rows that are `done` are not masked for their sake."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, V), ours: masked in place
    logp[:, PAD] = -math.inf
    logp[:, BOS] = -math.inf
    if ban_eos:
        logp[:, EOS] = -math.inf
    if allowed is not None:
        mask = _allowed_mask(allowed, prefix, logp.size(-1), keep, batch_size)
        logp.masked_fill_(~mask.to(logp.device), -math.inf)
        stuck = ~done & (logp.amax(dim=-1) == -math.inf)
        if bool(stuck.any()):
            i = int(stuck.nonzero()[0])
            raise ValueError(
                f"allowed(prefix) leaves no token to emit for decoding row {i} after prefix "
                f"{prefix[i].tolist()} (PAD and BOS are never emitted, nor EOS before "
                "min_length); a constraint must leave every unfinished row at least one token, "
                "e.g. EOS"
            )
    return logp


def _finish(ids: torch.Tensor) -> torch.Tensor:
    """Drop EOS (tokens after it are PAD already) and trim columns that are PAD in every row."""
    ids = ids.masked_fill(ids == EOS, PAD)
    width = int((ids != PAD).sum(dim=1).max()) if ids.numel() else 0
    return ids[:, :width]


def _run(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    max_length: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    allowed: Allowed | None,
    rows: list[int] | None = None,
    min_length: int = 0,
) -> torch.Tensor:
    """The left-to-right loop of greedy and sampling; `pick` maps (N, V) log-probs to (N,) ids.
    With `rows`, only those batch rows are decoded (selected after the first step). Finished
    rows leave the state once a quarter of those decoded have finished: leaving costs a copy of
    the state (a reorder), staying costs a whole step per row."""
    if max_length <= 0:
        return torch.zeros(batch_size if rows is None else len(rows), 0, dtype=torch.long)
    logits, state = decoder.step(None, state)
    _check_rows(logits, batch_size)
    device = logits.device
    requested = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=device)
    batch_row = requested  # the batch row of each decoded row, where they are not all, in order
    if requested is not None:
        # The state's device is only known from the step output: select rows after step one.
        state = decoder.reorder(state, requested)
        logits = logits.index_select(0, requested)
    n = logits.size(0)
    out = torch.full((n, max_length), PAD, dtype=torch.long, device=device)  # every row's ids
    live = torch.arange(n, device=device)  # the rows of `out` in the state, in its order
    done = torch.zeros(n, dtype=torch.bool, device=device)
    token = None  # the live rows' last tokens, from the first step on
    for t in range(max_length):
        if t:
            logits, state = decoder.step(token, state)
            _check_rows(logits, live.numel())
        prefix = out[live, :t] if allowed is not None else None
        logp = _masked_logp(logits, prefix, done, allowed, batch_row, batch_size, t < min_length)
        # Rows that are done get a one-hot on PAD, so argmax and multinomial emit PAD.
        logp.masked_fill_(done.unsqueeze(-1), -math.inf)
        logp[:, PAD] = torch.where(done, 0.0, -math.inf)
        token = pick(logp).masked_fill(done, PAD)  # (N,)
        out[live, t] = token
        done = done | (token == EOS)
        finished = int(done.sum())
        if finished == done.numel():
            break
        if 4 * finished >= done.numel():
            going_on = (~done).nonzero().squeeze(1)
            state = decoder.reorder(state, going_on)
            live, token, done = live[going_on], token[going_on], done[going_on]
            batch_row = live if requested is None else requested[live]
    return _finish(out)


def _sampler(
    temperature: float,
    top_k: int,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    top_p: float = 1.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {top_p}")
    gen = [generator]  # made lazily from `seed`: its device must be the logits' device

    def pick(logp: torch.Tensor) -> torch.Tensor:
        if temperature == 0:
            return logp.argmax(dim=-1)
        if gen[0] is None and seed is not None:
            gen[0] = torch.Generator(device=logp.device).manual_seed(seed)
        scores = logp / temperature  # (N, V)
        if 0 < top_k < scores.size(-1):
            kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
            scores = scores.masked_fill(scores < kth, -math.inf)
        if top_p < 1.0:  # the likeliest tokens whose probabilities sum to top_p (Holtzman 2020)
            ranked, order = scores.sort(dim=-1, descending=True)
            before = ranked.softmax(dim=-1).cumsum(dim=-1) - ranked.softmax(dim=-1)
            drop = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, before >= top_p)
            scores = scores.masked_fill(drop, -math.inf)  # the likeliest is never dropped
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=gen[0]).squeeze(1)

    return pick


# ---------------------------------------------------------------------------------------------
# Public API


@torch.no_grad()
def greedy(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    max_length: int,
    allowed: Allowed | None = None,
    min_length: int = 0,
) -> torch.Tensor:
    """Argmax decoding. Returns (B, L) ids without BOS and EOS, right-padded with PAD.
    EOS is not emitted before `min_length` tokens."""
    return _run(decoder, state, batch_size, max_length, lambda logp: logp.argmax(dim=-1), allowed,
                min_length=min_length)


@torch.no_grad()
def sample(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    max_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    allowed: Allowed | None = None,
    min_length: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Ancestral sampling from softmax(log_probs / temperature), restricted to the top_k tokens
    when top_k > 0 and to the smallest set of likeliest tokens holding top_p of the probability
    when top_p < 1 (nucleus sampling); temperature 0 is greedy. Pass a `generator` (on the
    model's device) for reproducible draws. Returns (B, L) ids like `greedy`, EOS not before
    `min_length` tokens."""
    pick = _sampler(temperature, top_k, generator=generator, top_p=top_p)
    return _run(decoder, state, batch_size, max_length, pick, allowed, min_length=min_length)


@torch.no_grad()
def beam_search(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.6,
    allowed: Allowed | None = None,
    min_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search. Returns the best hypothesis per row (B, L), like `greedy`, and its
    score (B,): summed log-probs / ((5 + length) / 6) ** length_penalty (GNMT), where length
    counts the EOS. `n_best` gives more than the best.

    Each step ranks all K * V continuations per row at once and keeps the best 2K. As in fairseq,
    an EOS continuation among the top K finishes its hypothesis, which is kept, so a short
    hypothesis can still win; the K best others stay alive (so beam_size=1 is greedy). A row stops
    when it holds K finished hypotheses or when no alive one can still beat its best finished one;
    hypotheses alive at max_length compete too, scored with length max_length. EOS is not
    emitted before `min_length` tokens (fairseq's --min-len, Hugging Face's min_new_tokens).
    """
    hypotheses, scores = _beam_search(decoder, state, batch_size, beam_size, max_length,
                                      length_penalty, allowed, min_length)
    return _finish(hypotheses[:, 0]), scores[:, 0]


@torch.no_grad()
def n_best(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    n: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.6,
    allowed: Allowed | None = None,
    min_length: int = 0,
) -> list[list[tuple[list[int], float]]]:
    """The n best hypotheses of `beam_search` per row, best first, as (token ids, score); fewer
    where the beam finished fewer (n <= beam_size)."""
    if not 1 <= n <= beam_size:
        raise ValueError(f"n must be between 1 and beam_size ({beam_size}), got {n}")
    hypotheses, scores = _beam_search(decoder, state, batch_size, beam_size, max_length,
                                      length_penalty, allowed, min_length, n)
    return [[(tokens, score) for tokens, score in zip(
                strip(_finish(hypotheses[row, :n])), scores[row, :n].tolist(), strict=True)
             if score > -math.inf] for row in range(batch_size)]


def _beam_search(
    decoder: IncrementalDecoder,
    state: Any,
    batch_size: int,
    beam_size: int,
    max_length: int,
    length_penalty: float,
    allowed: Allowed | None,
    min_length: int,
    n: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, L) finished hypotheses, EOS kept, and (B, K) scores, best first; a row stops
    once no alive hypothesis can beat its n-th best finished one."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K = batch_size, beam_size
    if max_length <= 0:
        return torch.zeros(B, K, 0, dtype=torch.long), torch.zeros(B, K)

    def penalty(length: int) -> float:
        return ((5 + length) / 6) ** length_penalty

    # Step one on the B rows, then expand the state to B * K beams: all beams share this step.
    logits, state = decoder.step(None, state)
    _check_rows(logits, B)
    device, V = logits.device, logits.size(-1)
    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,)
    state = decoder.reorder(state, expand)
    logits = logits.index_select(0, expand)  # (B*K, V)

    # Batch rows leave the search, and the state, when they are done; until then their beams
    # are b rows of the tensors below, b <= B, `rows` saying which batch row each is.
    rows = torch.arange(B, device=device)
    alive_seq = torch.zeros(B, K, 0, dtype=torch.long, device=device)  # (b, K, t)
    alive_score = torch.full((B, K), -math.inf, device=device)
    alive_score[:, 0] = 0.0  # the K beams are identical at first: let only one of them grow
    fin_seq = torch.zeros(B, K, 0, dtype=torch.long, device=device)  # (b, K, t), PAD after EOS
    fin_score = torch.full((B, K), -math.inf, device=device)  # length-normalised, best first
    result_seq = torch.full((B, K, max_length), PAD, dtype=torch.long, device=device)
    result_score = torch.full((B, K), -math.inf, device=device)
    beam_base = torch.arange(B, device=device).unsqueeze(1) * K  # (b, 1): flat index of beam 0
    per_beam = min(2 * K, V)
    n_cand = min(2 * K, K * V)

    def top(k: int, scores: torch.Tensor, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # scores (b, M), seqs (b, M, t) -> the k best of each, best first
        best, index = scores.topk(k, dim=1)
        return best, seqs.gather(1, index.unsqueeze(-1).expand(-1, -1, seqs.size(-1)))

    def keep_results(which: torch.Tensor | slice) -> None:
        result_seq[rows[which], :, :fin_seq.size(-1)] = fin_seq[which]
        result_score[rows[which]] = fin_score[which]

    for t in range(max_length):
        b = rows.numel()
        if t:
            logits, state = decoder.step(alive_seq[:, :, -1].reshape(-1), state)
            _check_rows(logits, b * K)
        dead = (alive_score == -math.inf).view(-1)  # (b*K,): padding beams
        # `allowed` sees every batch row's beams; those that left hold a PAD prefix.
        beams = None if b == B else (rows.unsqueeze(1) * K
                                     + torch.arange(K, device=device)).view(-1)
        # The best 2K of a row's K * V continuations are among each beam's own best 2K: rank
        # those few instead of adding the beam scores to all K * V log-probs.
        logp = _masked_logp(logits, alive_seq.view(b * K, t), dead, allowed, beams, B * K,
                            ban_eos=t < min_length)  # (b*K, V)
        beam_logp, beam_token = logp.topk(per_beam, dim=1)  # (b*K, per_beam)
        # Dead beams: masked here, on the few kept, rather than over all V (alive_score is
        # -inf there anyway; this keeps a NaN from a degenerate row out of the ranking).
        beam_logp.masked_fill_(dead.unsqueeze(-1), -math.inf)
        cand = (alive_score.unsqueeze(-1) + beam_logp.view(b, K, per_beam)).view(b, -1)
        cand_score, cand_index = cand.topk(n_cand, dim=1)  # (b, 2K), best first
        origin = cand_index // per_beam  # the beam it extends
        token = beam_token.view(b, -1).gather(1, cand_index)  # the token it appends
        seq = torch.cat(
            [alive_seq.gather(1, origin.unsqueeze(-1).expand(-1, -1, t)), token.unsqueeze(-1)],
            dim=-1,
        )  # (b, 2K, t+1)
        is_eos = token == EOS

        finishing = is_eos.clone()
        finishing[:, K:] = False  # only an EOS ranked in the top K finishes (fairseq)
        new_fin = torch.where(finishing, cand_score / penalty(t + 1), -math.inf)
        fin_score, fin_seq = top(
            K,
            torch.cat([fin_score, new_fin], dim=1),
            torch.cat([F.pad(fin_seq, (0, 1), value=PAD), seq], dim=1),
        )

        alive_score, keep = torch.where(is_eos, -math.inf, cand_score).topk(K, dim=1)  # (b, K)
        alive_seq = seq.gather(1, keep.unsqueeze(-1).expand(-1, -1, t + 1))
        origin = origin.gather(1, keep)

        if t + 1 == max_length:
            # Out of length: unfinished hypotheses are candidates too.
            fin_score, fin_seq = top(
                K,
                torch.cat([fin_score, alive_score / penalty(max_length)], dim=1),
                torch.cat([fin_seq, alive_seq], dim=1),
            )
            break
        # Alive scores only fall; the best any alive beam can reach is its score over the
        # largest penalty still possible (the penalty is monotone in length).
        bound = alive_score[:, 0] / max(penalty(t + 2), penalty(max_length))
        row_done = (fin_score > -math.inf).all(dim=1) | (fin_score[:, n - 1] >= bound)  # (b,)
        finished = int(row_done.sum())
        if finished == b:
            break
        index = beam_base + origin  # (b, K): the state row each beam continues
        if finished:
            keep_results(row_done)
            going_on = (~row_done).nonzero().squeeze(1)
            rows, index = rows[going_on], index[going_on]
            alive_seq, alive_score = alive_seq[going_on], alive_score[going_on]
            fin_seq, fin_score = fin_seq[going_on], fin_score[going_on]
            beam_base = beam_base[:rows.numel()]
        state = decoder.reorder(state, index.view(-1))

    keep_results(slice(None))
    return result_seq, result_score


@torch.no_grad()
def best_of_n(
    decoder: IncrementalDecoder,
    make_state: Callable[[int], Any],
    batch_size: int,
    n: int,
    verify: Callable[[int, list[int]], float],
    max_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    time_budget_s: float | None = None,
    seed: int = 0,
    allowed: Allowed | None = None,
) -> list[tuple[list[int], float]]:
    """Verifier-guided best-of-N: sample in rounds, one candidate per still-unsolved row per
    round (batched), keep each row's best by `verify(row, tokens)` (1.0 = verified correct).
    A row stops once verified; all stop after n rounds or when `time_budget_s` (wall clock,
    checked between rounds, so at least one round runs) is spent. `make_state(batch_size)` builds
    a fresh state for the whole batch each round; unsolved rows are selected from it.
    Returns (best tokens, best score) per row; ([], -inf) for a row no verifier call scored."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pick = _sampler(temperature, top_k, seed=seed)  # one generator across rounds: reproducible
    best: list[tuple[list[int], float]] = [([], -math.inf) for _ in range(batch_size)]
    unsolved = list(range(batch_size))
    start = time.monotonic()
    for round_ in range(n):
        if not unsolved:
            break
        if round_ and time_budget_s is not None and time.monotonic() - start >= time_budget_s:
            break
        ids = _run(
            decoder, make_state(batch_size), batch_size, max_length, pick, allowed, rows=unsolved
        )
        for row, tokens in zip(unsolved, strip(ids), strict=True):
            score = float(verify(row, tokens))
            if score > best[row][1]:
                best[row] = (tokens, score)
        unsolved = [row for row in unsolved if best[row][1] < 1.0]
    return best
