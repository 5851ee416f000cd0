"""RNA design: structure parsing and errors, the modalities, the pairing constraint, the
verifier, the search, rna_design / rna_eterna100, and t2t-decode / t2t-eval end to end."""

from __future__ import annotations

import ast
import itertools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.rna import (
    BASE_IDS,
    PAIRS,
    NucleotideModality,
    PairingConstraint,
    StructureModality,
    pair_table,
    pairable,
    parse_design_input,
)
from problems import rna_search
from problems.rna_design import (
    EXCLUDED,
    RnaDesign,
    RnaEterna100,
    design_units,
    naive_design,
    read_puzzles,
    redrawn_design,
    repaired_design,
    solved,
    structure_distance,
    structure_hash,
)
from problems.rna_search import (
    adaptive_walk,
    ensemble_search,
    fold,
    inverse_fold_restarts,
    loop_preferences,
    random_design,
    rival_search,
    score,
    targeted_design,
)
from t2t import decoding
from t2t.errors import UserError
from t2t.model import PRESETS, ModelConfig, T2TModel, Transformer, timing_signal

from .conftest import dataset_dir, run_command

BASE_OF = {i: b for b, i in BASE_IDS.items()}


# -- dot-bracket -------------------------------------------------------------------------------


def test_pair_table():
    assert pair_table("((..))") == [5, 4, -1, -1, 1, 0]
    assert pair_table("(.)(.)") == [2, -1, 0, 5, -1, 3]


@pytest.mark.parametrize("structure, message", [
    ("((..)", "position 1: '\\(' is never closed"),
    ("(..))", "position 5: '\\)' closes no '\\('"),
    ("((..]]", "position 5: '\\]' is not one of"),
    ("..x..", "position 3: 'x' is not one of"),
    ("", "non-empty"),
])
def test_invalid_dot_bracket_names_the_position(structure, message):
    with pytest.raises(UserError, match=message):
        pair_table(structure)


def test_too_long_structure_is_a_clear_error():
    with pytest.raises(UserError, match="length 600 is longer than the 512"):
        StructureModality().encode("." * 600)


@pytest.mark.parametrize("raw, message", [
    ("((..)) NN", "constraint has length 2"),
    ("((..)) NNXNNN", "constraint position 3: 'X' is not an IUPAC"),
    ("((..)) ANNNNA", "positions 1 and 6 pair .* A and A cannot"),
])
def test_bad_constraints_are_clear_errors(raw, message):
    with pytest.raises(UserError, match=message):
        parse_design_input(raw)


# -- modalities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["((((....))))..", "((((....)))) NNNNGAAANNNN",
                                 {"structure": "(...)", "constraint": "SNNNS"}])
def test_structure_round_trips_through_storage(raw):
    modality = StructureModality()
    loaded = modality.load(modality.encode(raw))
    structure, constraint = parse_design_input(raw)
    assert loaded.shape == (len(structure), 3)
    assert parse_design_input(modality.decode(loaded)) == (structure, constraint)
    assert [j - 1 for j in loaded[:, 2].tolist()] == pair_table(structure)


TINY_BODY = ModelConfig(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                        d_ff=64, dropout=0.0, max_positions=64)


def test_structure_embedding_sees_the_partner():
    modality = StructureModality()
    bottom = modality.bottom(32)
    a = modality.load(modality.encode("((....))"))
    b = modality.load(modality.encode("(.(..).)"))  # same symbols at 0 and 7, other partners
    x, _ = bottom(*modality.collate([a, b]), Transformer(TINY_BODY).input_positions(8))
    assert torch.allclose(x[0, 3], x[1, 3])  # both unpaired dots
    assert not torch.allclose(x[0, 1], x[1, 1])  # paired vs unpaired
    assert not torch.allclose(x[0, 2], x[1, 2])  # a dot vs a '(' paired with 5


def test_structure_bottom_gets_the_body_positions_of_its_inputs():
    # The body owns the position signal and hands the bottom row i = what the encoder adds to
    # input i, behind the problem token: the table the bottom once built for itself
    # (timing_signal(max_length + 1)[1:]), so trained checkpoints see the same inputs.
    structure = StructureModality(max_length=40)
    model = T2TModel(TINY_BODY, [(structure, NucleotideModality())]).eval()
    rows, pad = structure.collate([structure.load(structure.encode(s))
                                   for s in ("((((....))))..", "(.(..).)")])
    bottom = model.bottoms[model.keys[0][0]]
    seen = []
    bottom.register_forward_hook(lambda module, args, out: seen.append((args, out)))
    memory, _ = model.encode(0, rows, pad)
    (_, _, positions), (x, _) = seen[0]
    L = rows.size(1)
    assert positions.shape == (L, 32)
    assert torch.equal(positions, model.body.positions[1:L + 1])
    before = timing_signal(structure.max_length + 1, 32)[1:]
    assert torch.allclose(positions, before[:L], atol=1e-6, rtol=0)
    assert torch.allclose(x, bottom(rows, pad, before[:L])[0], atol=1e-6, rtol=0)
    # The pair (0, 11) of row 0: each side reads the other's position signal.
    with torch.no_grad():
        partner_part = x[0, 0] - bottom.symbol(rows[0, 0, 0]) - bottom.constraint(rows[0, 0, 1])
        partner_part -= bottom.offset(bottom._bucket(torch.tensor(11)))
        assert torch.allclose(partner_part, bottom.partner_position(before[11]), atol=1e-5)
    # Parameters as before (checkpoints load); the signal is not part of the state.
    assert {k: tuple(v.shape) for k, v in bottom.state_dict().items()} == {
        "symbol.weight": (4, 32), "constraint.weight": (16, 32), "offset.weight": (65, 32),
        "partner_position.weight": (32, 32)}
    # Inputs beyond the position table: the body's error, before the bottom indexes it.
    wide = StructureModality(max_length=100)  # the same bottom: max_length is not in it
    long = wide.collate([wide.load(wide.encode("(" * 35 + ")" * 35))])
    with pytest.raises(ValueError, match="max_positions=64"):
        model.encode(0, *long)


def test_modalities_do_not_import_the_model():
    # Bottoms get what the body knows (positions) from T2TModel, not by importing it.
    for path in sorted((Path(__file__).resolve().parents[1] / "modalities").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "t2t.model", path.name
            elif isinstance(node, ast.Import):
                assert all(a.name != "t2t.model" for a in node.names), path.name


def test_sequences_round_trip_and_bad_letters_are_named():
    modality = NucleotideModality()
    assert modality.decode(modality.load(modality.encode("acgut"))) == "ACGUU"
    with pytest.raises(UserError, match="position 3: 'X'"):
        modality.encode("ACXU")


# -- the pairing constraint -------------------------------------------------------------------


class RandomModel:
    """An IncrementalDecoder with random logits over the 8 sequence ids."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, tokens, state):
        return torch.randn(state, 8, generator=self.generator), state

    def reorder(self, state, index):
        return len(index)


STRUCTURES = ["((((....))))", "..((..((...))..))..", "(((...)))((...)).", ".....",
              "((((((....)))))).....((((....)))) " + "N" * 6 + "GAAA" + "N" * 17 + "K" + "N" * 5]


@pytest.mark.parametrize("seed", range(5))
def test_sampled_sequences_always_pair_and_keep_locked_bases(seed):
    modality = StructureModality()
    rows, _ = modality.collate([modality.load(modality.encode(s)) for s in STRUCTURES])
    allowed = PairingConstraint(rows, 8)
    ids = decoding.sample(RandomModel(seed), len(STRUCTURES), len(STRUCTURES), 60,
                          allowed=allowed)
    for raw, tokens in zip(STRUCTURES, decoding.strip(ids), strict=True):
        structure, constraint = parse_design_input(raw)
        sequence = "".join(BASE_OF[t] for t in tokens)
        assert len(sequence) == len(structure)  # EOS exactly at the end
        for i, j in enumerate(pair_table(structure)):
            if j > i:
                assert sequence[j] in PAIRS[sequence[i]], (raw, sequence, i, j)
        assert all(b in {"N": "ACGU", "G": "G", "A": "A", "K": "GU"}[c]
                   for b, c in zip(sequence, constraint, strict=True))


def test_beam_search_with_the_constraint_pairs_too():
    modality = StructureModality()
    rows, _ = modality.collate([modality.load(modality.encode(s)) for s in STRUCTURES[:3]])
    ids, _ = decoding.beam_search(RandomModel(0), 3, 3, beam_size=4, max_length=40,
                                  allowed=PairingConstraint(rows, 8))
    for raw, tokens in zip(STRUCTURES, decoding.strip(ids), strict=False):
        sequence = "".join(BASE_OF[t] for t in tokens)
        assert score(raw, sequence) >= 0 and len(sequence) == len(raw)
        assert all(sequence[j] in PAIRS[sequence[i]]
                   for i, j in enumerate(pair_table(raw)) if j > i)


# -- verifier, metrics, search ------------------------------------------------------------------


def test_score_is_one_exactly_for_a_solution():
    structure = "((((....))))"
    assert fold("GGGGAAAACCCC")[0] == structure
    assert score(structure, "GGGGAAAACCCC") == 1.0
    assert 0 <= score(structure, "GGGGAAAAAAAA") < 1.0
    assert score(structure, "GGGGAAAACCC") == 0.0  # wrong length
    assert score(structure, "GGGGAAAACCCX") == 0.0
    assert score(structure, "GGGGAAAACCCC", "NNNNNNNNNNNA") == 0.0  # breaks a locked base
    problem = RnaDesign()
    assert problem.verify("((((....))))", "GGGGAAAACCCC") == 1.0
    assert problem.verify("((((....)))) NNNNNNNNNNNG", "GGGGAAAACCCC") == 0.0


def test_metrics_fold_the_predictions():
    references = [["((((....))))"], ["((((....))))"]]
    assert solved(["GGGGAAAACCCC", "AAAAAAAAAAAA"], references) == 0.5
    assert structure_distance(["GGGGAAAACCCC", "AAAAAAAAAAAA"], references) == pytest.approx(
        8 / 12 / 2)
    assert structure_distance(["GGGG"], [["((((....))))"]]) == 1.0


@pytest.mark.parametrize("searcher", [adaptive_walk, ensemble_search, rival_search])
def test_searches_solve_small_targets_and_respect_constraints(searcher):
    rng = random.Random(0)
    for structure in ["(((((......)))))", "((((((.((((....))))))).)))..........",
                      "..((((....))))((((....))))((((...))))"]:
        constraint = "N" * (len(structure) - 1) + "C"
        design = searcher(structure, constraint, [], time.monotonic() + 20, rng)
        assert fold(design)[0] == structure and design.endswith("C")


def test_adaptive_walk_takes_turns_and_retires_stuck_walks(monkeypatch):
    """Walks take turns of `slice_steps` mutations, so a poor first start cannot spend the
    budget; a walk `patience` mutations without improvement gives its place to the next start,
    then to fresh targeted designs."""
    structure = "(((....)))(((....)))(((....)))"  # the targeted design misfolds it
    starts = [base * len(structure) for base in "ACU"]  # none folds into the target
    turns = []

    def stuck(walker, *args):  # records whose turn it is; never improves
        turns.append("".join(walker.sequence))
        walker.stale += 1

    monkeypatch.setattr(rna_search, "_mutate", stuck)
    adaptive_walk(structure, "N" * len(structure), starts, time.monotonic() + 0.5,
                  random.Random(0), patience=3, walkers=2, slice_steps=2)
    fresh = targeted_design(structure, "N" * len(structure), random.Random(0))
    a, b, c = starts
    assert turns[:12] == [a, a, b, b, a, b, c, c, fresh, fresh, c, fresh]


# Eterna100 #67 "Simple Single Bond": a lone pair closing a loop around a hairpin.
SINGLE_BOND = "......(......((((.....))))......)......................"


def test_ensemble_search_solves_a_lone_pair_the_walk_does_not():
    """The reason the ensemble objective is there: on Eterna100 #67 the MFE walk's steps all
    tie (the lone pair never forms, whatever one mutation does), while the target's share of
    the ensemble still says which mutations bring it closer. Both searches get the same
    number of folds and are deterministic per seed."""
    free = "N" * len(SINGLE_BOND)
    ensemble = ensemble_search(SINGLE_BOND, free, [], math.inf, random.Random(0),
                               max_steps=3000)
    walked = adaptive_walk(SINGLE_BOND, free, [], math.inf, random.Random(0), max_steps=3000)
    assert fold(ensemble)[0] == SINGLE_BOND
    assert fold(walked)[0] != SINGLE_BOND


def test_ensemble_search_never_evaluates_a_sequence_twice_and_starts_from_its_starts(
        monkeypatch):
    evaluated = []
    original = rna_search._ensemble_evaluate

    def recording(structure, partner, sequence):
        evaluated.append(sequence)
        return original(structure, partner, sequence)

    monkeypatch.setattr(rna_search, "_ensemble_evaluate", recording)
    structure = "(((....)))(((....)))(((....)))"  # the targeted design misfolds it
    start = "A" * len(structure)  # folds into nothing
    design = ensemble_search(structure, "N" * len(structure), [start], math.inf,
                             random.Random(0), max_steps=300)
    assert evaluated[0] == start
    assert len(evaluated) == len(set(evaluated)) <= 300
    assert design in evaluated


def test_a_proposal_in_the_loop_steers_the_ensemble_search_within_the_constraint(monkeypatch):
    """The hook a model in the loop plugs into: each parent's base probabilities are asked
    for once, and a share of the moves draw from them, never against the constraint. A
    proposal that knows a solution of Eterna100 #67 reaches one in fewer evaluations than
    the search without it (same seed, deterministic); one that knows the solution except
    where the constraint forbids it still designs within the constraint."""
    free = "N" * len(SINGLE_BOND)
    solution = ensemble_search(SINGLE_BOND, free, [], math.inf, random.Random(0),
                               max_steps=3000)
    assert fold(solution)[0] == SINGLE_BOND
    knows = np.full((len(SINGLE_BOND), 4), 0.01)
    for k, base in enumerate(solution):
        knows[k, rna_search.BASES.index(base)] = 1.0

    evaluated, asked = [], []
    original = rna_search._ensemble_evaluate

    def recording(structure, partner, sequence):
        evaluated.append(sequence)
        return original(structure, partner, sequence)

    def proposal(sequence):
        asked.append(sequence)
        return knows

    monkeypatch.setattr(rna_search, "_ensemble_evaluate", recording)
    ensemble_search(SINGLE_BOND, free, [], math.inf, random.Random(1), max_steps=3000)
    alone = len(evaluated)
    evaluated.clear()
    guided = ensemble_search(SINGLE_BOND, free, [], math.inf, random.Random(1),
                             max_steps=3000, proposal=proposal)
    assert fold(guided)[0] == SINGLE_BOND
    assert len(evaluated) < alone
    assert len(asked) == len(set(asked)) and set(asked) <= set(evaluated)

    loop = SINGLE_BOND.index(".")
    other = next(b for b in "ACGU" if b != solution[loop])
    constraint = free[:loop] + other + free[loop + 1:]
    constrained = ensemble_search(SINGLE_BOND, constraint, [], math.inf, random.Random(1),
                                  max_steps=3000, proposal=proposal)
    assert constrained[loop] == other


def test_a_part_designed_alone_gets_the_proposal_of_its_positions_in_the_whole():
    """design_by_parts designs a part on its own; its proposal is the whole's, asked with the
    part in place in the design as it is then, cut to the part's rows."""
    design = list("AAAAAAAAAA")
    whole = []

    def proposal(sequence):
        whole.append(sequence)
        return np.arange(len(sequence) * 4, dtype=float).reshape(-1, 4)

    in_part = rna_search._in_part(proposal, design, 3, 6)
    assert in_part("GGCC").tolist() == np.arange(12, 28, dtype=float).reshape(4, 4).tolist()
    design[0] = "U"  # an earlier part designed in the meantime
    in_part("CCGG")
    assert whole == ["AAAGGCCAAA", "UAACCGGAAA"]
    assert rna_search._in_part(None, design, 3, 6) is None


def test_rival_search_never_folds_a_sequence_twice_and_starts_from_its_starts(monkeypatch):
    folded = []
    original = rna_search._evaluate

    def recording(structure, sequence):
        folded.append(sequence)
        return original(structure, sequence)

    monkeypatch.setattr(rna_search, "_evaluate", recording)
    structure = "(((....)))(((....)))(((....)))"
    start = "A" * len(structure)  # folds into nothing
    design = rival_search(structure, "N" * len(structure), [start], math.inf,
                          random.Random(0), max_steps=300)
    assert folded[0] == start
    assert len(folded) == len(set(folded)) <= 300
    assert design in folded


def test_rival_search_is_the_same_run_for_the_same_seed_in_any_process():
    """The same rng, the same folds, whatever the process's string hashing (sets of sequences
    iterate in hash order)."""
    import os
    import subprocess
    import sys

    from .conftest import REPO

    code = """
import math, random
from problems import rna_search
folded = []
original = rna_search._evaluate
def recording(structure, sequence):
    folded.append(sequence)
    return original(structure, sequence)
rna_search._evaluate = recording
rna_search.rival_search(TARGET, "N" * len(TARGET), [], math.inf, random.Random(0), max_steps=30)
print(" ".join(folded))
""".replace("TARGET", repr(SINGLE_BOND))
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60)
            for seed in ("1", "2")]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-2000:]
    assert len(runs[0].stdout.split()) == 30
    assert runs[0].stdout == runs[1].stdout


@pytest.mark.parametrize("refinement", sorted(rna_search.REFINEMENTS))
def test_every_refinement_refines_through_the_problem(refinement, monkeypatch):
    """rna_eterna100 refines with its class's refinement (benchmarks/rna_eterna100.py sets
    it): each one solves a target the targeted design misfolds, within the constraint."""
    structure = "(((....)))(((....)))(((....)))"
    problem = RnaEterna100()
    monkeypatch.setattr(problem, "refinement", refinement)
    constraint = "N" * (len(structure) - 1) + "U"
    start = targeted_design(structure, constraint, random.Random(0))
    assert fold(start)[0] != structure
    design = problem.refine(f"{structure} {constraint}", [start], time.monotonic() + 20)
    assert fold(design)[0] == structure and design.endswith("U")


def test_parts_are_the_largest_pair_closed_substructures_that_fit():
    #            0         1         2         3         4         5
    #            0123456789012345678901234567890123456789012345678901
    structure = "..((((....))))..(((..((((...))))..((((...))))..)))..."
    assert rna_search.parts(pair_table(structure), 20) == [(2, 13), (21, 31), (34, 44)]
    assert rna_search.parts(pair_table(structure), 40) == [(2, 13), (16, 49)]
    assert rna_search.parts(pair_table("." * 30), 20) == []


def test_design_by_parts_designs_each_distinct_part_once_then_the_whole(monkeypatch):
    calls = []

    def recording(structure, constraint, starts, deadline, rng, endgame_share, proposal):
        assert proposal is None  # none given: none passed on, to a part or to the whole
        calls.append((structure, list(starts)))
        return "GGGGAAAACCCC" if len(structure) == 12 else starts[0]

    monkeypatch.setattr(rna_search, "walk_then_ensemble", recording)
    monkeypatch.setattr(rna_search, "PART_LENGTH", 15)
    hairpin = "((((....))))"
    structure = f"{hairpin}..{hairpin}..{hairpin}"
    start = "A" * len(structure)
    design = rna_search.design_by_parts(structure, "N" * len(structure), [start],
                                        time.monotonic() + 10, random.Random(0))
    assembled = "GGGGAAAACCCCAAGGGGAAAACCCCAAGGGGAAAACCCC"
    assert calls == [(hairpin, ["A" * 12]), (structure, [assembled, start])]
    assert design == assembled


def test_loop_preferences_boost_hairpins_and_one_by_one_loops():
    #            0123456789012345678
    structure = "((.((......)).))..."
    preferred = loop_preferences(pair_table(structure))
    assert preferred == {5: "G", 10: "A", 2: "G", 13: "G"}
    assert loop_preferences(pair_table("((...))")) == {}  # a triloop gets no boost


def test_random_design_fits_pairs_and_constraint():
    rng = random.Random(1)
    for _ in range(20):
        structure = "((..((...))..))."
        design = random_design(structure, "GNNNNNNNNNNNNNNN", rng)
        assert design[0] == "G" and all(design[j] in PAIRS[design[i]]
                                        for i, j in enumerate(pair_table(structure)) if j > i)


def test_inverse_fold_baseline_reports_what_it_finds():
    found = []
    design = inverse_fold_restarts("((((....))))", time.monotonic() + 10, random.Random(0),
                                   found=lambda d, dist: found.append(dist))
    assert fold(design)[0] == "((((....))))" and found[-1] == 0


def test_targeted_design_pairs_gc_boosts_hairpins_and_keeps_the_constraint():
    structure = "((((......))))..(((...)))"
    partner = pair_table(structure)
    design = targeted_design(structure, "N" * len(structure), random.Random(0))
    assert all({design[i], design[j]} == {"G", "C"} for i, j in enumerate(partner) if j > i)
    assert design[4:10] == "GAAAAA"  # a G-A first mismatch in the six-base hairpin
    assert design[14:16] == "AA" and design[19:22] == "AAA"  # no boost in a triloop
    orientations = {targeted_design(structure, "N" * len(structure), random.Random(seed))[:4]
                    for seed in range(10)}
    assert len(orientations) > 1  # restarts differ
    locked = "U" + "N" * 3 + "U" + "N" * 8 + "A" + "N" * 11  # pair (0, 13) must be UA
    design = targeted_design(structure, locked, random.Random(0))
    assert design[0] == "U" and design[13] == "A" and design[4] == "U"


def test_naive_design_pairs_gc_with_a_loops():
    assert naive_design("((..)).") == "GGAACCA"


# -- problems ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sequences", ["designed", "random", "repaired"])
def test_rna_design_samples_are_exact_solutions_and_deterministic(sequences):
    problem = RnaDesign(train_size=30, eval_size=10, min_length=20, max_length=60,
                        sequences=sequences)
    samples = list(problem.generate_samples("validation"))
    assert len(samples) == 10
    for sample in samples:
        assert fold(sample["targets"])[0] == sample["inputs"]
        assert sample["references"] == [sample["inputs"]] and 20 <= len(sample["inputs"]) <= 60
        assert "(" in sample["inputs"]
    again = RnaDesign(train_size=30, eval_size=10, min_length=20, max_length=60,
                      sequences=sequences)
    assert list(again.generate_samples("validation")) == samples
    train = list(itertools.islice(problem.generate_samples("train"), 10))
    assert {s["inputs"] for s in train}.isdisjoint({s["inputs"] for s in samples})


def test_designed_training_sequences_look_like_designs():
    """`sequences=designed` targets are targeted designs with some pairs and loop bases
    redrawn: GC-rich helices and A-rich loops, unlike random sequences."""
    structure = "((((((....))))))....((((((......))))))"
    rng = random.Random(3)
    assert redrawn_design(structure, 0.0, random.Random(3)) == targeted_design(
        structure, "N" * len(structure), random.Random(3))
    for share in (0.3, 1.0):
        design = redrawn_design(structure, share, rng)
        assert all(pairable(design[i], design[j])
                   for i, j in enumerate(pair_table(structure)) if i < j)
    designed = RnaDesign(train_size=200, min_length=40, max_length=80)
    random_ = RnaDesign(train_size=200, min_length=40, max_length=80, sequences="random")

    def loop_a_share(problem):
        loops = "".join(b for s in problem.generate_samples("train")
                        for b, c in zip(s["targets"], s["inputs"], strict=True) if c == ".")
        return loops.count("A") / len(loops)

    assert loop_a_share(designed) > 0.6 > 0.4 > loop_a_share(random_)


def test_repaired_designs_differ_from_the_targeted_design_only_where_the_fold_needs_it():
    """sequences=repaired: the targeted design where it folds right; else a fix of it where
    putting back any one changed pair or loop base (to the targeted design's) misfolds."""
    easy = "((((((....)))))).....((((....))))"
    assert repaired_design(easy, random.Random(5)) == targeted_design(
        easy, "N" * len(easy), random.Random(5))
    hard = [s["inputs"] for s in RnaDesign(eval_size=8, min_length=40, max_length=70,
                                           sequences="random", hard_share=1.0)
            .generate_samples("validation")]
    repaired = 0
    for structure in hard:
        design = repaired_design(structure, random.Random(7))
        start = targeted_design(structure, "N" * len(structure), random.Random(7))
        if fold(start)[0] == structure:  # this orientation of the pairs folds right as is
            assert design == start
            continue
        if design is None:  # the walk failed within its steps: the sample is drawn again
            continue
        repaired += 1
        assert fold(design)[0] == structure
        changed = [unit for unit in design_units(structure)
                   if any(design[k] != start[k] for k in unit)]
        assert changed
        for unit in changed:
            back = list(design)
            for k in unit:
                back[k] = start[k]
            assert fold("".join(back))[0] != structure, (structure, design, unit)
    assert repaired >= 3, f"{repaired} of {len(hard)} hard structures repaired"


def test_hard_share_draws_structures_the_targeted_design_misfolds():
    """hard_share=1: every sample is one the search's quick candidate gets wrong, and still
    an exact solution."""
    hard = list(RnaDesign(eval_size=12, min_length=60, max_length=100,
                          hard_share=1.0).generate_samples("validation"))
    assert len(hard) == 12
    for sample in hard:
        structure = sample["inputs"]
        assert fold(sample["targets"])[0] == structure
        assert fold(targeted_design(structure, "N" * len(structure), random.Random(0)))[0] \
            != structure
    with pytest.raises(UserError, match="hard_share is a share of the samples, between 0 and 1"):
        RnaDesign(hard_share=1.5)


def test_rna_design_bad_sequences_option_is_a_clear_error():
    with pytest.raises(UserError,
                       match="sequences='natural' is not one of: designed, random, repaired"):
        RnaDesign(sequences="natural")


def test_rna_design_never_emits_an_eterna100_structure():
    rna = dataset_dir("rna")
    for version in ("v1", "v2"):
        for puzzle in read_puzzles(rna / f"eterna100_{version}.tsv"):
            assert structure_hash(puzzle["structure"]) in EXCLUDED
    # Hairpins of Eterna's first puzzle's shape come up by chance at length 16: never here.
    problem = RnaDesign(train_size=2000, min_length=16, max_length=16)
    assert all(structure_hash(s["inputs"]) not in EXCLUDED
               for s in problem.generate_samples("train"))


def test_eterna100_reads_both_file_layouts(tmp_path):
    ours = read_puzzles(dataset_dir("rna") / "eterna100_v2.tsv")
    assert len(ours) == 100 and ours[0] == {"id": "1", "name": "Simple Hairpin",
                                            "structure": "(((((......)))))"}
    theirs = tmp_path / "eterna100v2_vienna2.tsv"
    theirs.write_text("Puzzle #\tPuzzle Name\tEterna ID\tAuthor\tSecondary Structure\t"
                      "Sample Solution\n1\tSimple Hairpin\t6141752\tSneh\t(((((......)))))\t"
                      "CCGCCGAAAAAGGCGG\n")
    assert RnaEterna100(raw_dir=str(tmp_path)).puzzles() == ours[:1]


def test_eterna100_bad_row_names_path_and_line(tmp_path):
    path = tmp_path / "eterna100_v2.tsv"
    path.write_text("id\tname\tstructure\n1\tok\t((..))\n2\tbad\t((..)\n")
    with pytest.raises(UserError, match=r"eterna100_v2.tsv:3: structure position 1"):
        read_puzzles(path)


def test_eterna100_offline_names_raw_dir_and_url(tmp_path, monkeypatch):
    import problems.rna_design

    monkeypatch.setattr(problems.rna_design, "ETERNA100_URL", "http://127.0.0.1:9/")
    with pytest.raises(UserError, match=r"127\.0\.0\.1:9/eterna100v2_vienna2\.tsv.*problem\."
                                        r"raw_dir"):
        RnaEterna100(raw_dir=str(tmp_path)).puzzles()


# -- search through the model ----------------------------------------------------------------------


def test_search_stops_at_a_verified_design_or_refines_within_budget():
    from t2t.inference import decode_raw

    problem = RnaDesign()
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    targets = ["((((((....)))))).....((((....))))", "((((....)))) NNNNGAAANNNN"]
    start = time.monotonic()
    designs = decode_raw(model, problem, 0, targets, best_of=16, time_budget_s=20)
    assert time.monotonic() - start < 45
    for raw, design in zip(targets, designs, strict=True):
        assert problem.verify(raw, design) == 1.0, (raw, design)
        line = problem.format_prediction(raw, design)
        assert line.endswith("solved") and design in line


def test_search_takes_a_quick_candidate_that_verifies_without_sampling(monkeypatch):
    from t2t import decoding
    from t2t.inference import decode_raw

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although the quick candidate verified")

    monkeypatch.setattr(decoding, "sample", no_sampling)
    problem = RnaDesign()
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    target = "((((((....)))))).....((((....))))"
    quick = problem.quick_candidates(target)
    assert problem.verify(target, quick[0]) == 1.0
    assert decode_raw(model, problem, 0, [target], best_of=16, time_budget_s=20) == quick


def test_search_refines_the_quick_candidate_before_sampling(monkeypatch):
    from t2t.inference import decode_raw

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although a short walk from the quick candidate solves")

    monkeypatch.setattr(decoding, "sample", no_sampling)
    problem = RnaDesign()
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    target = "(((....)))(((....)))(((....)))"
    assert problem.verify(target, problem.quick_candidates(target)[0]) < 1.0
    design, = decode_raw(model, problem, 0, [target], best_of=16, time_budget_s=30)
    assert problem.verify(target, design) == 1.0


def test_search_samples_only_structures_the_model_was_trained_on(monkeypatch):
    """Beyond the longest training structure the model's samples are not worth their time."""
    from t2t.inference import decode_raw

    calls, real_sample = [], decoding.sample

    def counted_sampling(*args, **kwargs):
        calls.append(1)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(decoding, "sample", counted_sampling)
    target = "(((((.)))))...(((((.)))))"  # hairpins of one base: nothing folds into it
    for max_length, sampled in ((len(target), True), (len(target) - 1, False)):
        calls.clear()
        problem = RnaDesign(min_length=12, max_length=max_length)
        assert problem.model_covers(target) is sampled
        model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
        design, = decode_raw(model, problem, 0, [target], best_of=16, time_budget_s=1)
        assert len(design) == len(target) and problem.verify(target, design) < 1.0
        assert bool(calls) is sampled, (max_length, calls)


def test_search_without_quick_candidates_samples_or_says_it_needs_a_model(monkeypatch):
    """A problem with a verifier but no heuristic: the model's samples are all a search has,
    even beyond the structures it trained on; without a model there is nothing to start from."""
    from t2t.errors import UserError
    from t2t.inference import search

    monkeypatch.setattr(RnaDesign, "quick_candidates", lambda self, inputs: [])
    target = "(((((.)))))...(((((.)))))"  # hairpins of one base: nothing folds into it
    problem = RnaDesign(min_length=12, max_length=len(target) - 1)
    assert not problem.model_covers(target)
    loaded = problem.inputs.load(problem.inputs.encode(target))
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]).eval()
    design = search(model, problem, 0, loaded, best_of=16, time_budget_s=1)
    assert len(design) == len(target) and set(design) <= set("ACGU")
    with pytest.raises(UserError, match="rna_design: a search without a model .* has none"):
        search(None, problem, 0, loaded, best_of=16, time_budget_s=1)


def test_search_without_a_model_is_the_ablation():
    from t2t.inference import search

    problem = RnaEterna100(raw_dir=str(dataset_dir("rna")))
    target = "((((((....)))))).....((((....))))...(((....)))(((....)))"
    loaded = problem.inputs.load(problem.inputs.encode(target))
    design = search(None, problem, 0, loaded, best_of=16, time_budget_s=20, seed=3)
    assert problem.verify(target, design) == 1.0


def test_eterna100_benchmark_runs_and_prints_its_table(tmp_path):
    """The benchmark script end to end on two chosen puzzles, methods (b) and (c), a short
    budget; a puzzle id the benchmark lacks is one line naming it."""
    import subprocess
    import sys

    from .conftest import REPO

    dataset_dir("rna")

    def benchmark(*options):
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "rna_eterna100.py"), "--budget", "2",
             "--seeds", "1", "--methods", "search,inverse",
             "--results", str(tmp_path / "results.jsonl"), *options],  # a later --budget wins
            capture_output=True, text=True, timeout=120)

    result = benchmark("--puzzles", "1,3")
    assert result.returncode == 0, result.stderr[-2000:]
    # Rows of the default refinement carry its name (benchmarks/rna_eterna100.py).
    assert "| search:parts_rivals | 2 | 2.0 +- 0.0 / 2 |" in result.stdout, result.stdout
    assert "| inverse | 2 |" in result.stdout and "ViennaRNA 2." in result.stdout
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["id"]) for r in records) == [
        ("inverse", "1"), ("inverse", "3"), ("search:parts_rivals", "1"),
        ("search:parts_rivals", "3")]

    # A curve: the 2 s rows are reused, only the 1 s ones run.
    curve = benchmark("--puzzles", "1,3", "--budget", "1,2")
    assert curve.returncode == 0, curve.stderr[-2000:]
    assert "4 done, 4 to go" in curve.stdout
    assert "| search:parts_rivals | 1 | 2.0 +- 0.0 / 2 |" in curve.stdout, curve.stdout
    assert "| search:parts_rivals | 2 | 2.0 +- 0.0 / 2 |" in curve.stdout

    wrong = benchmark("--puzzles", "3,101")
    assert wrong.returncode != 0
    assert "no puzzle with id 101 in Eterna100 v2" in wrong.stderr.strip().splitlines()[-1]
    not_seconds = benchmark("--puzzles", "1", "--budget", "1,ten")
    assert not_seconds.returncode != 0
    assert "--budget 1,ten: seconds per puzzle" in not_seconds.stderr.strip().splitlines()[-1]


def test_proposal_headroom_benchmark_runs_and_prints_its_table(tmp_path):
    """benchmarks/rna_proposal_headroom.py end to end on puzzle 1 with its published player
    solution, without a proposal and with the oracle that knows every unit (proposing moves,
    then as the start); a puzzle whose
    solution is undisclosed is left out, saying so; a missing solutions file is one line with
    the URL, a solution of another puzzle one line too."""
    import subprocess
    import sys

    from .conftest import REPO

    second = RnaEterna100(version="v2", raw_dir=str(dataset_dir("rna"))).puzzles()[1]
    header = ("Puzzle #\tPuzzle Name\tSecondary Structure V1\tSecondary Structure V2\t"
              "Sample Solution (V2/Vienna2)\n")
    solutions = tmp_path / "eterna100_puzzles.tsv"
    solutions.write_text(header + "1\tSimple Hairpin\t(((((......)))))\t(((((......)))))\t"
                         "CAGGGGAAAAACUCUG\n"
                         f"2\tsecond\t-\t{second['structure']}\t(Undisclosed)\n")

    def benchmark(*options):
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "rna_proposal_headroom.py"),
             "--budget", "1", "--puzzles", "1,2", "--knows", "none,1",
             "--results", str(tmp_path / "headroom.jsonl"), *options],
            capture_output=True, text=True, timeout=120)

    result = benchmark("--solutions", str(solutions))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "puzzle 2 left out: no published solution ((Undisclosed))" in result.stdout
    assert "1 Eterna100 v2 puzzles (1), 1 s each" in result.stdout
    assert "| none | 1.0 +- 0.0 / 1 | 1 | 1 |" in result.stdout, result.stdout
    assert "| 1 | 1.0 +- 0.0 / 1 | 1 | 1 |" in result.stdout, result.stdout
    records = [json.loads(line) for line in (tmp_path / "headroom.jsonl").read_text().splitlines()]
    assert sorted(r["knows"] for r in records) == ["1", "none"]
    assert all(fold(r["design"])[0] == "(((((......)))))" for r in records)

    # As the start: the search keeps a start that folds right (every unit the solution's),
    # and the oracle-free rows are the same whatever the role, so they are not run again.
    start = benchmark("--solutions", str(solutions), "--role", "start")
    assert start.returncode == 0, start.stderr[-2000:]
    assert "the oracle's role: start; 1 to go" in start.stdout, start.stdout
    assert "a targeted design has the published solution's bases at" in start.stdout
    assert "| 1 | 1.0 +- 0.0 / 1 | 1 | 1 |" in start.stdout, start.stdout
    records = [json.loads(line) for line in (tmp_path / "headroom.jsonl").read_text().splitlines()]
    started = [r for r in records if r.get("role") == "start"]
    assert [(r["knows"], r["design"]) for r in started] == [("1", "CAGGGGAAAAACUCUG")]
    (row,) = [line for line in start.stdout.splitlines() if line.startswith("| 1 |")]
    assert row.endswith("| 100.0%, 100.0% |"), row  # start and design: the solution's units

    missing = benchmark("--solutions", str(tmp_path / "absent.tsv"))
    assert missing.returncode != 0
    assert ("absent.tsv: no such file; download it from https://raw.githubusercontent.com/"
            in missing.stderr.strip().splitlines()[-1])
    solutions.write_text(header + "1\tSimple Hairpin\t((((....))))\t((((....))))\tGGGGAAAACCCC\n")
    other = benchmark("--solutions", str(solutions))
    assert other.returncode != 0
    assert "puzzle 1's V2 structure differs" in other.stderr.strip().splitlines()[-1]


def _puts_then_sleeps(queue) -> None:
    queue.put("GGGAAACCC")
    queue.put("GGGGAAACCCC")
    time.sleep(60)


def _returns(queue) -> None:
    queue.put("GAAAC")


def _fails(queue) -> None:
    queue.put("GGGAAACCC")
    raise ValueError("a bug in a search")


def test_a_benchmark_design_process_is_stopped_at_its_budget_and_a_crash_is_not_unsolved(
        monkeypatch):
    """The Eterna100 benchmarks run each design in its own process: stopped 2 s after the
    budget, the last design it reported is judged; one that fails stops the benchmark with
    what it was doing, not a row that says unsolved."""
    from concurrent.futures import ThreadPoolExecutor

    from .conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from rna_eterna100 import run_stopped

    design, seconds = run_stopped(_puts_then_sleeps, (), 0.5, "puzzle 1")
    assert design == "GGGGAAACCCC"
    assert 2.4 < seconds < 30
    with pytest.raises(RuntimeError, match=r"^knows 0, puzzle 7: the design process failed:\n"
                                           r"(.|\n)*ValueError: a bug in a search"):
        run_stopped(_fails, (), 5.0, "knows 0, puzzle 7")
    # From a worker thread, as the benchmarks run it (such a process exits with 1 either way).
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_stopped, _returns, (), 5.0, "puzzle 1").result()[0] == "GAAAC"


@pytest.mark.timeout(400)
def test_train_then_decode_and_eval_eterna100(tmp_path):
    run_dir = tmp_path / "run"
    result = run_command(
        "t2t-train", "problem=rna_design", "problem.train_size=300", "problem.eval_size=8",
        "problem.max_length=40", "model=tiny", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
        "data.num_workers=0", f"data_dir={tmp_path / 'data'}", f"run_dir={run_dir}",
        cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    decoded = run_command("t2t-decode", "problem=rna_design", f"ckpt={checkpoint}",
                          "input=((((....))))", "decode.time_budget_s=10", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    sequence, folded, energy, verdict = decoded.stdout.strip().split("\t")
    assert folded == "((((....))))" and verdict == "solved" and energy.endswith("kcal/mol")
    assert fold(sequence)[0] == folded
    # A file of structures (an IUPAC constraint on one): a design a line, in order.
    targets = tmp_path / "targets.txt"
    targets.write_text("((((....))))\n(((((......))))) GNNNNNNNNNNNNNNC\n")
    from_file = run_command("t2t-decode", "problem=rna_design", f"ckpt={checkpoint}",
                            f"input_file={targets}", "decode.time_budget_s=10", cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    designs = [line.split("\t") for line in from_file.stdout.splitlines()]
    assert [folded for _, folded, _, _ in designs] == ["((((....))))", "(((((......)))))"]
    assert designs[1][0][0] == "G" and designs[1][0][-1] == "C"

    # A benchmark the model was not trained on: the trained problem's token stands in.
    puzzles = tmp_path / "eterna"
    puzzles.mkdir()
    (puzzles / "eterna100_v2.tsv").write_text(
        "id\tname\tstructure\n1\thairpin\t(((((......)))))\n2\tshort\t((....)).((....))\n")
    evaluated = run_command("t2t-eval", "problem=rna_eterna100", f"problem.raw_dir={puzzles}",
                            f"ckpt={checkpoint}", "decode.time_budget_s=5",
                            f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "verified 2/2" in evaluated.stdout and "solved" in evaluated.stdout


def test_rna_problems_take_part_in_the_decoding_protocols_and_own_their_metrics():
    from t2t import ConstrainedDecoding, FormatsPredictions, GuidedSearch, Verifier
    from t2t.metrics import HIGHER_IS_BETTER, get_metric

    for problem in (RnaDesign(), RnaEterna100(raw_dir="unused")):
        for protocol in (Verifier, ConstrainedDecoding, GuidedSearch, FormatsPredictions):
            assert isinstance(problem, protocol), (problem.name, protocol.__name__)
    # Registered by this problem module, not by t2t.metrics.
    assert get_metric("solved") is solved and HIGHER_IS_BETTER["solved"]
    assert get_metric("structure_distance") is structure_distance
    assert not HIGHER_IS_BETTER["structure_distance"]
    for metric in (solved, structure_distance):
        with pytest.raises(ValueError, match="2 predictions but 1 references"):
            metric(["GGGGAAAACCCC", "GGGGAAAACCCC"], ["((((....))))"])


@pytest.mark.timeout(300)
def test_validation_may_score_a_verifier_problem_by_its_search(tmp_path):
    """eval.search_best_of: validation decodes rna_design with the problem's search, which
    solves small structures even for an untrained model; greedy decoding of it does not."""
    solved = {}
    for best_of in (0, 4):
        result = run_command(
            "t2t-train", "problem=rna_design", "problem.train_size=64", "problem.eval_size=16",
            "problem.max_length=24", "model=tiny", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
            "data.num_workers=0", f"eval.search_best_of={best_of}",
            "eval.search_time_budget_s=2.0", f"data_dir={tmp_path / 'data'}",
            f"run_dir={tmp_path / f'run{best_of}'}", cwd=tmp_path, timeout=280)
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = [line for line in result.stdout.splitlines() if " solved " in line]
        solved[best_of] = float(row.split("│")[3])
    assert solved[4] == 1.0 > solved[0]
