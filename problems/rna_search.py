"""Design-time search for RNA inverse folding, judged by ViennaRNA (module `RNA`).

- `score`: 1 - normalised base-pair distance between the design's MFE structure and the target
  (1.0 = solved: the MFE structure equals the target exactly).
- `targeted_design`: the classic start (GC or CG in every pair, A in loops) with a G-A first
  mismatch in each hairpin loop of four or more: alone it solves 32-36 Eterna100 v2 puzzles
  (by the seed of the pair orientations), where GC pairs with A loops solve 16.
- `adaptive_walk`: local refinement. Mutate a mis-folded position or one beside it (a pair as a
  pair, from the pairs its constraint letters allow), keep the mutation unless the design gets
  worse (base-pair distance, then the free-energy gap between the target and the MFE
  structure); restart from a fresh targeted design when stuck; stop when solved or at the
  deadline.
- `ensemble_search`: refinement by the ensemble. Its objective is the target's ensemble free
  energy gap, E(target) - G(ensemble) = -kT ln P(target), from ViennaRNA's partition function;
  every evaluated design's MFE structure is checked against the target. It keeps a frontier
  of the best designs (a parent drawn by a Boltzmann weight on its gap), draws positions in
  proportion to their ensemble defect, and mutates them with structured moves (a pair alone
  or with a stacked neighbour, a loop base alone or with the pair that closes it), loop bases
  drawn with loop rules; sequences already evaluated are not evaluated again (after SAMFEO,
  Zhou et al. 2023, and NEMO's loop rules, Portela 2018).
- `rival_search`: the end game. Every MFE structure a fold returns is a rival; mutations near
  the misfolded positions are ranked by energy evaluation (cheap) against all rivals, and only
  the best is folded (costly).
- `walk_then_ensemble`: the adaptive walk for WALK_SHARE of the time, then the ensemble search
  from its design, then the end game for the last ENDGAME_SHARE.
- `design_by_parts`: for long targets, the largest pair-closed parts of at most PART_LENGTH
  designed on their own (each distinct part once), assembled, then the whole refined (after
  NEMO's divide and conquer).
- `random_design`: a random sequence that fits the target's pairs and the constraint.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from modalities.rna import IUPAC, PAIRS, pair_table

# Proposal weights: GC pairs stabilise helices most; loops mostly A (the classic start).
PAIR_WEIGHTS = {"GC": 3, "CG": 3, "AU": 2, "UA": 2, "GU": 1, "UG": 1}
LOOP_WEIGHTS = {"A": 4, "C": 1, "G": 1, "U": 1}


def fold(sequence: str) -> tuple[str, float]:
    """MFE structure and free energy (kcal/mol) under ViennaRNA's default parameters."""
    import RNA

    structure, energy = RNA.fold(sequence)
    return structure, float(energy)


def score(structure: str, sequence: str, constraint: str | None = None) -> float:
    """1 - base-pair distance / (pairs in target + pairs in fold); 0 for an invalid design."""
    import RNA

    if len(sequence) != len(structure) or set(sequence) - set("ACGU"):
        return 0.0
    if constraint and any(b not in IUPAC[c] for b, c in zip(sequence, constraint, strict=True)):
        return 0.0
    folded, _ = fold(sequence)
    pairs = (structure.count("(") + folded.count("(")) or 1
    return 1.0 - RNA.bp_distance(structure, folded) / pairs


def _evaluate(structure: str, sequence: str) -> tuple[tuple[int, float], str]:
    """((base-pair distance, energy gap of the target over the MFE), MFE structure)."""
    import RNA

    compound = RNA.fold_compound(sequence)
    folded, mfe = compound.mfe()
    return (RNA.bp_distance(structure, folded), compound.eval_structure(structure) - mfe), folded


def _choices(partner: list[int], constraint: str) -> list[list[tuple[str, ...]]]:
    """Per position, the (base,) or (base i, base j) options with weights repeated."""
    options: list[list[tuple[str, ...]]] = []
    for i, j in enumerate(partner):
        allowed = IUPAC[constraint[i]]
        if j < 0:
            options.append([(b,) for b in allowed for _ in range(LOOP_WEIGHTS[b])])
        else:
            other = IUPAC[constraint[j]]
            options.append([(a, b) for a in allowed for b in other if b in PAIRS[a]
                            for _ in range(PAIR_WEIGHTS[a + b])])
    return options


def random_design(structure: str, constraint: str, rng: random.Random) -> str:
    partner = pair_table(structure)
    options = _choices(partner, constraint)
    sequence = [""] * len(structure)
    for i, j in enumerate(partner):
        if j < 0:
            sequence[i] = rng.choice(options[i])[0]
        elif i < j:
            sequence[i], sequence[j] = rng.choice(options[i])
    return "".join(sequence)


def targeted_design(structure: str, constraint: str, rng: random.Random) -> str:
    """GC or CG (at random) in every pair, A in every loop, and a G-A first mismatch closing
    each hairpin loop of four or more (Eterna players' "boost": the mismatch stabilises the
    hairpin's closing pair); where the constraint forbids a choice, the likeliest it allows."""
    partner = pair_table(structure)
    options = _choices(partner, constraint)
    preferred = {}
    for i, j in enumerate(partner):
        if j < 0:
            preferred[i] = "A"
        elif i < j:
            preferred[i], preferred[j] = rng.choice(["GC", "CG"])
    for i, j in enumerate(partner):
        if i < j and j - i > 4 and all(partner[k] < 0 for k in range(i + 1, j)):
            preferred[i + 1], preferred[j - 1] = "G", "A"
    sequence = [""] * len(structure)
    for i, j in enumerate(partner):
        if j < 0:
            allowed = [b for (b,) in options[i]]
            sequence[i] = preferred[i] if preferred[i] in allowed else rng.choice(allowed)
        elif i < j:
            pair = (preferred[i], preferred[j])
            sequence[i], sequence[j] = pair if pair in options[i] else rng.choice(options[i])
    return "".join(sequence)


class _Walker:
    """One line of descent: a design, its cost and MFE structure, and mutations since its
    last improvement."""

    def __init__(self, structure: str, start: str):
        self.sequence = list(start)
        self.cost, self.folded = _evaluate(structure, start)
        self.stale = 0


def _mutate(walker: _Walker, structure: str, partner: list[int],
            options: list[list[tuple[str, ...]]], rng: random.Random) -> None:
    """One mutation at or beside a mis-folded position, kept unless the design gets worse."""
    folded_partner = pair_table(walker.folded)
    wrong = [i for i in range(len(partner)) if folded_partner[i] != partner[i]]
    if rng.random() < 0.5:
        # A pair that will not form is often held back by the loop bases beside it
        # (its mismatches, which set its stacking energy), themselves folded right.
        wrong = sorted({k for i in wrong for k in (i - 1, i + 1) if 0 <= k < len(partner)})
    i = rng.choice(wrong)
    trial = walker.sequence.copy()
    choice = rng.choice(options[i])
    if partner[i] < 0:
        trial[i] = choice[0]
    else:
        low, high = sorted((i, partner[i]))
        trial[low], trial[high] = choice if i == low else choice[::-1]
    cost, folded = _evaluate(structure, "".join(trial))
    walker.stale = 0 if cost < walker.cost else walker.stale + 1
    if cost <= walker.cost:
        walker.sequence, walker.cost, walker.folded = trial, cost, folded


def adaptive_walk(structure: str, constraint: str, starts: Sequence[str], deadline: float,
                  rng: random.Random, patience: int | None = None, walkers: int = 4,
                  slice_steps: int = 50, max_steps: int | None = None) -> str:
    """Best design found by the deadline (time.monotonic()); returns at once when one is
    solved. `walkers` walks run in turns of `slice_steps` mutations, from `starts` in order,
    then from targeted designs with fresh random pair orientations; a walk `patience`
    mutations without improvement gives its place to the next start. Taking turns keeps one
    poor start from spending the budget: a walk from a good start often solves a long target
    in seconds, one from a poor start can wander for minutes. `max_steps` caps the mutations
    of all walks together: with deadline=math.inf the walk is deterministic per rng (datagen)."""
    partner = pair_table(structure)
    options = _choices(partner, constraint)
    patience = patience or 4 * len(structure)
    pending = list(starts)

    def fresh() -> _Walker:
        start = pending.pop(0) if pending else targeted_design(structure, constraint, rng)
        return _Walker(structure, start)

    active = [fresh() for _ in range(max(1, walkers))]
    best = min(active, key=lambda w: w.cost)
    best_sequence, best_cost = "".join(best.sequence), best.cost
    steps_left = math.inf if max_steps is None else max_steps

    def out_of_budget() -> bool:
        return steps_left <= 0 or time.monotonic() >= deadline

    while best_cost[0] > 0 and not out_of_budget():
        for k, walker in enumerate(active):
            for _ in range(slice_steps):
                if walker.cost[0] == 0 or walker.stale >= patience or out_of_budget():
                    break
                _mutate(walker, structure, partner, options, rng)
                steps_left -= 1
            if walker.cost < best_cost:
                best_sequence, best_cost = "".join(walker.sequence), walker.cost
            if best_cost[0] == 0 or out_of_budget():
                break
            if walker.stale >= patience:
                active[k] = fresh()
    return best_sequence


def inverse_fold_restarts(structure: str, deadline: float, rng: random.Random,
                          found=None) -> str | None:
    """ViennaRNA's own RNAinverse (`RNA.inverse_fold`), restarted from random sequences until
    it solves the target or the deadline passes: the baseline of the Eterna100 benchmark.
    One inverse_fold call cannot be interrupted: callers that need a hard deadline run this
    in a process they can stop, and take each better design from `found(design, distance)`."""
    import RNA

    best, best_distance = None, len(structure) + 1
    while time.monotonic() < deadline:
        start = "".join(rng.choice("ACGU") for _ in structure)
        design, _ = RNA.inverse_fold(start, structure)
        design = design.upper()
        distance = RNA.bp_distance(structure, fold(design)[0])
        if distance < best_distance:
            best, best_distance = design, distance
            if found is not None:
                found(design, distance)
        if distance == 0:
            break
    return best


@dataclass
class _Design:
    sequence: str
    gap: float  # E(target) - G(ensemble), kcal/mol: -kT ln P(target)
    distance: int  # base-pair distance between the MFE structure and the target
    weights: np.ndarray  # per position: its ensemble defect, plus MFE_MISS if the MFE misses it
    proposed: np.ndarray | None = None  # the proposal's base probabilities for this design


MFE_MISS = 0.5  # extra position weight where the MFE structure differs from the target: a
# near-tie can leave every ensemble defect small while the MFE structure is still wrong


def _ensemble_evaluate(structure: str, partner: np.ndarray, sequence: str) -> _Design:
    import RNA

    compound = RNA.fold_compound(sequence)
    folded, mfe = compound.mfe()
    distance = RNA.bp_distance(structure, folded)
    compound.exp_params_rescale(mfe)  # keeps the partition function in range for long RNAs
    _, ensemble = compound.pf()
    gap = compound.eval_structure(structure) - ensemble
    probs = np.array(compound.bpp())[1:, 1:]
    probs = probs + probs.T
    positions = np.arange(len(sequence))
    as_target = np.where(partner >= 0, probs[positions, partner], 1.0 - probs.sum(1))
    missed = np.array(pair_table(folded)) != partner
    return _Design(sequence, gap, distance, np.clip(1.0 - as_target, 0.0, 1.0) + MFE_MISS * missed)


def loop_preferences(partner: list[int]) -> dict[int, str]:
    """Loop bases that Eterna players (and NEMO) favour beside a pair: a G-A first mismatch in
    hairpins of four or more, G-G across a 1x1 internal loop."""
    preferred = {}
    for i, j in enumerate(partner):
        if j <= i:
            continue
        if j - i > 4 and all(partner[k] < 0 for k in range(i + 1, j)):  # hairpin
            preferred[i + 1], preferred[j - 1] = "G", "A"
        elif (i + 2 < j - 2 and partner[i + 2] == j - 2 and partner[i + 1] < 0
              and partner[j - 1] < 0):  # a 1x1 internal loop closed by (i, j)
            preferred[i + 1] = preferred[j - 1] = "G"
    return preferred


BASES = "ACGU"  # the columns of a proposal's base probabilities
# A model in the search's loop: a design -> (length, 4) base probabilities for its moves.
Proposal = Callable[[str], np.ndarray]
PROPOSAL_SHARE = 0.5  # of the ensemble search's redraws, drawn from a proposal when given


def _proposed_change(k: int, partner: list[int], options: list[list[tuple[str, ...]]],
                     proposed: np.ndarray, rng: random.Random) -> dict[int, str]:
    """Position k's new base, or its pair's two, drawn by the proposal's base probabilities
    among the options the constraint allows; empty if it gives them no weight."""
    where = tuple(sorted((k, partner[k]))) if partner[k] >= 0 else (k,)
    allowed = list(dict.fromkeys(options[where[0]]))
    weights = [math.prod(proposed[w, BASES.index(b)] for w, b in zip(where, option, strict=True))
               for option in allowed]
    if sum(weights) <= 0:
        return {}
    return dict(zip(where, rng.choices(allowed, weights=weights)[0], strict=True))


def _structured_move(sequence: list[str], i: int, partner: list[int],
                     options: list[list[tuple[str, ...]]], preferred: dict[int, str],
                     rng: random.Random, proposed: np.ndarray | None = None) -> None:
    """Redraw position i (a pair as a pair), and half the time its neighbour: for a pair, a
    pair stacked on it; for a loop base, the pair beside it. With `proposed` (an (n, 4) array
    of base probabilities, columns BASES), PROPOSAL_SHARE of the redraws are drawn from it."""
    def redraw(k: int) -> None:
        if proposed is not None and rng.random() < PROPOSAL_SHARE:
            change = _proposed_change(k, partner, options, proposed, rng)
            for w, b in change.items():
                sequence[w] = b
            if change:
                return
        if partner[k] < 0:
            if k in preferred and rng.random() < 0.5 and (preferred[k],) in options[k]:
                sequence[k] = preferred[k]
            else:
                sequence[k] = rng.choice(options[k])[0]
        else:
            low, high = sorted((k, partner[k]))
            sequence[low], sequence[high] = rng.choice(options[low])

    redraw(i)
    if rng.random() < 0.5:
        if partner[i] >= 0:
            low, high = sorted((i, partner[i]))
            stacked = [a for a, b in ((low - 1, high + 1), (low + 1, high - 1))
                       if 0 <= a and b < len(partner) and partner[a] == b]
        else:
            stacked = [k for k in (i - 1, i + 1) if 0 <= k < len(partner) and partner[k] >= 0]
        if stacked:
            redraw(rng.choice(stacked))


def ensemble_search(structure: str, constraint: str, starts: Sequence[str], deadline: float,
                    rng: random.Random, frontier_size: int = 8, temperature: float = 1.0,
                    max_steps: int | None = None, proposal: Proposal | None = None) -> str:
    """Best design found by the deadline (time.monotonic()); returns at once when one folds
    into the target. The frontier starts from `starts` and targeted designs with random pair
    orientations; each step draws a parent (weight exp(-(gap - best gap) / temperature)), a
    position by its weight, and a structured move there, skipping sequences already seen.
    The answer is the design whose MFE structure is closest to the target (then by gap).
    A `proposal` (a model in the loop) gives each parent, once, base probabilities that a
    share of its moves draw from."""
    partner_list = pair_table(structure)
    partner = np.array(partner_list)
    options = _choices(partner_list, constraint)
    preferred = loop_preferences(partner_list)
    seen: set[str] = set()
    frontier: list[_Design] = []
    best: _Design | None = None
    steps_left = math.inf if max_steps is None else max_steps

    def consider(sequence: str) -> bool:
        """Evaluate a new sequence into the frontier; True once one folds into the target."""
        nonlocal best, steps_left
        seen.add(sequence)
        steps_left -= 1
        design = _ensemble_evaluate(structure, partner, sequence)
        if best is None or (design.distance, design.gap) < (best.distance, best.gap):
            best = design
        frontier.append(design)
        frontier.sort(key=lambda d: d.gap)
        del frontier[frontier_size:]
        return design.distance == 0

    def out_of_budget() -> bool:
        return steps_left <= 0 or time.monotonic() >= deadline

    pending = list(starts)
    for _ in range(4 * frontier_size):  # targeted designs repeat on structures with few pairs
        if len(frontier) >= frontier_size or (frontier and out_of_budget()):
            break
        start = pending.pop(0) if pending else targeted_design(structure, constraint, rng)
        if start not in seen and consider(start):
            return start
    while not out_of_budget():
        gaps = np.array([d.gap for d in frontier])
        parent = frontier[rng.choices(range(len(frontier)),
                                      weights=np.exp(-(gaps - gaps[0]) / temperature))[0]]
        if proposal is not None and parent.proposed is None:
            parent.proposed = proposal(parent.sequence)
        for _ in range(20):  # a few tries at a sequence not seen before
            trial = list(parent.sequence)
            position = rng.choices(range(len(trial)), weights=parent.weights + 1e-3)[0]
            _structured_move(trial, position, partner_list, options, preferred, rng,
                             parent.proposed)
            sequence = "".join(trial)
            if sequence not in seen:
                break
        else:
            continue
        if consider(sequence):
            return sequence
    return best.sequence


RIVALS_KEPT = 64  # the latest rival structures an end-game candidate is scored against
CANDIDATES_PER_FOLD = 400  # end-game candidates scored by energy for each one folded


def rival_search(structure: str, constraint: str, starts: Sequence[str], deadline: float,
                 rng: random.Random, max_steps: int | None = None) -> str:
    """End game for near misses: returns at once when a design folds into the target, else,
    at the deadline, the design whose MFE structure is closest to the target (the earliest on
    a tie: the first start unless the end game got closer). Every MFE structure a fold
    returns becomes a rival. Each step scores mutations of the current design (each option of
    each position where its MFE structure misses the target or is within a reach of one, and
    pairs of such mutations; the reach doubles when all were tried) by their margin, the
    least free energy of a rival over that of the target, with ViennaRNA's energy evaluation
    (hundreds of times cheaper than a fold); folds the one of widest margin; and moves to it
    unless its gap (E(target) - MFE, then base-pair distance) is worse. A fold that finds a
    new rival makes the next step's margins honest about it (a cutting-plane search over rivals)."""
    import RNA

    partner = pair_table(structure)
    options = _choices(partner, constraint)
    model_details = RNA.md()
    rivals: dict[str, None] = {}  # ordered set, oldest first
    binding: list[str] = []  # the same rivals, the one that last bound a margin first
    seen: set[str] = set()
    steps_left = math.inf if max_steps is None else max_steps

    def fold_in(sequence: str) -> tuple[tuple[float, int], str]:
        nonlocal steps_left
        steps_left -= 1
        seen.add(sequence)
        (distance, gap), folded = _evaluate(structure, sequence)
        if folded != structure:
            if folded in rivals:  # re-inserted as the latest
                del rivals[folded]
                binding.remove(folded)
            rivals[folded] = None
            binding.insert(0, folded)
            while len(rivals) > RIVALS_KEPT:
                oldest = next(iter(rivals))
                del rivals[oldest]
                binding.remove(oldest)
        return (gap, distance), folded

    def margin(sequence: str, bar: float) -> float:
        """min over rivals of E(rival) - E(target); stops early, with a value below `bar`,
        once a rival brings it below `bar` (the candidate cannot be the widest)."""
        compound = RNA.fold_compound(sequence, model_details, RNA.OPTION_EVAL_ONLY)
        target = compound.eval_structure(structure)
        least = math.inf
        for k, rival in enumerate(binding):
            least = min(least, compound.eval_structure(rival) - target)
            if least < bar:
                binding.insert(0, binding.pop(k))
                break
        return least

    def mutations(sequence: str, folded: str, reach: int) -> list[str]:
        folded_partner = pair_table(folded)
        missed = {i for i in range(len(partner)) if folded_partner[i] != partner[i]}
        region = {k for i in missed for k in range(i - reach, i + reach + 1)
                  if 0 <= k < len(partner)}
        region |= {partner[k] for k in region if partner[k] >= 0}
        singles = []  # each a {position: base} change of the sequence
        for k in sorted(region):
            if partner[k] >= 0 and partner[k] < k:
                continue  # a pair is mutated from its 5' base
            for choice in dict.fromkeys(options[k]):
                where = (k, partner[k]) if partner[k] >= 0 else (k,)
                change = dict(zip(where, choice, strict=True))
                singles.append({i: b for i, b in change.items() if b != sequence[i]})

        def applied(*changes: dict[int, str]) -> str:
            trial = list(sequence)
            for change in changes:
                for i, b in change.items():
                    trial[i] = b
            return "".join(trial)

        candidates = dict.fromkeys(applied(c) for c in singles)  # ordered: same seed, same run
        for _ in range(4 * CANDIDATES_PER_FOLD):
            if len(candidates) >= CANDIDATES_PER_FOLD:
                break
            first, second = rng.sample(singles, 2) if len(singles) > 1 else (singles[0],) * 2
            candidates[applied(second, first)] = None  # the first's change where they overlap
        return [c for c in candidates if c not in seen]

    current = None  # (sequence, (gap, distance), MFE structure): where the search is
    best = None  # (distance, sequence): what it returns
    for start in starts or [targeted_design(structure, constraint, rng)]:
        if start in seen:
            continue
        cost, folded = fold_in(start)
        if cost[1] == 0:
            return start
        if current is None or cost < current[1]:
            current = (start, cost, folded)
        if best is None or cost[1] < best[0]:
            best = (cost[1], start)
        if steps_left <= 0 or time.monotonic() >= deadline:
            break
    sequence, cost, folded = current
    reach = 2  # positions beside a missed one that may change; grows when all were tried
    while steps_left > 0 and time.monotonic() < deadline:
        candidates = mutations(sequence, folded, reach)
        if not candidates:
            if reach >= len(structure):
                break
            reach *= 2
            continue
        widest = (-math.inf, 0.0, "")
        for candidate in candidates:
            tie_break = rng.random()
            widest = max(widest, (margin(candidate, widest[0]), tie_break, candidate))
        trial = widest[2]
        trial_cost, trial_folded = fold_in(trial)
        if trial_cost[1] == 0:
            return trial
        if trial_cost[1] < best[0]:
            best = (trial_cost[1], trial)
        if trial_cost <= cost:
            sequence, cost, folded = trial, trial_cost, trial_folded
    return best[1]


WALK_SHARE = 0.2  # of walk_then_ensemble's time
ENDGAME_SHARE = 0.25  # of walk_then_ensemble's time, for rival_search at the end


def walk_then_ensemble(structure: str, constraint: str, starts: Sequence[str],
                       deadline: float, rng: random.Random,
                       endgame_share: float = ENDGAME_SHARE,
                       proposal: Proposal | None = None) -> str:
    """The adaptive walk for WALK_SHARE of the time, the ensemble search from the walk's
    design and the starts, then, for the last `endgame_share` of the time, rival_search from
    the best two (the answer is the ensemble search's unless the end game gets closer). The
    walk is the faster where one mutation at a time can reach the target (most puzzles, in
    well under a second); the ensemble search where every single mutation leaves the MFE
    structure as wrong as before (lone pairs, long helices held apart); the end game where a
    design misses by a near-tie that the ensemble objective no longer sees. An endless
    deadline is the walk's alone. A `proposal` goes to the ensemble search."""
    now = time.monotonic()
    walked = adaptive_walk(structure, constraint, starts, now + WALK_SHARE * (deadline - now),
                           rng)
    if fold(walked)[0] == structure:
        return walked
    now = time.monotonic()
    ensemble_end = deadline - endgame_share * (deadline - now)
    designed = ensemble_search(structure, constraint, [walked, *starts], ensemble_end, rng,
                               proposal=proposal)
    if endgame_share == 0 or fold(designed)[0] == structure:
        return designed
    return rival_search(structure, constraint, [designed, walked], deadline, rng)


PART_LENGTH = 100  # the longest part design_by_parts designs on its own
PART_SHARE = 0.5  # of design_by_parts' time, for the parts


def parts(partner: list[int], longest: int = PART_LENGTH) -> list[tuple[int, int]]:
    """The largest substructures closed by a pair, (i, j) inclusive, of at most `longest`
    positions, left to right: a longer one is split into the parts inside the loop it
    closes. Positions outside every part stay with the whole."""
    found = []

    def visit(i: int, j: int) -> None:  # the loop closed by (i, j); (-1, n): the exterior
        k = i + 1
        while k < j:
            if partner[k] > k:
                if partner[k] - k + 1 <= longest:
                    found.append((k, partner[k]))
                else:
                    visit(k, partner[k])
                k = partner[k] + 1
            else:
                k += 1

    visit(-1, len(partner))
    return found


def design_by_parts(structure: str, constraint: str, starts: Sequence[str], deadline: float,
                    rng: random.Random, endgame_share: float = ENDGAME_SHARE,
                    proposal: Proposal | None = None) -> str:
    """Targets up to PART_LENGTH: walk_then_ensemble. Longer ones: for PART_SHARE of the time,
    each part (see `parts`) designed alone by walk_then_ensemble from its bases in the first
    start, in time shares by length (an identical part is designed once); the parts put into
    that start; then walk_then_ensemble on the whole from it. A part's fold is cheap where
    the whole's is not (a fold costs about the cube of the length): parts get hundreds of
    times more folds than the whole would. A `proposal` sees a part's design in the whole."""
    if len(structure) <= PART_LENGTH:
        return walk_then_ensemble(structure, constraint, starts, deadline, rng, endgame_share,
                                  proposal)
    design = list(starts[0] if starts else targeted_design(structure, constraint, rng))
    now = time.monotonic()
    parts_end = now + PART_SHARE * (deadline - now)
    todo = parts(pair_table(structure), PART_LENGTH)
    left = sum(j - i + 1 for i, j in todo)
    designed: dict[tuple[str, str], str] = {}
    for i, j in todo:
        key = (structure[i:j + 1], constraint[i:j + 1])
        if key not in designed:
            now = time.monotonic()
            share = (j - i + 1) / left
            designed[key] = walk_then_ensemble(*key, ["".join(design[i:j + 1])],
                                               now + share * (parts_end - now), rng,
                                               endgame_share, _in_part(proposal, design, i, j))
        left -= j - i + 1
        design[i:j + 1] = designed[key]
    return walk_then_ensemble(structure, constraint, ["".join(design), *starts], deadline, rng,
                              endgame_share, proposal)


def _in_part(proposal: Proposal | None, design: list[str], i: int, j: int) -> Proposal | None:
    """The proposal for positions i..j, given the rest of the design as it is then."""
    if proposal is None:
        return None
    return lambda part: proposal("".join(design[:i]) + part + "".join(design[j + 1:]))[i:j + 1]


# Each stage's ablation by name: "parts" and "walk_then_ensemble" are the stages without the
# end game (as first measured), "parts_rivals" every stage.
REFINEMENTS = {"walk": adaptive_walk, "ensemble": ensemble_search, "rivals": rival_search,
               "walk_then_ensemble": partial(walk_then_ensemble, endgame_share=0.0),
               "parts": partial(design_by_parts, endgame_share=0.0),
               "parts_rivals": design_by_parts}
