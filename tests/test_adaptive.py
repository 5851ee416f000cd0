"""Recurrent depth end to end (model.recurrence=shared, one layer a side applied several
times; and act, each position halting on its own): a mixture of one problem of each family
(learned-vocabulary text, image, audio, RNA) trains, checkpoints, resumes, decodes greedy and
beam with its cache exactly as without one, and evaluates with t2t-eval."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from t2t import decoding
from t2t.inference import constraint_for, load_checkpoint

from .conftest import FAMILY_MEMBERS, family_mixture_command, run_command

pytestmark = pytest.mark.xdist_group("adaptive")  # one worker trains each model once

DEPTH = ["model.num_encoder_layers=3", "model.num_decoder_layers=3"]
TRAINING = ["optim.lr=0.003", "optim.warmup_steps=5", "checkpoint_every=5"]


@pytest.fixture(scope="module", params=["shared", "act"])
def trained(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(recurrence, folder, the resumed run's output): 5 steps, then resumed to 10."""
    recurrence = request.param
    folder = tmp_path_factory.mktemp(recurrence)
    options = [f"model.recurrence={recurrence}", *DEPTH, *TRAINING]
    first = run_command(*family_mixture_command(folder, *options, "trainer.max_steps=5"),
                        cwd=folder, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_command(*family_mixture_command(folder, *options, "trainer.max_steps=10"),
                          cwd=folder, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return recurrence, folder, resumed.stdout


@pytest.mark.timeout(900)
def test_trains_and_resumes_with_one_layer_a_side(trained):
    recurrence, folder, output = trained
    ckpt = folder / "run" / "checkpoints" / "last.ckpt"
    assert f"resuming from {ckpt}" in output
    assert "metrics after 10 steps" in output
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 10
    keys = list(saved["state_dict"])
    assert any(k.startswith("model.body.decoder.0.") for k in keys)
    assert not any(k.startswith(("model.body.encoder.1.", "model.body.decoder.1."))
                   for k in keys)
    halting = any(k.startswith("model.body.decoder_halting.") for k in keys)
    assert halting == (recurrence == "act")
    for name in FAMILY_MEMBERS:  # validation logged the depth act spent on each problem
        shown = [line for line in output.splitlines() if f"{name}" in line and "ponder" in line]
        assert len(shown) == (2 if recurrence == "act" else 0), output[-3000:]


class Uncached:
    """Decoding without a cache (t2t.decoding.IncrementalDecoder): each step runs the decoder
    over the whole prefix again, teacher-forced."""

    def __init__(self, model, index: int):
        self.model, self.index = model, index

    def start(self, inputs, inputs_pad):
        memory, memory_pad = self.model.encode(self.index, inputs, inputs_pad)
        return memory, memory_pad, torch.zeros(len(memory), 0, dtype=torch.long)

    def step(self, tokens, state):
        memory, memory_pad, prefix = state
        if tokens is not None:
            prefix = torch.cat([prefix, tokens[:, None]], dim=1)
        logits = self.model.teacher_forced(self.index, memory, memory_pad, prefix)[:, -1]
        return logits, (memory, memory_pad, prefix)

    def reorder(self, state, index):
        return tuple(part.index_select(0, index) for part in state)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(FAMILY_MEMBERS))
@torch.no_grad()
def test_cached_decoding_equals_decoding_without_a_cache(trained, name):
    """Greedy and beam search over the trained model's KV cache (a slot per step of depth,
    positions halting on their own under act) choose what recomputing everything chooses."""
    recurrence, folder, _ = trained
    model, problems = load_checkpoint(folder / "run" / "checkpoints" / "last.ckpt")
    if recurrence == "act":
        # Ten steps leave every position halting after two steps, as initialised: spread the
        # halting probabilities so that positions halt after one to three.
        torch.manual_seed(0)
        for unit in (model.body.encoder_halting, model.body.decoder_halting):
            unit[1].weight.normal_(std=1.0)
    index = [p.name for p in problems].index(name)
    problem = problems[index]
    samples = list(problem.generate_samples("validation"))[:4]
    loaded = [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in samples]
    inputs, inputs_pad = problem.inputs.collate(loaded)
    allowed = constraint_for(problem, inputs, inputs_pad)
    # A model of ten steps would often end at once: at least 8 tokens, so there is a sequence.
    length, settings = 12, dict(batch_size=len(loaded), allowed=allowed, min_length=8)

    def decode(decoder, state, beam_size: int) -> list[list[int]]:
        if beam_size == 1:
            return decoding.strip(decoding.greedy(decoder, state, max_length=length,
                                                  **settings))
        ids, _ = decoding.beam_search(decoder, state, beam_size=beam_size, max_length=length,
                                      **settings)
        return decoding.strip(ids)

    cached, uncached = model.decoder(index), Uncached(model, index)
    for beam_size in (1, 3):
        with_cache = decode(cached, cached.start(inputs, inputs_pad, length), beam_size)
        without = decode(uncached, uncached.start(inputs, inputs_pad), beam_size)
        assert with_cache == without, beam_size
        assert all(len(ids) >= 8 for ids in with_cache)
    if recurrence == "act":  # the last pass: all positions of the last uncached step
        for ponder in model.body.ponder.values():
            assert len(ponder.steps[ponder.real].unique()) >= 2, ponder.steps


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(FAMILY_MEMBERS))
def test_t2t_eval_scores_each_problem(trained, name):
    _, folder, _ = trained
    options = [f"problem.{key}={value}" for key, value in FAMILY_MEMBERS[name].items()]
    if name == "text_pairs":
        options.append(f"problem.train={folder / 'pairs.tsv'}")
    result = run_command("t2t-eval", f"problem={name}", *options,
                         f"ckpt={folder / 'run' / 'checkpoints' / 'last.ckpt'}",
                         f"data_dir={folder / 'data'}", "split=validation",
                         "decode.beam_size=2", "decode.max_length=12", "decode.best_of=0",
                         cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    words = " ".join(result.stdout.split())  # the table's title wraps
    assert re.search(rf"{name} / validation: \d+ examples, beam 2,", words), words
    problem = load_checkpoint(folder / "run" / "checkpoints" / "last.ckpt")[1]
    metrics = next(p for p in problem if p.name == name).metrics
    for metric in metrics:
        assert re.search(rf"│ {metric} +│ +-?[\d.]+ │", result.stdout), result.stdout


def test_export_says_it_takes_fixed_layers_only(trained):
    recurrence, folder, _ = trained
    ckpt = folder / "run" / "checkpoints" / "last.ckpt"
    result = run_command("t2t-export", f"ckpt={ckpt}", f"output={folder / 'exported'}",
                         cwd=folder)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {ckpt} has model.recurrence={recurrence}; t2t-export writes models of fixed "
        f"layers (recurrence=none) only: decode this one with t2t-decode or t2t-serve")
    assert not (folder / "exported").exists()
