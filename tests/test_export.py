"""t2t-export: each problem of a checkpoint as torch.export programs (encoder, decoder step),
for a mixture of one problem of each family (learned-vocabulary text, image, audio, RNA):
decoding with the saved programs gives what decoding the model gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2t import decoding
from t2t.export import ExportedDecoder
from t2t.inference import constraint_for, decode_ids, load_checkpoint

from .conftest import FAMILY_MEMBERS, family_mixture_checkpoint, run_command

pytestmark = pytest.mark.xdist_group("export")  # one worker exports once

MEMBERS = FAMILY_MEMBERS


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(a mixture checkpoint of a few steps, the folder t2t-export wrote its programs to)."""
    folder = tmp_path_factory.mktemp("export")
    ckpt = family_mixture_checkpoint(folder, "trainer.max_steps=20", "optim.lr=0.003",
                                     "optim.warmup_steps=5")
    result = run_command("t2t-export", f"ckpt={ckpt}", f"output={folder / 'exported'}",
                         cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in MEMBERS:
        assert f"t2t-export: {name} -> {folder / 'exported' / name}/encoder.pt2" in result.stdout
    return ckpt, folder / "exported"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(MEMBERS))
def test_decoding_with_the_exported_programs_equals_decoding_the_model(exported, name):
    """Greedy (and for text beam search) over a batch of another size and other lengths than
    the export was traced with: the same tokens, and first-step logits within float error."""
    ckpt, folder = exported
    model, problems = load_checkpoint(ckpt)
    index = [p.name for p in problems].index(name)
    problem = problems[index]
    samples = list(problem.generate_samples("validation"))[:5]
    loaded = [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in samples]
    assert len({problem.inputs.length(problem.inputs.encode(s["inputs"])) for s in samples}) > 1
    inputs, inputs_pad = problem.inputs.collate(loaded)
    allowed = constraint_for(problem, inputs, inputs_pad)
    program = ExportedDecoder.load(folder / name)

    state = program.start(inputs, inputs_pad, 24)
    logits, _ = program.step(None, state)
    eager_logits, _ = model.decoder(index).step(None, model.decoder(index).start(
        inputs, inputs_pad, 24))
    assert torch.allclose(logits, eager_logits, atol=1e-4), (logits - eager_logits).abs().max()

    eager = decode_ids(model, index, inputs, inputs_pad, beam_size=1, max_length=24,
                       allowed=allowed)
    ids = decoding.greedy(program, program.start(inputs, inputs_pad, 24),
                          batch_size=len(loaded), max_length=24, allowed=allowed)
    assert decoding.strip(ids) == eager
    if name == "text_pairs":
        eager = decode_ids(model, index, inputs, inputs_pad, beam_size=4, max_length=24)
        ids, _ = decoding.beam_search(program, program.start(inputs, inputs_pad, 24),
                                      batch_size=len(loaded), beam_size=4, max_length=24)
        assert decoding.strip(ids) == eager
