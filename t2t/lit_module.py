"""The LightningModule: loss, optimizer and schedule, validation metrics. Thin on purpose:
the network is `t2t.model.T2TModel`, decoding is `t2t.decoding`."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_warn

from t2t.errors import UserError
from t2t.inference import decode_ids, decode_loaded
from t2t.losses import linear_cross_entropy
from t2t.metrics import LIKELIHOOD_METRICS, get_metric, prediction_metrics
from t2t.modality import Modality, ProjectsLinearly
from t2t.model import T2TModel
from t2t.problem import Problem, Verifier, constraint_for
from t2t.tokens import EOS, PAD


def add_eos(targets: torch.Tensor) -> torch.Tensor:
    """(B, T) PAD-padded ids -> (B, T+1) labels with EOS after each row's last token."""
    lengths = (targets != PAD).sum(dim=1)
    labels = F.pad(targets, (0, 1), value=PAD)
    labels[torch.arange(len(labels), device=labels.device), lengths] = EOS
    return labels


def lr_factor(step: int, warmup_steps: int, schedule: str, max_steps: int) -> float:
    """Multiplier of the peak learning rate at an optimizer step."""
    step = max(step, 1)
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "inverse_sqrt":
        return math.sqrt(warmup_steps / step) if warmup_steps else 1.0 / math.sqrt(step)
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}: use inverse_sqrt, cosine or constant")


def checked_ctc_weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"optim.ctc_weight={value!r}: use a share of the loss from 0 (no CTC "
                        f"loss) to 1")
    return float(value)


def checked_loss_chunk_rows(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"optim.loss_chunk_rows={value!r}: use a whole number of target positions "
                        f"whose logits the loss holds at once (e.g. 4096), or 0 for all at once")
    return value


def checked_fused(value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"optim.fused={value!r}: use true (one fused kernel for the AdamW update) "
                        f"or false")
    return value


def checked_ponder_weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise UserError(f"optim.ponder_weight={value!r}: use a number from 0 up (e.g. 0.01), "
                        f"the loss per step of depth a position takes under model.recurrence=act")
    return float(value)


@dataclasses.dataclass
class StoredInput:
    """An example's input as stored in its shard: the bytes of a file with this extension."""

    key: str
    data: bytes
    extension: str


class T2TLitModule(L.LightningModule):
    def __init__(
        self,
        model: T2TModel,
        problems: list[Problem],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-9,
        weight_decay: float = 0.0,
        warmup_steps: int = 4000,
        schedule: str = "inverse_sqrt",
        max_steps: int = 100_000,
        label_smoothing: float = 0.1,
        ctc_weight: float = 0.5,
        ponder_weight: float = 0.01,
        loss_chunk_rows: int = 4096,
        fused: bool = True,
        val_decode_batches: int = 4,
        record_samples: str | None = None,
        beam_size: int = 1,
        max_decode_length: int = 256,
        search_best_of: int = 0,
        search_time_budget_s: float = 1.0,
        checkpoint_info: dict[str, Any] | None = None,
        on_nonfinite_loss: str = "error",
    ):
        super().__init__()
        if on_nonfinite_loss not in ("error", "skip"):
            raise UserError(f"on_nonfinite_loss={on_nonfinite_loss!r}: use error or skip")
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_batches = 0
        self.model, self.problems = model, problems
        self.optim = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                          fused=checked_fused(fused))
        self.loss_chunk_rows = checked_loss_chunk_rows(loss_chunk_rows)
        self.schedule = dict(warmup_steps=warmup_steps, schedule=schedule, max_steps=max_steps)
        self.label_smoothing = label_smoothing
        # Problems whose targets follow their inputs' order mix in an encoder CTC loss.
        ctc_weight = checked_ctc_weight(ctc_weight)
        self.ctc_weights = [ctc_weight if p.targets_in_input_order else 0.0 for p in problems]
        self.ponder_weight = checked_ponder_weight(ponder_weight)
        self.val_decode_batches, self.beam_size = val_decode_batches, beam_size
        self.max_decode_length = max_decode_length
        # Problems with a verifier (t2t.problem.Verifier) may be validated by their search.
        self.search = dict(best_of=search_best_of, time_budget_s=search_time_budget_s)
        self.checkpoint_info = checkpoint_info or {}
        self.record_samples = record_samples
        self.examples: dict[str, list[tuple[str, str, str]]] = {}
        self.latest_metrics: dict[str, dict[str, float]] = {}
        self._decoded: dict[int, tuple[list, list, list]] = {}
        self._likelihood: dict[int, list] = {}
        self._clock: float | None = None

    # -- training ------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], label_smoothing: float, ctc_weight: float = 0.0
             ) -> tuple[torch.Tensor, int]:
        """Cross-entropy of the decoder's predictions, mixed with `ctc_weight` of a CTC loss
        on the encoder's positions when given: for problems whose targets read in the
        order of the inputs (OCR, speech), CTC teaches the encoder where each symbol is,
        which the attention decoder otherwise needs many more steps to discover
        (hybrid CTC/attention, Kim, Hori and Watanabe 2017). A model with adaptive depth
        (model.recurrence=act) adds its ponder cost, `ponder_weight` per step a position
        takes, so that depth is spent where it lowers the loss more than that."""
        problem, packing = batch["problem"], batch.get("packing")
        self.model.body.ponder.clear()
        # Packed rows (t2t.datamodule.packed_rows) come with their labels: (B, T).
        labels = (batch["labels"] if packing else add_eos(batch["targets"])).flatten()
        # The decoder's feed-forward blocks and the softmax run only where there is a label.
        # The indices first: on a GPU, nonzero waits for the queue, which is still empty here.
        active = (labels != PAD).nonzero().squeeze(1)  # (N,)
        memory, memory_pad = self.model.encode(problem, batch["inputs"], batch["inputs_pad"],
                                               packing)
        hidden = self.model.decoder_states(problem, memory, memory_pad, batch["targets"],
                                           active=active, packing=packing)  # (B, T+1, C)
        loss = self._cross_entropy(problem, hidden.flatten(0, 1).index_select(0, active),
                                   labels.index_select(0, active), label_smoothing)
        if ctc_weight:
            if packing:
                raise UserError("optim.ctc_weight needs unpacked batches: use data.packed_length=0 "
                                "(or optim.ctc_weight=0)")
            logits, inputs_pad = self.model.encoder_logits(problem, memory, memory_pad)
            log_probs = logits.float().log_softmax(-1)
            ctc = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"],
                             (~inputs_pad).sum(dim=1), (batch["targets"] != PAD).sum(dim=1),
                             blank=PAD, zero_infinity=True)  # inputs too short to align: 0
            loss = (1.0 - ctc_weight) * loss + ctc_weight * ctc
        for ponder in self.model.body.ponder.values():
            loss = loss + self.ponder_weight * ponder.cost
        return loss, active.numel()

    def _cross_entropy(self, problem: int, hidden: torch.Tensor, labels: torch.Tensor,
                       label_smoothing: float) -> torch.Tensor:
        """Mean cross-entropy of labels (N,) under the problem's top at hidden (N, C): fused
        with the top's projection where the top is one (t2t.losses), holding the logits of
        `loss_chunk_rows` positions at a time."""
        top = self.model.top(problem)
        if self.loss_chunk_rows and isinstance(top, ProjectsLinearly):
            return linear_cross_entropy(hidden, top.weight, labels, label_smoothing,
                                        self.loss_chunk_rows)
        return F.cross_entropy(top(hidden).float(), labels, label_smoothing=label_smoothing)

    def _log_ponder(self, prefix: str, batch_size: int, **options: Any) -> None:
        """Mean steps of depth per position of the last pass, encoder and decoder."""
        for side, ponder in self.model.body.ponder.items():
            self.log(f"{prefix}ponder_steps_{side}", ponder.mean_steps, batch_size=batch_size,
                     **options)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss, tokens = self.loss(batch, self.label_smoothing, self.ctc_weights[batch["problem"]])
        if not torch.isfinite(loss):
            return self._nonfinite(loss, batch)
        # weight 0: a filler batch that only keeps DDP ranks in step (see t2t.datamodule).
        loss = loss * batch["weight"]
        if self.record_samples and batch["weight"]:
            self._record(batch)
        now = time.perf_counter()
        if self._clock is not None:
            self.log("train/tokens_per_s", tokens / max(now - self._clock, 1e-9))
        self._clock = now
        slots = batch["labels"].numel() if "labels" in batch else \
            batch["targets"].numel() + len(batch["targets"])
        padding = 1.0 - tokens / slots
        self.log_dict({"train/loss": loss, "train/padding": padding,
                       "train/lr": self.optimizers().param_groups[0]["lr"]},
                      prog_bar=True, batch_size=len(batch["targets"]))
        self._log_ponder("train/", len(batch["targets"]))
        return loss

    def _nonfinite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """A NaN/inf loss must never train the weights: stop naming the batch, or (asked to)
        skip it. Returning None makes Lightning skip backward and the update."""
        keys = batch["keys"]
        where = (f"at step {self.global_step}, problem {self.problems[batch['problem']].name}, "
                 f"batch of {len(keys)} samples: {' '.join(keys[:5])}"
                 f"{' ...' if len(keys) > 5 else ''}")
        if self.on_nonfinite_loss == "error":
            raise UserError(f"non-finite training loss ({float(loss)}) {where}; lower optim.lr, "
                            f"check those samples, or pass on_nonfinite_loss=skip")
        self.skipped_batches += 1
        rank_zero_warn(f"skipped a batch with a non-finite loss ({float(loss)}) {where} "
                       f"({self.skipped_batches} so far)")
        return None

    def on_fit_start(self) -> None:
        if self.on_nonfinite_loss == "skip" and self.trainer.world_size > 1:
            # A rank that skips its backward leaves the others waiting in the gradient
            # all-reduce: a hang, not a skip.
            raise UserError("on_nonfinite_loss=skip works in single-process runs only; use "
                            "on_nonfinite_loss=error with several devices")

    def _record(self, batch: dict[str, Any]) -> None:
        """Append `epoch step problem keys...` to <dir>/rank<R>.tsv: which samples each rank
        trained on, in order (to audit data splitting and resumption)."""
        path = Path(self.record_samples) / f"rank{self.global_rank}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{self.current_epoch}\t{self.global_step}\t{batch['problem']}\t"
                    f"{' '.join(batch['keys'])}\n")

    def configure_optimizers(self):
        trained = [p for p in self.model.parameters() if p.requires_grad]  # not the frozen
        # Under fp16 a GradScaler unscales the gradients before clipping them, which a fused
        # AdamW (unscaling inside its step) does not allow.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        optimizer = torch.optim.AdamW(trained, **{**self.optim,
                                                  "fused": self.optim["fused"] and not scaled})
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, **self.schedule))
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        plugin = self.trainer.precision_plugin
        if (gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None
                and optimizer.defaults.get("fused")):
            # bf16-mixed has no scaled gradients, yet Lightning refuses to clip for a fused
            # optimizer (Lightning-AI/pytorch-lightning#21435): clip as its 32-bit runs do.
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- validation ----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._decoded = {}
        self._likelihood = {}  # problem index -> [summed target-token NLL, target tokens],
        # for the problems scored by a likelihood metric (perplexity)

    def validation_step(self, batch: dict[str, Any], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        loss, tokens = self.loss(batch, 0.0)
        problem = self.problems[batch["problem"]]
        self.log(f"val/{problem.name}/loss", loss, sync_dist=True,
                 batch_size=len(batch["targets"]), add_dataloader_idx=False)
        self._log_ponder(f"val/{problem.name}/", len(batch["targets"]), sync_dist=True,
                         add_dataloader_idx=False)
        scored_by_likelihood = any(m in LIKELIHOOD_METRICS for m in problem.metrics)
        if scored_by_likelihood and batch["weight"]:  # a filler batch (`equalize`) repeats
            totals = self._likelihood.setdefault(batch["problem"], [0.0, 0])
            totals[0] = totals[0] + loss.detach().double() * tokens  # no device sync here
            totals[1] += tokens
        if not prediction_metrics(problem.metrics):
            return
        # Decode batches spread over the split: its batches are sorted by length.
        counts = self.trainer.num_val_batches
        total = counts[dataloader_idx] if counts else 1
        stride = max(1, int(total) // max(1, self.val_decode_batches))
        chosen = batch_idx % stride == 0 and batch_idx // stride < self.val_decode_batches
        if chosen and batch["weight"]:  # a filler batch (see `equalize`) repeats samples
            self._decode_for_metrics(batch)

    def _decode_for_metrics(self, batch: dict[str, Any]) -> None:
        problem = self.problems[batch["problem"]]
        longest = int((batch["targets"] != PAD).sum(dim=1).max())
        max_length = min(self.max_decode_length, 2 * longest + 10)
        if self.search["best_of"] and isinstance(problem, Verifier):
            loaded = [problem.inputs.load(data) for data in batch["stored_inputs"]]
            decoded = decode_loaded(self.model, problem, batch["problem"], loaded,
                                    max_length=max_length, **self.search)
        else:
            predicted = decode_ids(self.model, batch["problem"], batch["inputs"],
                                   batch["inputs_pad"], beam_size=self.beam_size,
                                   max_length=max_length,
                                   allowed=constraint_for(problem, batch["inputs"],
                                                          batch["inputs_pad"]))
            decoded = [problem.targets.decode(ids) for ids in predicted]
        sources, predictions, references = self._decoded.setdefault(batch["problem"],
                                                                    ([], [], []))
        for row, prediction in enumerate(decoded):
            predictions.append(prediction)
            references.append(batch["references"][row]
                              or problem.targets.decode(batch["targets"][row]))
            sources.append(self._describe_input(problem, batch, row))

    @staticmethod
    def _describe_input(problem: Problem, batch: dict[str, Any], row: int) -> str | StoredInput:
        if type(problem.inputs).decode is not Modality.decode:
            return str(problem.inputs.decode(batch["inputs"][row]))
        # Media has no text form: the report writes the stored file (a PNG, a FLAC) to show.
        if "stored_inputs" in batch:
            return StoredInput(batch["keys"][row], batch["stored_inputs"][row],
                               problem.inputs.extension)
        return f"sample {batch['keys'][row]}"

    def on_validation_epoch_end(self) -> None:
        for index, (sources, predictions, references) in self._all_ranks_decoded().items():
            problem = self.problems[index]
            scores = {name: get_metric(name)(predictions, references)
                      for name in prediction_metrics(problem.metrics)}
            self.latest_metrics[problem.name] = scores
            self.examples[problem.name] = list(zip(sources, predictions, references,
                                                   strict=True))
            # The same on every rank: each scored every rank's decodes.
            self.log_dict({f"val/{problem.name}/{k}": float(v) for k, v in scores.items()},
                          sync_dist=True)

        for index, (nll, tokens) in self._all_ranks_likelihood().items():
            problem = self.problems[index]
            scores = {name: LIKELIHOOD_METRICS[name](nll / max(tokens, 1))
                      for name in problem.metrics if name in LIKELIHOOD_METRICS}
            self.latest_metrics.setdefault(problem.name, {}).update(scores)
            self.log_dict({f"val/{problem.name}/{k}": float(v) for k, v in scores.items()},
                          sync_dist=True)

    def _all_ranks_likelihood(self) -> dict[int, tuple[float, int]]:
        """Each problem's summed NLL and token count over every rank's share of the split."""
        if self.trainer.world_size == 1:
            return {i: (float(nll), n) for i, (nll, n) in self._likelihood.items()}
        summed = torch.zeros(len(self.problems), 2, dtype=torch.float64, device=self.device)
        for index, (nll, tokens) in self._likelihood.items():
            summed[index, 0], summed[index, 1] = nll, tokens
        torch.distributed.all_reduce(summed)
        return {i: (float(summed[i, 0]), int(summed[i, 1])) for i in range(len(self.problems))
                if summed[i, 1] > 0}

    def _all_ranks_decoded(self) -> dict[int, tuple[list, list, list]]:
        """What every rank decoded: each rank validates its own share of the split, and
        corpus metrics (BLEU) are not averages of per-rank scores."""
        if self.trainer.world_size == 1:
            return self._decoded
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, self._decoded)
        merged: dict[int, tuple[list, list, list]] = {}
        for decoded in gathered:
            for index, columns in sorted(decoded.items()):
                for mine, theirs in zip(merged.setdefault(index, ([], [], [])), columns,
                                        strict=True):
                    mine.extend(theirs)
        return merged

    # -- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["t2t"] = self.checkpoint_info
