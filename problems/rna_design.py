"""RNA design (inverse folding): a target secondary structure in, a sequence that folds into
it out, judged by ViennaRNA (PyPI `ViennaRNA`, module `RNA`) at its default parameters.

- `rna_design`: procedural training data, each (MFE structure -> sequence) pair an exact
  solution. A random sequence (over a length range and a GC range) is folded. With
  `sequences=designed` (the default) a design for that structure is made as a designer would
  (a targeted design with up to 30% of its pairs and loop bases redrawn), and the pair is that
  design with its own MFE structure: the model learns which design choices fold into which
  structures. With `sequences=random` the pair is the random sequence and its structure. With
  `sequences=repaired` the structure of the random sequence gets the targeted design, or where
  that misfolds, the adaptive walk's fix of it with every change the fold does not need put
  back: the heuristic plus the repairs the structure demands, which a model can learn (the
  redraws of `designed` are noise to it). `hard_share` of the samples are drawn again until the
  targeted design misfolds their structure: what a model can add to the search is what that
  heuristic does not know. What each choice gave is in benchmarks/results/rna_eterna100.md.
  Made in parallel processes, chunk by chunk, deterministic per seed whatever the number of
  processes. Structures of the Eterna100 benchmarks (v1 and v2, listed below by hash) are
  never emitted.
- `rna_eterna100`: the Eterna100 benchmark as a test split, read from `raw_dir` (a TSV with a
  `structure` or `Secondary Structure` column) or downloaded from the benchmark's repository.
  Its stored targets are the naive design (GC pairs, A loops), the benchmark's floor; the
  metrics fold the predictions and compare with the target structure.

Both share their modalities, so a model trained on `rna_design` evaluates `rna_eterna100`.
Decoding is a search (`t2t.inference.search`): pairing constraints while sampling, best-of-N
by `verify`, then `refine` (rna_search.design_by_parts: an adaptive walk, an ensemble search
and an end game against rival structures; long targets by their parts first) until solved or
out of time. The problems take
part in all of t2t's decoding protocols (t2t.problem: Verifier, ConstrainedDecoding,
GuidedSearch, FormatsPredictions), and register their metrics, `solved` and
`structure_distance`, here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import multiprocessing
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from modalities.rna import (
    NucleotideModality,
    PairingConstraint,
    StructureModality,
    pair_table,
    parse_design_input,
)
from problems.rna_search import (
    REFINEMENTS,
    adaptive_walk,
    fold,
    random_design,
    score,
    targeted_design,
)
from t2t import Problem, register_problem
from t2t.errors import UserError
from t2t.files import download
from t2t.metrics import References, check_references, register_metric
from t2t.problem import resolve_raw_dir

CHUNK = 500  # samples per generation task
ETERNA100_URL = ("https://raw.githubusercontent.com/eternagame/eterna100-benchmarking/"
                 "44f5ccec3c03be3b0d77c34defa023dcb2cfb0ea/")
ETERNA100_FILES = {"v1": "eterna100v1_vienna1.tsv", "v2": "eterna100v2_vienna2.tsv"}

# sha256[:12] of every Eterna100 v1 and v2 target structure: never training data.
EXCLUDED = frozenset("""
000519c80017 003dab10192e 017a30992cbf 02cf68b0c49c 06757cc0f50c 0e08623690ff 0ed1150e8d7f
0ef137faeac9 12fcf7d8b011 14a538797533 16cf546df782 180392916f71 1845c6545fb3 1b694e6ff6d7
1b86c3d32007 1c0de8be5a16 1d6a2a0c14b9 1e543665db28 265168d1cf16 2774465f9f31 2795c441bb4b
295203e94662 2a78b968c337 2be3f631837f 2f0ebb959e88 31d0cf095683 31f2d884b777 347f88fd6f24
3517cf36ea5b 36e4787697b9 37a0f43804cf 3b9cffcff9fb 3e8bde3f02a6 3f1166489bb9 432d2e7a20de
43f466dd2940 47b84de686f3 4c1d23fe0933 4c514b525b32 4d6a78ceb89f 4ee64cf6aabb 510c679066eb
536e0223642c 5579ee8a0ce9 55f529419b3d 58138d581222 58dbb14a7c08 598d56b4f4a8 5c27bee28d81
6055b2aca434 624463fd8afe 626a8eaad96c 68ffa7b5642b 6a068db61424 6a256f9ffbe8 6f92783c08ba
71e53c912dc6 72fad6775a43 73acbf1b31b7 74e3a3c7873d 754ae0df6c12 75d62a11cef0 76f008bcb240
79376827ddc8 79535504e3c6 7acefe195c35 7b47abfd01da 7c55a8d786cb 8831d5463bcf 889600222fe5
8b204a8ea65f 90ea88dafd0c 931c04c84c65 9a059da800eb 9b547cfcd99c 9e9dd05d05ea 9fbde9e26a88
a8b29f6b7dae abf9f54aee56 ace326a29de5 b1936b40bfc5 b270e16e69ca b44119a09f3e b4b25267cf1a
b54b8fb2faf5 b560bbc49328 b779ca5f8ff4 b875bef80628 bd05d8e2f87d bd512a1e7124 be7bf6a767fe
c28a2141689d c28e9e55bb03 c4636b8441d3 c4af6e345bb7 c6ae1d708f46 c82b025bcc12 c8632e6cd826
d2672c59e735 da5120123a71 e1852e21d861 e19ab6742e1b e34b2d7861cd e40527a33479 e4ed079292f4
e67658ed2e6d e797d76c5a74 ecf746ff2b87 eee59ea7cd19 f004a89a154a f00afaccbc6b f02430638f3b
f02e97334525 f1786b9f1b8e f32fba796124 f655cf8b1ed5 f674e6b451d1 fa752010d852 fc1f05787e32
""".split())


def structure_hash(structure: str) -> str:
    return hashlib.sha256(structure.encode()).hexdigest()[:12]


def naive_design(structure: str) -> str:
    """GC pairs and A loops: the design every inverse-folding method should beat."""
    partner = pair_table(structure)
    return "".join("A" if j < 0 else "G" if i < j else "C" for i, j in enumerate(partner))


@register_metric("solved")
def solved(predictions: Sequence[str], references: References) -> float:
    """RNA design: the share of designs whose ViennaRNA MFE structure is the reference
    structure exactly (references are dot-bracket structures)."""
    return sum(d == 0.0 for d in _structure_distances(predictions, references)) / max(
        1, len(predictions))


@register_metric("structure_distance", higher_is_better=False)
def structure_distance(predictions: Sequence[str], references: References) -> float:
    """RNA design: mean Hamming distance between each design's MFE structure and the reference
    structure, over the structure's length (1.0 for a design of the wrong length)."""
    distances = _structure_distances(predictions, references)
    return sum(distances) / max(1, len(distances))


def _structure_distances(predictions: Sequence[str], references: References) -> list[float]:
    out = []
    for prediction, refs in zip(predictions, check_references(predictions, references),
                                strict=True):
        target = refs[0]
        if len(prediction) != len(target) or set(prediction) - set("ACGU"):
            out.append(1.0)
            continue
        folded, _ = fold(prediction)
        out.append(sum(a != b for a, b in zip(folded, target, strict=True)) / len(target))
    return out


class RnaDesignBase(Problem):
    """What both RNA problems share: modalities, metrics and the design-time search methods
    (the protocols Verifier, ConstrainedDecoding, GuidedSearch and FormatsPredictions of
    t2t.problem)."""

    inputs = StructureModality()
    targets = NucleotideModality()
    metrics = ("solved", "structure_distance")
    # How `refine` searches, a key of rna_search.REFINEMENTS. Not an option: it changes no
    # data, and options are part of the shards' fingerprint (benchmarks set it to compare).
    refinement = "parts_rivals"

    def verify(self, inputs: Any, prediction: str) -> float:
        structure, constraint = parse_design_input(inputs)
        return score(structure, prediction, constraint)

    def decoding_constraint(self, inputs: Any, inputs_pad: Any) -> PairingConstraint:
        return PairingConstraint(inputs, self.targets.vocab_size)

    def quick_candidates(self, inputs: Any) -> list[str]:
        """A targeted design (GC pairs, A loops, a G-A hairpin mismatch): it folds right as
        it is for 33 of the 100 Eterna100 v2 puzzles."""
        structure, constraint = parse_design_input(inputs)
        return [targeted_design(structure, constraint, random.Random(0))]

    def model_covers(self, inputs: Any) -> bool:
        """Every structure, as for any problem that says nothing of its training data;
        `rna_design` knows the lengths it trains on (t2t-eval decodes a benchmark with the
        trained problem's search methods)."""
        return True

    def refine(self, inputs: Any, candidates: list[str], deadline: float, *,
               seed: int = 0) -> str:
        """The problem's refinement (rna_search.REFINEMENTS) from the candidates (best-scored
        first, as `search` orders them), then from fresh targeted designs."""
        structure, constraint = parse_design_input(inputs)
        return REFINEMENTS[self.refinement](structure, constraint, candidates, deadline,
                                            random.Random(seed))

    def format_prediction(self, inputs: Any, prediction: str) -> str:
        structure, _ = parse_design_input(inputs)
        folded, energy = fold(prediction) if prediction else ("", 0.0)
        verdict = ("solved" if folded == structure
                   else f"unsolved (score {self.verify(inputs, prediction):.3f})")
        return f"{prediction}\t{folded}\t{energy:.2f} kcal/mol\t{verdict}"


@register_problem("rna_design")
class RnaDesign(RnaDesignBase):
    """Design an RNA sequence that folds into a target structure (procedural, ViennaRNA)."""

    def __init__(self, *, min_length: int = 12, max_length: int = 120, min_gc: float = 0.3,
                 max_gc: float = 0.7, min_pairs: int = 1, train_size: int = 200_000,
                 eval_size: int = 200, seed: int = 1,
                 sequences: Literal["designed", "random", "repaired"] = "designed",
                 hard_share: float = 0.0):
        if not 1 <= min_length <= max_length <= self.inputs.max_length:
            raise UserError(f"rna_design: need 1 <= min_length <= max_length <= "
                            f"{self.inputs.max_length}, got {min_length}, {max_length}")
        self.lengths, self.gc = (min_length, max_length), (min_gc, max_gc)
        self.min_pairs = min_pairs
        self.sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
        if not 0.0 <= hard_share <= 1.0:
            raise UserError(f"rna_design: hard_share is a share of the samples, between 0 and 1;"
                            f" got {hard_share}")
        self.seed, self.sequences, self.hard_share = seed, sequences, hard_share

    def model_covers(self, inputs: Any) -> bool:
        """Structures up to the longest this problem trains on: beyond it (Eterna100's 200-400
        nt puzzles after training up to 120 nt) samples started 2-3x farther from the target
        than targeted designs."""
        structure, _ = parse_design_input(inputs)
        return len(structure) <= self.lengths[1]

    def generate_samples(self, split: str) -> Iterator[dict]:
        size = self.sizes[split]
        tasks = [(self.seed, split, k, min(CHUNK, size - k * CHUNK), self.lengths, self.gc,
                  self.min_pairs, self.sequences, self.hard_share)
                 for k in range(-(-size // CHUNK))]
        workers = min(len(os.sched_getaffinity(0)), len(tasks))
        if workers <= 1:
            chunks = map(_designs, tasks)
        else:  # imap keeps task order: the samples do not depend on the number of processes
            pool = multiprocessing.Pool(workers)
            chunks = pool.imap(_designs, tasks)
        try:
            for chunk in chunks:
                for structure, sequence in chunk:
                    sample = {"inputs": structure, "targets": sequence}
                    if split != "train":
                        sample["references"] = [structure]
                    yield sample
        finally:
            if workers > 1:
                pool.terminate()


def _designs(task: tuple) -> list[tuple[str, str]]:
    """One chunk of (MFE structure, sequence) pairs from its own seeded generator; a
    `hard_share` of them drawn again until the targeted design misfolds the structure."""
    seed, split, index, count, lengths, gcs, min_pairs, sequences, hard_share = task
    rng = random.Random(f"rna-{seed}-{split}-{index}")
    out = []
    while len(out) < count:
        hard = hard_share > 0 and rng.random() < hard_share  # 0: the stream as before
        while True:
            structure, sequence = _draw(rng, lengths, gcs, sequences)
            if (sequence is not None and structure.count("(") >= min_pairs
                    and structure_hash(structure) not in EXCLUDED
                    and (not hard or _targeted_misfolds(structure))):
                break
        out.append((structure, sequence))
    return out


def _draw(rng: random.Random, lengths: tuple[int, int], gcs: tuple[float, float],
          sequences: str) -> tuple[str, str | None]:
    """A random sequence and its MFE structure; or (designed) a designer's sequence for that
    structure and the sequence's own MFE structure; or (repaired) that structure and its
    repaired targeted design (None where the repair failed)."""
    length, gc = rng.randint(*lengths), rng.uniform(*gcs)
    sequence = "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AU")
                       for _ in range(length))
    structure, _ = fold(sequence)
    if sequences == "designed":
        sequence = redrawn_design(structure, rng.uniform(0.0, 0.3), rng)
        structure, _ = fold(sequence)
    elif sequences == "repaired":
        sequence = repaired_design(structure, rng)
    return structure, sequence


REPAIR_STEPS = 2000  # mutations the walk may spend repairing one targeted design


def repaired_design(structure: str, rng: random.Random) -> str | None:
    """The targeted design where it folds right; else the adaptive walk's fix of it with every
    change that the fold does not need put back (a pair as a pair), so what differs from the
    heuristic is only what the structure demands: a rule a model can learn, where the random
    redraws of `redrawn_design` are noise it can only average. None if the walk fails within
    REPAIR_STEPS mutations (the sample is drawn again). Deterministic per rng."""
    free = "N" * len(structure)
    start = targeted_design(structure, free, rng)
    if fold(start)[0] == structure:
        return start
    walked = adaptive_walk(structure, free, [start], math.inf, rng, walkers=1,
                           max_steps=REPAIR_STEPS)
    if fold(walked)[0] != structure:
        return None
    units, design, reverted = design_units(structure), list(walked), True
    while reverted:  # until no single change can go back: one put back may free another
        reverted = False
        for unit in units:
            if any(design[k] != start[k] for k in unit):
                trial = design.copy()
                for k in unit:
                    trial[k] = start[k]
                if fold("".join(trial))[0] == structure:
                    design, reverted = trial, True
    return "".join(design)


def design_units(structure: str) -> list[tuple[int, ...]]:
    """The positions a design changes together: each loop base alone, each pair as (i, j)."""
    return [(i,) if j < 0 else (i, j) for i, j in enumerate(pair_table(structure))
            if j < 0 or i < j]


def _targeted_misfolds(structure: str) -> bool:
    """Whether the quick candidate of the search (the targeted design) misfolds: the samples
    that teach a model what the heuristic does not know (about 3% of designed ones)."""
    free = "N" * len(structure)
    return fold(targeted_design(structure, free, random.Random(0)))[0] != structure


def redrawn_design(structure: str, share: float, rng: random.Random) -> str:
    """A targeted design of `structure` with about `share` of its pairs and loop bases redrawn
    as in a random design (a pair as a pair): the kind of sequence a designer tries."""
    free = "N" * len(structure)
    targeted = targeted_design(structure, free, rng)
    drawn = random_design(structure, free, rng)
    partner = pair_table(structure)
    out = list(targeted)
    for i, j in enumerate(partner):
        if 0 <= j < i:
            continue  # the second base of a pair goes with the first
        if rng.random() < share:
            out[i] = drawn[i]
            if j > i:
                out[j] = drawn[j]
    return "".join(out)


@register_problem("rna_eterna100")
class RnaEterna100(RnaDesignBase):
    """The Eterna100 RNA design benchmark (v1 or v2): 100 target structures to design for."""

    splits = ("test",)

    def __init__(self, *, version: Literal["v2", "v1"] = "v2", raw_dir: str | None = None):
        self.version = version
        self.raw_dir = resolve_raw_dir(raw_dir, "eterna100")

    def puzzles(self) -> list[dict[str, str]]:
        """[{"id", "name", "structure"}] in benchmark order."""
        return read_puzzles(self._file())

    def _file(self) -> Path:
        for name in (f"eterna100_{self.version}.tsv", ETERNA100_FILES[self.version]):
            if (self.raw_dir / name).is_file():
                return self.raw_dir / name
        name = ETERNA100_FILES[self.version]
        return download(ETERNA100_URL + name, self.raw_dir / name,
                        raw_dir_hint=f"problem.raw_dir=DIR (with eterna100_{self.version}.tsv "
                                     f"or {name})")

    def generate_samples(self, split: str) -> Iterator[dict]:
        for puzzle in self.puzzles():
            structure = puzzle["structure"]
            yield {"inputs": structure, "targets": naive_design(structure),
                   "references": [structure]}


def read_puzzles(path: Path) -> list[dict[str, str]]:
    """Rows of an Eterna100 TSV: ours (id, name, structure) or the benchmark repository's
    (Puzzle #, Puzzle Name, ..., Secondary Structure, ...); a bad row names path and line."""
    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        raise UserError(f"{path}: empty file; expected a TSV of Eterna100 puzzles")
    header = [h.strip().lower() for h in rows[0]]
    columns = {}
    for key, names in (("id", ("id", "puzzle #")), ("name", ("name", "puzzle name")),
                       ("structure", ("structure", "secondary structure"))):
        found = [header.index(n) for n in names if n in header]
        if not found:
            raise UserError(f"{path}:1: no '{names[0]}' column (header: {', '.join(rows[0])})")
        columns[key] = found[0]
    puzzles = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns.values()):
            raise UserError(f"{path}:{number}: {len(row)} columns, expected at least "
                            f"{max(columns.values()) + 1}")
        puzzle = {key: row[index].strip() for key, index in columns.items()}
        try:
            pair_table(puzzle["structure"])
        except UserError as error:
            raise UserError(f"{path}:{number}: {error}") from None
        puzzles.append(puzzle)
    return puzzles
