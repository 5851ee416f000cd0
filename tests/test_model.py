"""The shared Transformer body: caching, masking, problem conditioning, sizes."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2t.model import PRESETS, RECURRENCES, ModelConfig, Transformer

REPO = Path(__file__).resolve().parents[1]
B, S, T = 3, 7, 5
STEPS = 4  # of depth, for the shared-layer models


def make_model(recurrence: str) -> Transformer:
    """tiny with fixed layers, or with one layer a side applied up to STEPS times."""
    torch.manual_seed(0)
    if recurrence == "none":
        return Transformer(PRESETS["tiny"], num_problems=3).eval()
    config = dataclasses.replace(PRESETS["tiny"], num_encoder_layers=STEPS,
                                 num_decoder_layers=STEPS, recurrence=recurrence)
    model = Transformer(config, num_problems=3).eval()
    if recurrence == "act":
        # Halting probabilities spread from near 0 to near 1, so that positions halt after
        # different numbers of steps (at initialisation every position takes two).
        with torch.no_grad():
            for unit in (model.encoder_halting, model.decoder_halting):
                unit[1].weight.normal_(std=0.3)
                unit[1].bias.zero_()
    return model


# Every property below holds for each kind of depth: cached decoding, beams, padding.
@pytest.fixture(params=RECURRENCES)
def model(request) -> Transformer:
    return make_model(request.param)


def make_batch(d_model: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, S, d_model, generator=g)
    lengths = torch.tensor([S, 4, 2])
    pad_mask = torch.arange(S)[None, :] >= lengths[:, None]  # (B, S), True = padding
    y = torch.randn(B, T, d_model, generator=g)
    problem = torch.tensor([0, 1, 2])
    return x, pad_mask, y, problem


def full_decode(model, x, pad_mask, y, problem):
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    return model.decode(y, memory, memory_pad_mask, problem)  # (B, T+1, C)


def stepwise_decode(model, x, pad_mask, y, problem, max_length=T + 1):
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    cache = model.new_cache(memory, memory_pad_mask, max_length)
    outs = [model.decode_step(None, cache, problem)]
    for t in range(y.size(1)):
        outs.append(model.decode_step(y[:, t : t + 1], cache, problem))
    return torch.stack(outs, dim=1), cache


@torch.no_grad()
def test_incremental_decoding_matches_teacher_forcing(model):
    x, pad_mask, y, problem = make_batch()
    full = full_decode(model, x, pad_mask, y, problem)
    steps, cache = stepwise_decode(model, x, pad_mask, y, problem, max_length=T + 4)
    assert full.shape == steps.shape == (B, T + 1, 64)
    assert cache.length == T + 1
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_decode_with_cache_prefills_for_decode_step(model):
    x, pad_mask, y, problem = make_batch()
    full = full_decode(model, x, pad_mask, y, problem)
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    cache = model.new_cache(memory, memory_pad_mask, T + 1)
    prefix = model.decode(y[:, :2], memory, memory_pad_mask, problem, cache=cache)
    assert cache.length == 3
    rest = [model.decode_step(y[:, t : t + 1], cache, problem) for t in range(2, T)]
    torch.testing.assert_close(prefix, full[:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(rest, 1), full[:, 3:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_decoder_is_causal(model):
    x, pad_mask, y, problem = make_batch()
    before = full_decode(model, x, pad_mask, y, problem)
    y2 = y.clone()
    # Random, not a constant shift: LayerNorm would cancel a constant exactly.
    y2[:, 2] = torch.randn(B, 64)  # decoder input position 3 (position 0 is BOS)
    after = full_decode(model, x, pad_mask, y2, problem)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 3], before[:, 3], atol=1e-4)


@torch.no_grad()
def test_encoder_padding_does_not_change_outputs(model):
    x, pad_mask, y, problem = make_batch()
    before = full_decode(model, x, pad_mask, y, problem)
    # Extra padded frames full of garbage, and garbage in the existing padding too.
    junk = 100 * torch.randn(B, 3, 64)
    x2 = torch.cat([torch.where(pad_mask[..., None], 50.0, x), junk], dim=1)
    pad2 = torch.cat([pad_mask, torch.ones(B, 3, dtype=torch.bool)], dim=1)
    after = full_decode(model, x2, pad2, y, problem)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@torch.no_grad()
def test_target_padding_does_not_change_real_positions(model):
    # Given the labelled positions (BOS and the real tokens), the feed-forward blocks skip
    # the others; the positions that predict a token must come out as if each row were
    # decoded alone.
    x, pad_mask, y, problem = make_batch()
    labelled = torch.arange(T + 1)[None, :] <= torch.tensor([T, 3, 1])[:, None]  # (B, T+1)
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    padded = model.decode(y, memory, memory_pad_mask, problem,
                          active=labelled.flatten().nonzero().squeeze(1))
    for i, length in enumerate([T, 3, 1]):
        alone = model.decode(y[i : i + 1, :length], memory[i : i + 1],
                             memory_pad_mask[i : i + 1], problem[i : i + 1])
        torch.testing.assert_close(padded[i, : length + 1], alone[0], atol=1e-5, rtol=0)


def test_loss_is_label_smoothed_cross_entropy_over_the_labelled_positions():
    from problems.algorithmic import AlgorithmicReverse
    from t2t.lit_module import T2TLitModule, add_eos
    from t2t.model import T2TModel
    from t2t.tokens import PAD

    problem = AlgorithmicReverse()
    torch.manual_seed(0)
    lit = T2TLitModule(T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]),
                       [problem]).eval()
    inputs = torch.tensor([[5, 6, 7, 8], [9, 5, 0, 0]])
    targets = torch.tensor([[8, 7, 6, 5], [5, 9, 0, 0]])
    batch = {"problem": 0, "inputs": inputs, "inputs_pad": inputs == PAD, "targets": targets}
    with torch.no_grad():
        loss, tokens = lit.loss(batch, label_smoothing=0.1)
        logits = lit.model(0, inputs, inputs == PAD, targets)  # (B, T+1, V), every position
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), add_eos(targets).flatten(), ignore_index=PAD,
        label_smoothing=0.1)
    assert tokens == 4 + 1 + 2 + 1  # the tokens and each row's EOS
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_fully_padded_input_gives_finite_outputs(model):
    x, pad_mask, y, problem = make_batch()
    pad_mask[1] = True  # the problem token is still there to attend to
    out = full_decode(model, x, pad_mask, y, problem)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_problem_token_and_bos_reach_the_body(model):
    x, pad_mask, y, _ = make_batch()
    p0, p1 = torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)
    memory0, mask = model.encode(x, pad_mask, p0)
    memory1, _ = model.encode(x, pad_mask, p1)
    assert not torch.allclose(memory0, memory1, atol=1e-3)  # problem token reaches encoder
    # Same memory, different problem: only the BOS differs, and it changes every position.
    out0 = model.decode(y, memory0, mask, p0)
    out1 = model.decode(y, memory0, mask, p1)
    assert not torch.allclose(out0[:, 0], out1[:, 0], atol=1e-3)
    assert not torch.allclose(out0[:, -1], out1[:, -1], atol=1e-4)


@torch.no_grad()
def test_compiled_layers_compute_the_same_and_keep_checkpoint_keys(model):
    x, pad_mask, y, problem = make_batch()
    expected = full_decode(model, x, pad_mask, y, problem)
    keys = list(model.state_dict())
    model.compile_layers()
    assert list(model.state_dict()) == keys  # checkpoints load either way
    torch.testing.assert_close(full_decode(model, x, pad_mask, y, problem), expected,
                               rtol=1e-4, atol=1e-4)
    # Incremental decoding still runs (its per-position step is not compiled).
    stepwise, _ = stepwise_decode(model, x, pad_mask, y, problem)
    torch.testing.assert_close(stepwise, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_cache_reorder_matches_permuted_batch(model):
    x, pad_mask, y, problem = make_batch()
    perm = torch.tensor([2, 0, 1])
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    cache = model.new_cache(memory, memory_pad_mask, T + 1)
    model.decode_step(None, cache, problem)
    model.decode_step(y[:, :1], cache, problem)
    cache.reorder(perm)
    got = [model.decode_step(y[perm, t : t + 1], cache, problem[perm]) for t in range(1, T)]
    expected, _ = stepwise_decode(model, x[perm], pad_mask[perm], y[perm], problem[perm])
    torch.testing.assert_close(torch.stack(got, 1), expected[:, 2:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_reordered_after_every_step_stays_exact(model):
    # As in beam search: a reorder (here with a row dropped and one doubled) after every
    # step, each copying only the filled positions into the buffers the previous one left.
    x, pad_mask, y, problem = make_batch()
    expected, _ = stepwise_decode(model, x, pad_mask, y, problem)
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    cache = model.new_cache(memory, memory_pad_mask, 64)  # far more room than gets filled
    rows = torch.arange(B)  # the batch row whose history each cache row holds
    model.decode_step(None, cache, problem)
    for t, index in enumerate([[1, 2, 0], [0, 0, 2], [2, 1, 0], [1, 2, 2]]):
        cache.reorder(torch.tensor(index))
        rows = rows[index]
        got = model.decode_step(y[rows, t : t + 1], cache, problem[rows])
        torch.testing.assert_close(got, expected[rows, t + 1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_reorder_expands_batch_for_beams(model):
    x, pad_mask, y, problem = make_batch()
    beams = torch.arange(B).repeat_interleave(2)  # B -> 2B, each row twice
    memory, memory_pad_mask = model.encode(x, pad_mask, problem)
    cache = model.new_cache(memory, memory_pad_mask, T + 1)
    cache.reorder(beams)
    assert cache.batch_size == 2 * B
    assert cache.cross_k[0].size(0) == B  # beams of a sentence share its memory K/V: no copy
    got = model.decode_step(None, cache, problem[beams])
    expected, _ = stepwise_decode(model, x, pad_mask, y, problem)
    torch.testing.assert_close(got, expected[beams, 0], atol=1e-5, rtol=0)
    # A reorder that moves beams across sentences (not what beam search does) stays exact.
    mixed = torch.tensor([5, 0, 2, 3, 1, 4])
    cache.reorder(mixed)
    rows = beams[mixed]
    got = model.decode_step(y[rows, :1], cache, problem[rows])
    torch.testing.assert_close(got, expected[rows, 1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_act_positions_halt_after_different_numbers_of_steps():
    # What makes the cached-decoding tests above meaningful for act: positions of one batch
    # halt at different steps, and padding takes none.
    model = make_model("act")
    x, pad_mask, y, problem = make_batch()
    full_decode(model, x, pad_mask, y, problem)
    encoder, decoder = model.ponder["encoder"], model.ponder["decoder"]
    real = torch.cat([torch.zeros(B, 1, dtype=torch.bool), ~pad_mask], 1) | \
        (torch.arange(S + 1) == 0)  # the problem token counts
    assert torch.equal(encoder.real, real)
    assert (encoder.steps[~real] == 0).all()
    for ponder in (encoder, decoder):
        steps = ponder.steps[ponder.real]
        assert steps.min() >= 1 and steps.max() <= STEPS
        assert len(steps.unique()) >= 2, steps


@torch.no_grad()
@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_a_halted_position_contributes_nothing_after_it(side):
    """Whatever the shared layer computes at a position after it halted (here: noise) reaches
    no output, neither its own (its state is frozen, its weight 0) nor any other (later steps
    read its frozen state); the same noise at a running position does change outputs."""
    model = make_model("act")
    x, pad_mask, y, problem = make_batch()
    clean = full_decode(model, x, pad_mask, y, problem)
    steps = model.ponder[side].steps  # (B, T): position p ran steps 0 .. steps[p] - 1
    layer = getattr(model, side)[0]

    def outputs_with_noise(where):
        calls = []

        def noise(module, args, output):
            step = len(calls)
            calls.append(step)
            return torch.where(where(step)[..., None], 1e3 * torch.randn_like(output), output)

        handle = layer.register_forward_hook(noise)
        try:
            return full_decode(model, x, pad_mask, y, problem)
        finally:
            handle.remove()

    halted = outputs_with_noise(lambda step: steps <= step)
    torch.testing.assert_close(halted, clean, atol=1e-5, rtol=0)
    running = outputs_with_noise(lambda step: (steps > step) & (step == steps.max() - 1))
    assert not torch.allclose(running, clean, atol=1e-2)


def test_ponder_cost_counts_steps_and_teaches_halting_sooner():
    model = make_model("act").train()
    x, pad_mask, _, problem = make_batch()
    model.encode(x, pad_mask, problem)
    ponder = model.ponder["encoder"]
    # Steps plus the remainder (the last step's share, in (0, 1]) per real position.
    assert ponder.mean_steps < ponder.cost <= ponder.mean_steps + 1
    ponder.cost.backward()
    bias = model.encoder_halting[1].bias
    assert bias.grad is not None and float(bias.grad) < 0  # higher probabilities, lower cost


def test_loss_adds_the_ponder_cost_at_its_weight():
    from problems.algorithmic import AlgorithmicReverse
    from t2t.lit_module import T2TLitModule
    from t2t.model import T2TModel
    from t2t.tokens import PAD

    problem = AlgorithmicReverse()
    config = dataclasses.replace(PRESETS["tiny"], recurrence="act")
    torch.manual_seed(0)
    model = T2TModel(config, [(problem.inputs, problem.targets)]).eval()
    inputs = torch.tensor([[5, 6, 7, 8], [9, 5, 0, 0]])
    targets = torch.tensor([[8, 7, 6, 5], [5, 9, 0, 0]])
    batch = {"problem": 0, "inputs": inputs, "inputs_pad": inputs == PAD, "targets": targets}
    losses = {}
    with torch.no_grad():
        for weight in (0.0, 0.5):
            lit = T2TLitModule(model, [problem], ponder_weight=weight)
            losses[weight], _ = lit.loss(batch, label_smoothing=0.0)
            costs = [p.cost for p in model.body.ponder.values()]
    assert len(costs) == 2  # encoder and decoder
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * sum(costs))


def expected_body_parameters(c: ModelConfig) -> int:
    # Weight matrices only: attention is 4 d^2 (q, k, v, out), the feed-forward 2 d d_ff;
    # a decoder layer has two attentions. Biases, norms, problem/BOS rows are ~0.1%.
    d, ff = c.d_model, c.d_ff
    return c.num_encoder_layers * (4 * d * d + 2 * d * ff) + c.num_decoder_layers * (
        8 * d * d + 2 * d * ff
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_preset_parameter_counts(name, recurrence):
    config = dataclasses.replace(PRESETS[name], recurrence=recurrence)
    with torch.device("meta"):  # sizes only, no memory or init time
        model = Transformer(config)
    count = model.num_parameters()
    tolerance = 0.02
    if recurrence != "none":  # one layer a side, however deep; biases and norms weigh more
        config = dataclasses.replace(config, num_encoder_layers=1, num_decoder_layers=1)
        tolerance = 0.03
    expected = expected_body_parameters(config)
    assert abs(count - expected) / expected < tolerance, (name, count, expected)


def test_known_preset_sizes():
    with torch.device("meta"):
        small = Transformer(PRESETS["small"]).num_parameters()
        base = Transformer(PRESETS["base"]).num_parameters()
    assert PRESETS["base"] == ModelConfig()
    assert 43_500_000 < base < 44_500_000  # Transformer-base body without embeddings
    assert 5_400_000 < small < 5_700_000


def test_model_imports_without_lightning():
    code = (
        "import sys; import t2t.model; "
        "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_dropout_drops_its_rate_scales_the_rest_and_is_off_in_eval():
    from t2t.model import Dropout

    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.ones(1000, 999, requires_grad=True)  # an odd size: draws come four at a time
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.003
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    y.sum().backward()  # the gradient passes kept elements, scaled, and stops at dropped ones
    torch.testing.assert_close(x.grad, y.detach())
    assert not torch.equal(dropout(x), dropout(x))  # a fresh mask every call
    assert dropout(x.bfloat16()).dtype == torch.bfloat16
    dropout.eval()
    assert torch.equal(dropout(x), x)
