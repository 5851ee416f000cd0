"""t2t-export: each problem of a checkpoint as torch.export programs (encoder, decoder step),
for a mixture of one problem of each family (learned-vocabulary text, image, audio, RNA):
decoding with the saved programs gives what decoding the model gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from t2t import decoding
from t2t.export import ExportedDecoder
from t2t.inference import constraint_for, decode_ids, load_checkpoint

from .conftest import run_command

pytestmark = pytest.mark.xdist_group("export")  # one worker exports once

WORDS = "ein zwei drei vier fuenf sechs sieben acht neun zehn haus baum katze hund".split()
MEMBERS = {
    "text_pairs": {"vocab_size": 320, "holdout_size": 20},
    "ocr_rendered_text": {"train_size": 160, "eval_size": 16, "max_chars": 3},
    "morse_code": {"train_size": 160, "eval_size": 16, "max_chars": 2},
    "rna_design": {"train_size": 160, "eval_size": 16, "max_length": 24},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(a mixture checkpoint of a few steps, the folder t2t-export wrote its programs to)."""
    folder = tmp_path_factory.mktemp("export")
    rng = random.Random(0)
    tsv = folder / "pairs.tsv"
    tsv.write_text("".join(f"{' '.join(w)}\t{' '.join(reversed(w))}\n" for w in
                           (rng.choices(WORDS, k=rng.randint(1, 4)) for _ in range(300))))
    specs = [",".join([f"name:{name}", *(f"{k}:{v}" for k, v in options.items()),
                       *([f"train:'{tsv}'"] if name == "text_pairs" else [])])
             for name, options in MEMBERS.items()]
    trained = run_command(
        "t2t-train", "problem=mixture",
        f"problem.members=[{','.join('{' + s + '}' for s in specs)}]", "model=tiny",
        "trainer.max_steps=20", "optim.lr=0.003", "optim.warmup_steps=5",
        "trainer.enable_progress_bar=false", "data.num_workers=0",
        "trainer.val_check_interval=1000", "eval.decode_batches=1", "eval.examples=0",
        f"data_dir={folder / 'data'}", f"run_dir={folder / 'run'}", cwd=folder, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = folder / "run" / "checkpoints" / "last.ckpt"
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
