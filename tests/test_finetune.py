"""Starting a run from a trained checkpoint (init_from) and freezing parts of the model: from a
mixture of one problem of each family (learned-vocabulary text, image, audio, RNA) to each of
its members, and to the mixture itself."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from .conftest import FAMILY_MEMBERS, family_mixture_checkpoint, run_command

# One worker builds the mixture checkpoint once for every test here (pyproject: loadgroup).
pytestmark = pytest.mark.xdist_group("finetune")

# Each member's options, the same in the mixture and alone: a modality key (kind, options,
# vocabulary) decides whether a bottom or top loads.
MEMBERS = FAMILY_MEMBERS
COMMON = ["model=tiny", "trainer.enable_progress_bar=false", "data.num_workers=0",
          "trainer.val_check_interval=1000", "eval.decode_batches=1", "eval.examples=0"]


def values(name: str, tsv: Path) -> dict:
    return dict(MEMBERS[name], **({"train": str(tsv)} if name == "text_pairs" else {}))


def options(name: str, tsv: Path) -> list[str]:
    """The member's options as command-line overrides of a problem alone."""
    return [f"problem.{key}={value}" for key, value in values(name, tsv).items()]


def all_members(tsv: Path) -> list[str]:
    """The mixture of every member, as command-line overrides."""
    specs = [",".join([f"name:{name}", *(f"{key}:'{value}'" if key == "train" else
                                         f"{key}:{value}"
                                         for key, value in values(name, tsv).items())])
             for name in MEMBERS]
    return ["problem=mixture", f"problem.members=[{','.join('{' + s + '}' for s in specs)}]"]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a mixture checkpoint trained for a few steps, the data_dir, the text_pairs file)."""
    folder = tmp_path_factory.mktemp("finetune")
    ckpt = family_mixture_checkpoint(folder, "trainer.max_steps=8")
    return ckpt, folder / "data", folder / "pairs.tsv"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in
            torch.load(path, map_location="cpu", weights_only=True)["state_dict"].items()}


ROWS = ("body.problem_embedding.weight", "body.bos.weight")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("member", [*MEMBERS, "mixture"])
def test_a_run_starts_from_a_mixture_checkpoint_with_what_matches(mixture, member, tmp_path):
    """A new run on one member (RNA with another amount of data) or on the whole mixture
    starts from the checkpoint's weights: with a learning rate of 0 its checkpoint holds the
    mixture's body, the member's bottoms and tops and its problem row, unchanged; the line it
    prints says what loaded and what was dropped."""
    ckpt, data_dir, tsv = mixture
    if member == "mixture":
        problem = all_members(tsv)
    else:
        problem = [f"problem={member}", *options(member, tsv)]
        if member == "rna_design":
            problem.append("problem.train_size=240")  # another amount of data, same modalities
    run_dir = tmp_path / "run"
    result = run_command("t2t-train", *problem, *COMMON, "trainer.max_steps=1", "optim.lr=0",
                         f"init_from={ckpt}", f"data_dir={data_dir}", f"run_dir={run_dir}",
                         cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [s for s in result.stdout.splitlines() if s.startswith("t2t-train: init_from")]
    assert line.startswith(f"t2t-train: init_from {ckpt}: loaded body, "), line
    assert "new:" not in line, line

    mixed, tuned = weights(ckpt), weights(run_dir / "checkpoints" / "last.ckpt")
    names = list(MEMBERS) if member == "mixture" else [member]
    assert f"problem rows of {', '.join(names)}" in line
    if member != "mixture":
        assert "dropped: " in line, line  # the other members' bottoms and tops
    for key, value in tuned.items():
        if key in ROWS:
            for row, name in enumerate(names):
                assert torch.equal(value[row], mixed[key][list(MEMBERS).index(name)])
        else:
            assert torch.equal(value, mixed[key]), key
    assert set(tuned) < set(mixed) or member == "mixture"


@pytest.mark.timeout(600)
def test_frozen_modules_keep_the_checkpoints_weights_while_the_rest_trains(mixture, tmp_path):
    ckpt, data_dir, tsv = mixture
    run_dir = tmp_path / "run"
    result = run_command("t2t-train", "problem=rna_design", *options("rna_design", tsv),
                         *COMMON, "trainer.max_steps=3", "optim.lr=0.01", "optim.warmup_steps=0",
                         f"init_from={ckpt}", "freeze=[body.encoder]", f"data_dir={data_dir}",
                         f"run_dir={run_dir}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "t2t-train: frozen: body.encoder (" in result.stdout
    mixed, tuned = weights(ckpt), weights(run_dir / "checkpoints" / "last.ckpt")
    encoder = [k for k in tuned if k.startswith("body.encoder.")]
    decoder = [k for k in tuned if k.startswith("body.decoder.")]
    assert encoder and all(torch.equal(tuned[k], mixed[k]) for k in encoder)
    assert any(not torch.equal(tuned[k], mixed[k]) for k in decoder)


@pytest.mark.timeout(600)
def test_init_from_and_freeze_bad_inputs_are_one_line(mixture, tmp_path):
    ckpt, data_dir, tsv = mixture
    rna = ["problem=rna_design", *options("rna_design", tsv), *COMMON,
           "trainer.max_steps=1", f"data_dir={data_dir}", f"run_dir={tmp_path / 'run'}"]

    def last_line(*extra: str) -> str:
        result = run_command("t2t-train", *rna, *extra, cwd=tmp_path)
        assert result.returncode == 1, result.stdout[-2000:]
        return result.stderr.strip().splitlines()[-1]

    missing = tmp_path / "absent.ckpt"
    assert last_line(f"init_from={missing}") == (
        f"error: init_from={missing}: no such checkpoint; pass a .ckpt file, such as "
        f"RUN_DIR/checkpoints/last.ckpt")
    assert last_line(f"init_from={ckpt}", "model.d_model=32") == (
        f"error: init_from={ckpt} holds another model (d_model 64 vs 32 now); fine-tune "
        f"with its model settings (model=... and model.* as trained)")
    assert last_line("freeze=[body.encodr]").startswith(
        "error: unknown module 'body.encodr' in freeze; did you mean body.encoder")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.timeout(900)
def test_a_users_own_text_pairs_continue_a_model_in_its_vocabulary(mixture, tmp_path):
    """New parallel text (other words) fine-tuned from a trained model: with
    problem.vocab_file=the checkpoint its text is cut into the model's subwords, so every
    embedding loads; learning a vocabulary of its own keeps only the body. Under another
    problem name it starts from the problem token and BOS of the one with its modalities."""
    ckpt, _, _ = mixture
    tsv = tmp_path / "mine.tsv"
    rng = random.Random(1)
    english = "one two three four five six seven eight nine ten house tree cat dog".split()
    tsv.write_text("".join(f"{' '.join(w)}\t{' '.join(reversed(w))}\n" for w in
                           (rng.choices(english, k=rng.randint(1, 4)) for _ in range(200))))
    mine = ["problem=text_pairs", f"problem.train={tsv}", "problem.holdout_size=20",
            "problem.vocab_size=320", *COMMON, "trainer.max_steps=1", "optim.lr=0",
            f"init_from={ckpt}", f"data_dir={tmp_path / 'data'}"]

    def init_line(*extra: str, run: str) -> str:
        result = run_command("t2t-train", *mine, *extra, f"run_dir={tmp_path / run}",
                             cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (line,) = [s for s in result.stdout.splitlines() if s.startswith("t2t-train: init_")]
        return line

    line = init_line(f"problem.vocab_file={ckpt}", run="in-its-vocabulary")
    assert "new:" not in line and "loaded body, bottoms.text:spm320:" in line, line
    tuned = weights(tmp_path / "in-its-vocabulary" / "checkpoints" / "last.ckpt")
    mixed = weights(ckpt)
    embeddings = [k for k in tuned if k.startswith("bottoms.text:spm320:")]
    assert embeddings and all(torch.equal(tuned[k], mixed[k]) for k in embeddings)

    line = init_line(run="own-vocabulary")
    assert "loaded body;" in line and "new: bottoms.text:spm320:" in line, line

    # A problem of another name in the same modalities (Multi30k's model continued on
    # text_pairs) starts from that problem's token and BOS, not from random ones.
    plugin = tmp_path / "my_pairs.py"
    plugin.write_text("from problems.text_pairs import TextPairs\n"
                      "from t2t import register_problem\n\n\n"
                      "@register_problem('my_pairs')\n"
                      "class MyPairs(TextPairs):\n"
                      "    \"\"\"text_pairs under another name\"\"\"\n")
    mine[0] = "problem=my_pairs"
    line = init_line(f"usr_dir={plugin}", f"problem.vocab_file={ckpt}", run="renamed")
    assert "problem rows of my_pairs (from text_pairs)" in line and "new:" not in line, line
    renamed = weights(tmp_path / "renamed" / "checkpoints" / "last.ckpt")
    row = list(MEMBERS).index("text_pairs")
    for key in ROWS:
        assert torch.equal(renamed[key][0], mixed[key][row])


@pytest.mark.timeout(600)
def test_vocab_file_bad_inputs_are_one_line(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a b\tb a\n" * 30)
    not_a_model = tmp_path / "vocab.model"
    not_a_model.write_bytes(b"not a sentencepiece model")

    def last_line(vocab_file: Path) -> str:
        result = run_command("t2t-datagen", "problem=text_pairs", f"problem.train={tsv}",
                             "problem.holdout_size=5", f"problem.vocab_file={vocab_file}",
                             f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
        assert result.returncode == 1, result.stdout[-2000:]
        return result.stderr.strip().splitlines()[-1]

    missing = tmp_path / "absent.ckpt"
    assert last_line(missing) == (
        f"error: vocab_file={missing}: no such file; pass a t2t-train checkpoint (.ckpt) or a "
        f"vocabulary file from a data_dir's vocab/ folder")
    assert last_line(not_a_model).startswith(
        f"error: vocab_file={not_a_model}: not a sentencepiece vocabulary (")
