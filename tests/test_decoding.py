"""Decoding against an exact toy model whose best sequences can be found by brute force."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from t2t.decoding import beam_search, best_of_n, greedy, n_best, sample, strip
from t2t.tokens import BOS, EOS, PAD

VOCAB = 6


class Markov:
    """Second-order Markov chain with one logit table per row: an exact `IncrementalDecoder`.

    table[r, a, b] holds row r's next-token logits after tokens (a, b), BOS standing in before
    the start. The state is (table row, last two tokens) per decoding row, so a wrong `reorder`
    mixes rows or beams up and shows in the results.
    """

    def __init__(self, table: torch.Tensor):
        self.table = table  # (R, V, V, V) logits, not normalised
        self.steps = 0

    def start(self, rows: torch.Tensor | None = None):
        rows = torch.arange(len(self.table)) if rows is None else rows
        return rows, torch.full((len(rows), 2), BOS), False

    def step(self, tokens, state):
        rows, context, started = state
        assert (tokens is None) == (not started), "tokens=None must come first and only first"
        if tokens is not None:
            assert tokens.shape == rows.shape, "state and tokens disagree on the number of rows"
            context = torch.stack([context[:, 1], tokens], dim=1)
        self.steps += 1
        return self.table[rows, context[:, 0], context[:, 1]], (rows, context, True)

    def reorder(self, state, index):
        rows, context, started = state
        return rows[index], context[index], started


def random_table(rows: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A per-context offset makes these logits, not log-probs: decoding must normalise them.
    return 2 * torch.randn(rows, vocab, vocab, vocab, generator=g) + torch.randn(
        rows, vocab, vocab, 1, generator=g
    )


def chain(paths: list[list[int]], vocab: int = 8) -> torch.Tensor:
    """Tables under which row r emits paths[r] with probability ~1."""
    table = torch.zeros(len(paths), vocab, vocab, vocab)
    for r, path in enumerate(paths):
        context = [BOS, BOS]
        for token in path:
            table[r, context[0], context[1], token] = 30.0
            context = [context[1], token]
    return table


def penalty(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


def logprob(table: torch.Tensor, tokens: list[int]) -> float:
    """Log-probability of emitting `tokens` under one row's table."""
    logp = table.double().log_softmax(-1)
    context, total = [BOS, BOS], 0.0
    for token in tokens:
        total += logp[context[0], context[1], token].item()
        context = [context[1], token]
    return total


def brute_force(table: torch.Tensor, max_length: int, alpha: float, allowed=None):
    """Best (tokens, normalised score) over every sequence beam search may return."""
    vocab = table.size(-1)
    usable = [t for t in range(vocab) if t not in (PAD, BOS)]
    best: list = [-math.inf, None]

    def visit(prefix: list[int]) -> None:
        mask = allowed(torch.tensor([prefix], dtype=torch.long).view(1, -1))[0] if allowed else None
        for token in usable:
            if mask is not None and not mask[token]:
                continue
            seq = prefix + [token]
            if token == EOS or len(seq) == max_length:
                score = logprob(table, seq) / penalty(len(seq), alpha)
                if score > best[0]:
                    best[:] = [score, prefix if token == EOS else seq]
            else:
                visit(seq)

    visit([])
    return best[1], best[0]


def no_3_then_4(prefix: torch.Tensor) -> torch.Tensor:
    """Constraint: token 4 may not follow token 3, and the output may not be empty."""
    mask = torch.ones(prefix.size(0), VOCAB, dtype=torch.bool)
    if prefix.size(1) == 0:
        mask[:, EOS] = False
    else:
        mask[prefix[:, -1] == 3, 4] = False
    return mask


def has_3_then_4(tokens: list[int]) -> bool:
    return any(a == 3 and b == 4 for a, b in zip(tokens, tokens[1:], strict=False))


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_wide_beam_finds_the_brute_force_best(alpha, constrained):
    table = random_table(rows=6, vocab=VOCAB, seed=int(10 * alpha) + constrained)
    allowed = no_3_then_4 if constrained else None
    model = Markov(table)
    ids, scores = beam_search(
        model,
        model.start(),
        batch_size=6,
        beam_size=128,
        max_length=4,
        length_penalty=alpha,
        allowed=allowed,
    )
    assert ids.shape[1] <= 4
    for row, (tokens, score) in enumerate(zip(strip(ids), scores.tolist(), strict=True)):
        expected, expected_score = brute_force(table[row], 4, alpha, allowed)
        assert tokens == expected, f"row {row}"
        assert score == pytest.approx(expected_score, abs=1e-4)


def brute_force_ranking(table: torch.Tensor, max_length: int, alpha: float):
    """Every sequence beam search may return, with its normalised score, best first."""
    usable = [t for t in range(table.size(-1)) if t not in (PAD, BOS)]
    found = []

    def visit(prefix: list[int]) -> None:
        for token in usable:
            seq = prefix + [token]
            if token == EOS or len(seq) == max_length:
                found.append((prefix if token == EOS else seq,
                              logprob(table, seq) / penalty(len(seq), alpha)))
            else:
                visit(seq)

    visit([])
    return sorted(found, key=lambda item: -item[1])


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_n_best_are_the_brute_force_best_in_order(alpha):
    table = random_table(rows=4, vocab=VOCAB, seed=7)
    model = Markov(table)
    found = n_best(model, model.start(), batch_size=4, n=3, beam_size=128, max_length=3,
                   length_penalty=alpha)
    best, _ = beam_search(model, model.start(), batch_size=4, beam_size=128, max_length=3,
                          length_penalty=alpha)
    for row, hypotheses in enumerate(found):
        ranking = brute_force_ranking(table[row], 3, alpha)[:3]
        assert [tokens for tokens, _ in hypotheses] == [tokens for tokens, _ in ranking]
        assert [score for _, score in hypotheses] == pytest.approx(
            [score for _, score in ranking], abs=1e-4)
        assert hypotheses[0][0] == strip(best)[row]
    with pytest.raises(ValueError, match="n must be between 1 and beam_size"):
        n_best(model, model.start(), batch_size=4, n=5, beam_size=4, max_length=3)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_size_one_is_greedy(alpha):
    table = random_table(rows=8, vocab=8, seed=3)
    model = Markov(table)
    expected = greedy(model, model.start(), batch_size=8, max_length=7)
    ids, scores = beam_search(
        model, model.start(), batch_size=8, beam_size=1, max_length=7, length_penalty=alpha
    )
    assert torch.equal(ids, expected)
    for row, tokens in enumerate(strip(expected)):
        seq = tokens + [EOS] if len(tokens) < 7 else tokens
        want = logprob(table[row], seq) / penalty(len(seq), alpha)
        assert scores[row].item() == pytest.approx(want, abs=1e-4)


def test_beam_keeps_an_early_finished_hypothesis():
    # First token: EOS with p=0.4 or 3 with p=0.6; after 3 four tokens are equally likely, so
    # every hypothesis through 3 scores at most log(0.15) < log(0.4).
    table = torch.full((1, VOCAB, VOCAB, VOCAB), -40.0)
    table[0, BOS, BOS, EOS], table[0, BOS, BOS, 3] = math.log(0.4), math.log(0.6)
    table[0, BOS, 3, [1, 3, 4, 5]] = 0.0
    table[0, 3, :, [1, 3, 4, 5]] = 0.0
    model = Markov(table)
    assert strip(greedy(model, model.start(), batch_size=1, max_length=3))[0][0] == 3
    ids, scores = beam_search(
        model, model.start(), batch_size=1, beam_size=2, max_length=3, length_penalty=0.0
    )
    assert strip(ids) == [[]]
    assert scores.item() == pytest.approx(math.log(0.4), abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_length_penalty_lets_a_longer_hypothesis_win(beam_size):
    # Row 0: EOS first (log p -1.3) beats 3 (log p -2.0), but 3 is followed by 4, 4, 4 for
    # sure, and with alpha=1.5 [3, 4, 4, 4] scores -2.0 / penalty(4) = -1.09 > -1.3. A beam
    # of 2 must keep searching after EOS finished; a beam of 1 is greedy and stops there.
    # Row 1 keeps the batch decoding to max_length (a stopped row must stay stopped).
    alpha, vocab = 1.5, 8
    table = chain([[EOS], [5] * 10], vocab=vocab)
    table[0] = -40.0
    table[0, BOS, BOS, EOS], table[0, BOS, BOS, 3] = -1.3, -2.0
    table[0, BOS, BOS, PAD] = math.log(1 - math.exp(-1.3) - math.exp(-2.0))
    table[0, BOS, 3, 4] = table[0, 3, 4, 4] = table[0, 4, 4, 4] = 0.0
    assert brute_force(table[0], 4, alpha)[0] == [3, 4, 4, 4]
    model = Markov(table)
    ids, scores = beam_search(
        model, model.start(), batch_size=2, beam_size=beam_size, max_length=4, length_penalty=alpha
    )
    if beam_size == 1:
        assert strip(greedy(model, model.start(), batch_size=2, max_length=4))[0] == []
        assert strip(ids) == [[], [5, 5, 5, 5]]
        assert scores[0].item() == pytest.approx(-1.3, abs=1e-4)
    else:
        assert strip(ids) == [[3, 4, 4, 4], [5, 5, 5, 5]]
        assert scores[0].item() == pytest.approx(-2.0 / penalty(4, alpha), abs=1e-4)


def test_greedy_stops_rows_independently_and_pads():
    model = Markov(chain([[EOS], [3, 4, EOS], [5] * 10]))
    ids = greedy(model, model.start(), batch_size=3, max_length=6)
    assert ids.tolist() == [[PAD] * 6, [3, 4, PAD, PAD, PAD, PAD], [5] * 6]

    model = Markov(chain([[EOS], [3, 4, EOS], [4, EOS]]))
    ids = greedy(model, model.start(), batch_size=3, max_length=20)
    assert ids.tolist() == [[PAD, PAD], [3, 4], [4, PAD]]
    assert model.steps == 3  # stopped when the last row emitted EOS, not at max_length
    assert strip(ids) == [[], [3, 4], [4]]


class RowCounting(Markov):
    """A Markov decoder that records how many rows each step computed."""

    def __init__(self, table: torch.Tensor):
        super().__init__(table)
        self.rows_per_step: list[int] = []

    def step(self, tokens, state):
        self.rows_per_step.append(len(state[0]))
        return super().step(tokens, state)


@pytest.mark.parametrize("decoder", ["greedy", "beam", "sample"])
def test_finished_rows_leave_the_batch(decoder):
    """Finished rows stop costing decoder steps, and each row decodes as it would alone, under
    a constraint that depends on the batch row (which must follow rows as others leave)."""
    table = chain([[EOS], [3, EOS], [4, 4, EOS], [5, 6, 7, 4, 6, EOS], [3, 3, 3]])  # row 4: 3s
    table[4, 3, 3, 7] = 20.0  # row 4's choice once 3 is banned: 7, then EOS
    table[4, 3, 7, EOS] = 30.0
    K = 2 if decoder == "beam" else 1

    def ban_late_3(batch_rows: list[int]):
        def allowed(prefix):
            mask = torch.ones(prefix.size(0), 8, dtype=torch.bool)
            row = torch.as_tensor(batch_rows).repeat_interleave(prefix.size(0) // len(batch_rows))
            if prefix.size(1) >= 3:
                mask[row == 4, 3] = False
            return mask
        return allowed

    def decode(model, rows: list[int]):
        state, options = model.start(torch.as_tensor(rows)), dict(
            batch_size=len(rows), max_length=12, allowed=ban_late_3(rows))
        if decoder == "beam":
            return beam_search(model, state, beam_size=K, **options)[0]
        if decoder == "sample":
            return sample(model, state, generator=torch.Generator().manual_seed(0), **options)
        return greedy(model, state, **options)

    model = RowCounting(table)
    together = strip(decode(model, list(range(5))))
    alone = [strip(decode(Markov(table), [row]))[0] for row in range(5)]
    assert together == alone == [[], [3], [4, 4], [5, 6, 7, 4, 6], [3, 3, 3, 7]]
    rows = model.rows_per_step[1:]  # after the first step (beam search expands there)
    assert rows == sorted(rows, reverse=True) and rows[-1] == K
    assert sum(rows) < 5 * K * len(rows)


def test_pad_and_bos_are_never_emitted():
    table = torch.zeros(2, VOCAB, VOCAB, VOCAB)
    table[..., PAD] = table[..., BOS] = 10.0  # the model would love to emit them
    model = Markov(table)
    results = [
        greedy(model, model.start(), batch_size=2, max_length=5),
        beam_search(model, model.start(), batch_size=2, beam_size=3, max_length=5)[0],
        sample(model, model.start(), batch_size=2, max_length=5, generator=torch.Generator()),
    ]
    for ids in results:
        for tokens in strip(ids):
            assert PAD not in tokens and BOS not in tokens and EOS not in tokens


def biased_table() -> torch.Tensor:
    table = random_table(rows=16, vocab=VOCAB, seed=7)
    table[:, BOS, BOS, 3] += 8  # start with 3 ...
    table[:, :, 3, 4] += 8  # ... then 4, 3, 4, ...
    table[:, :, 4, 3] += 8
    return table


def test_allowed_is_respected_by_all_decoders():
    model = Markov(biased_table())
    unconstrained = strip(greedy(model, model.start(), batch_size=16, max_length=6))
    assert all(has_3_then_4(tokens) for tokens in unconstrained)  # the constraint has work to do

    shapes: list[tuple[int, int]] = []

    def allowed(prefix):
        shapes.append(tuple(prefix.shape))
        return no_3_then_4(prefix)

    decoders = {
        "greedy": lambda: greedy(
            model, model.start(), batch_size=16, max_length=6, allowed=allowed
        ),
        "beam": lambda: beam_search(
            model, model.start(), batch_size=16, beam_size=3, max_length=6, allowed=allowed
        )[0],
        "sample": lambda: sample(
            model,
            model.start(),
            batch_size=16,
            max_length=6,
            generator=torch.Generator().manual_seed(0),
            allowed=allowed,
        ),
    }
    for name, decode in decoders.items():
        shapes.clear()
        results = strip(decode())
        assert not any(has_3_then_4(tokens) for tokens in results), name
        assert all(tokens for tokens in results), name  # EOS was forbidden first
        rows = 16 * 3 if name == "beam" else 16
        assert shapes == [(rows, t) for t in range(len(shapes))], name


@pytest.mark.parametrize("decoder", ["greedy", "beam", "sample"])
def test_min_length_is_eos_banned_before_it(decoder):
    # min_length=m must decode exactly as a constraint that forbids EOS on prefixes shorter
    # than m: same tokens, same scores (the log-probs are normalised before the ban).
    table = random_table(rows=12, vocab=VOCAB, seed=5)
    table[..., EOS] += 3  # EOS is likely everywhere, so the ban has work to do
    model = Markov(table)

    def eos_after(m):
        def allowed(prefix):
            mask = torch.ones(prefix.size(0), VOCAB, dtype=torch.bool)
            mask[:, EOS] = prefix.size(1) >= m
            return mask
        return allowed

    def decode(**kwargs):
        kwargs.update(batch_size=12, max_length=6)
        if decoder == "greedy":
            return greedy(model, model.start(), **kwargs), None
        if decoder == "beam":
            return beam_search(model, model.start(), beam_size=3, **kwargs)
        return sample(model, model.start(), generator=torch.Generator().manual_seed(0),
                      **kwargs), None

    assert min(len(tokens) for tokens in strip(decode()[0])) < 3
    ids, scores = decode(min_length=3)
    assert min(len(tokens) for tokens in strip(ids)) == 3
    want_ids, want_scores = decode(allowed=eos_after(3))
    assert torch.equal(ids, want_ids)
    if scores is not None:
        assert torch.allclose(scores, want_scores)


@pytest.mark.parametrize("decoder", ["greedy", "beam", "sample"])
def test_a_row_without_allowed_tokens_raises(decoder):
    def only_pad_at_step_two(prefix):
        mask = torch.ones(prefix.size(0), VOCAB, dtype=torch.bool)
        if prefix.size(1) == 2:
            mask[:] = False
            mask[:, PAD] = True  # PAD is never emitted, so nothing is left
        return mask

    model = Markov(biased_table())
    kwargs = dict(batch_size=16, max_length=6, allowed=only_pad_at_step_two)
    with pytest.raises(ValueError, match="no token to emit"):
        if decoder == "greedy":
            greedy(model, model.start(), **kwargs)
        elif decoder == "beam":
            beam_search(model, model.start(), beam_size=2, **kwargs)
        else:
            sample(model, model.start(), **kwargs)


def test_sampling_is_reproducible_with_a_generator():
    model = Markov(random_table(rows=8, vocab=8, seed=1))

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(model, model.start(), batch_size=8, max_length=8, generator=g)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_sampling_limits_are_greedy():
    model = Markov(random_table(rows=8, vocab=8, seed=2))
    expected = greedy(model, model.start(), batch_size=8, max_length=8)
    g = torch.Generator().manual_seed(0)
    for kwargs in [dict(temperature=1e-3), dict(temperature=0.0), dict(top_k=1),
                   dict(top_p=1e-6)]:
        got = sample(model, model.start(), batch_size=8, max_length=8, generator=g, **kwargs)
        assert torch.equal(got, expected), kwargs


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0),
                                                   (2.0, 0, 1.0), (1.0, 2, 1.0),
                                                   (1.0, 0, 0.95), (2.0, 0, 0.7)])
def test_sampling_follows_the_tempered_distribution(temperature, top_k, top_p):
    table = random_table(rows=1, vocab=VOCAB, seed=5)
    model = Markov(table)
    n = 8000
    ids = sample(
        model,
        model.start(torch.zeros(n, dtype=torch.long)),
        batch_size=n,
        max_length=1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=torch.Generator().manual_seed(0),
    )
    first = ids[:, 0] if ids.size(1) else torch.full((n,), PAD)
    first = first.masked_fill(first == PAD, EOS)  # an empty result means EOS came first
    freq = torch.bincount(first, minlength=VOCAB).double() / n

    logits = table[0, BOS, BOS].double().log_softmax(-1) / temperature
    logits[[PAD, BOS]] = -math.inf
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = -math.inf
    if top_p < 1:  # the nucleus: likeliest first, until their mass reaches top_p
        mass, nucleus = 0.0, []
        for token in logits.softmax(-1).argsort(descending=True).tolist():
            if mass >= top_p:
                break
            nucleus.append(token)
            mass += logits.softmax(-1)[token].item()
        outside = torch.ones(VOCAB, dtype=torch.bool)
        outside[nucleus] = False
        assert 1 < len(nucleus) < VOCAB - 2  # the case cuts something, and keeps a choice
        logits[outside] = -math.inf
    expected = logits.softmax(-1)
    assert torch.allclose(freq, expected, atol=0.025), (freq, expected)
    assert (freq[expected == 0] == 0).all()


def verifier_model(rows: int = 5):
    model = Markov(random_table(rows=rows, vocab=8, seed=11))

    def make_state(batch_size):
        assert batch_size == rows
        return model.start()

    return model, make_state


def test_best_of_n_stops_verified_rows_early_and_respects_n():
    model, make_state = verifier_model()
    calls: Counter = Counter()
    solved_with: dict[int, list[int]] = {}

    def verify(row, tokens):
        calls[row] += 1
        if row < 4 and calls[row] == row + 1:  # row r is solved by its (r+1)-th candidate
            solved_with[row] = tokens
            return 1.0
        return 0.25

    results = best_of_n(model, make_state, batch_size=5, n=10, verify=verify, max_length=6)
    assert calls == {0: 1, 1: 2, 2: 3, 3: 4, 4: 10}
    assert [score for _, score in results] == [1.0, 1.0, 1.0, 1.0, 0.25]
    assert [tokens for tokens, _ in results[:4]] == [solved_with[r] for r in range(4)]


def test_best_of_n_returns_the_best_candidate():
    model, make_state = verifier_model()
    seen: dict[int, list[tuple[list[int], float]]] = {r: [] for r in range(5)}

    def verify(row, tokens):
        score = (sum((i + 1) * t for i, t in enumerate(tokens)) % 97) / 100  # < 1: never solved
        seen[row].append((tokens, score))
        return score

    results = best_of_n(model, make_state, batch_size=5, n=7, verify=verify, max_length=6)
    for row, (tokens, score) in enumerate(results):
        assert len(seen[row]) == 7
        assert score == max(s for _, s in seen[row])
        assert (tokens, score) in seen[row]
    assert len({score for _, score in results} | {s for _, s in seen[0]}) > 1  # scores vary

    again = best_of_n(model, make_state, batch_size=5, n=7, verify=lambda r, t: 0.0, max_length=6)
    same = best_of_n(model, make_state, batch_size=5, n=7, verify=lambda r, t: 0.0, max_length=6)
    assert again == same  # seeded


def test_best_of_n_with_no_time_does_one_round():
    model, make_state = verifier_model()
    calls: Counter = Counter()

    def verify(row, tokens):
        calls[row] += 1
        return 0.0

    best_of_n(model, make_state, batch_size=5, n=10, verify=verify, max_length=6, time_budget_s=0)
    assert calls == {r: 1 for r in range(5)}


def test_best_of_n_keeps_rows_in_batch_order_for_constraints():
    # Row-dependent constraint: row r may never emit forbidden[r]. Rows drop out as they are
    # solved, so `allowed` must still see the whole batch with row r at position r.
    vocab, rows = 8, 6
    forbidden = torch.tensor([3, 4, 5, 6, 7, 3])
    table = torch.zeros(rows, vocab, vocab, vocab)
    table[..., EOS] = -2.0  # long outputs: every token gets its chance to appear
    model = Markov(table)

    def allowed(prefix):
        assert prefix.size(0) == rows
        mask = torch.ones(rows, vocab, dtype=torch.bool)
        mask[torch.arange(rows), forbidden] = False
        return mask

    calls: Counter = Counter()
    emitted: Counter = Counter()

    def verify(row, tokens):
        calls[row] += 1
        emitted.update(tokens)
        assert forbidden[row].item() not in tokens, f"row {row} emitted its forbidden token"
        return 1.0 if row == 0 or (row == 2 and calls[row] == 3) else 0.1

    best_of_n(
        model,
        lambda batch_size: model.start(),
        batch_size=rows,
        n=6,
        verify=verify,
        max_length=10,
        allowed=allowed,
    )
    assert calls == {0: 1, 1: 6, 2: 3, 3: 6, 4: 6, 5: 6}
    assert all(emitted[t] > 0 for t in (3, 4, 5, 6, 7))


def test_strip():
    assert strip(torch.tensor([[3, 4, PAD], [PAD, PAD, PAD]])) == [[3, 4], []]
