"""t2t-train: generate missing shards, train (resuming from run_dir), print metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from t2t.cli.common import build_problems, run_hydra
from t2t.errors import UserError


def checkpoint_info(problems: list[Any], problem_dirs: list[str | Path], model_config: Any
                    ) -> dict[str, Any]:
    """What t2t-decode and t2t-eval need to rebuild the model without the shards."""
    from t2t.data import join, read_bytes, read_meta

    specs = []
    for problem, problem_dir in zip(problems, problem_dirs, strict=True):
        meta = read_meta(problem_dir)
        vocab = {role: {"file": m["vocab"], "data": read_bytes(join(problem_dir, m["vocab"]))}
                 for role, m in meta["modalities"].items() if m.get("vocab")}
        # The modalities' keys name the model's modules: loading checks that the problem's
        # code rebuilds the same ones.
        specs.append({"name": problem.name, "options": problem.options, "vocab": vocab,
                      "keys": {r: getattr(problem, r).key for r in meta["modalities"]}})
    return {"problems": specs, "model": dataclasses.asdict(model_config)}


def prepare_and_open_shards(problems: list[Any], config: Any, is_global_zero: bool
                            ) -> list[str | Path]:
    """The data life cycle, the same on every process of every node: prepare (the first
    process of the run writes missing shards; a URL data_dir must hold them already), then
    set up (every process waits for shards with its own fingerprint and restores the
    vocabularies from them). Nothing is learned on one process that another does not read."""
    from t2t.data import open_shards
    from t2t.datagen import prepare

    locations = []
    for problem in problems:
        if is_global_zero:
            prepare(problem, config.data_dir, **config.datagen)
        wait_s = 0.0 if is_global_zero else config.shards_wait_s
        locations.append(open_shards(problem, config.data_dir, config.datagen, wait_s=wait_s,
                                     say=print))
    return locations


def check_settings(problems: list[Any], config: Any) -> None:
    """The settings that reach the modalities and the loss (data.augment, model.bottoms,
    optim.ctc_weight), checked before datagen, which may take long. A modality that learns
    a vocabulary first has its bottom built, and checked, with the model."""
    import hydra
    import torch
    from hydra.errors import InstantiationException

    from t2t.checkpoints import init_from_path
    from t2t.data import ROLES
    from t2t.datamodule import augmentation
    from t2t.lit_module import (
        checked_ctc_weight,
        checked_fused,
        checked_loss_chunk_rows,
        checked_ponder_weight,
    )
    from t2t.modality import call_with_settings

    checked_ctc_weight(config.optim.ctc_weight)
    checked_ponder_weight(config.optim.ponder_weight)
    checked_loss_chunk_rows(config.optim.loss_chunk_rows)
    checked_fused(config.optim.fused)
    try:
        hydra.utils.instantiate(config.model)
    except InstantiationException as error:  # ModelConfig refusing a setting
        cause = str(error.__cause__ or error).strip().splitlines()[0]
        raise UserError(f"model settings: {cause}") from None
    if config.init_from:
        init_from_path(config.init_from)
    # A bottom built here draws its initial weights: the seeded run must not see those draws.
    with torch.random.fork_rng(devices=[]):
        for problem in problems:
            for modality in (getattr(problem, role) for role in ROLES):
                augmentation(modality, config.data.augment)
                if not modality.needs_fit:
                    call_with_settings(modality.bottom,
                                       config.model.bottoms.get(modality.kind, {}),
                                       f"model.bottoms.{modality.kind}", config.model.d_model)


def data_parallel(trainer: Any, problems: list[Any]) -> dict[str, Any]:
    """Trainer options for a mixture: each batch is one member's, so the other members'
    bottoms and tops get no gradient in that step, and DDP must be told to expect that."""
    several = trainer.devices not in (1, "1") or trainer.num_nodes != 1
    if len(problems) > 1 and (trainer.strategy == "ddp" or
                              (trainer.strategy == "auto" and several)):
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}


def train(config: Any) -> None:
    import hydra
    import lightning as L
    from hydra.errors import InstantiationException
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from t2t.checkpoints import (
        AtomicCheckpointIO,
        CheckpointOnSigterm,
        StepCheckpoints,
        WeightEMA,
        freeze,
        resumable_checkpoint,
        warm_start,
    )
    from t2t.cli.report import print_report
    from t2t.datamodule import T2TDataModule
    from t2t.lit_module import T2TLitModule
    from t2t.model import T2TModel
    from t2t.progress import drop_lightning_tips, progress_callbacks

    L.seed_everything(config.seed, workers=True, verbose=False)
    problems, mixing = build_problems(config.problem)
    check_settings(problems, config)
    run_dir = Path(config.run_dir)
    checkpoints = StepCheckpoints(dirpath=run_dir / "checkpoints", save_last=True,
                                  every_n_train_steps=config.checkpoint_every,
                                  monitor="step", mode="max",  # keeps the newest
                                  save_top_k=config.keep_checkpoints,
                                  # step-0001500.ckpt: no "=", which a Hydra list would split
                                  filename="step-{step:07d}", auto_insert_metric_name=False)
    last = run_dir / "checkpoints" / "last.ckpt"
    averaging = [WeightEMA(config.ema_decay)] if config.ema_decay is not None else []
    # A rich bar on a terminal, plain lines every progress_every_s seconds in a log file.
    progress = progress_callbacks(config.progress_every_s,
                                  enabled=config.trainer.get("enable_progress_bar", True))
    drop_lightning_tips()
    # The trainer knows this process's global rank (from torchrun, SLURM or its own launcher)
    # before any process group exists: the data life cycle needs it.
    try:
        trainer = hydra.utils.instantiate(
            config.trainer, default_root_dir=str(run_dir),
            **data_parallel(config.trainer, problems),
            callbacks=[checkpoints, CheckpointOnSigterm(last), *averaging, *progress],
            enable_progress_bar=bool(progress), plugins=[AtomicCheckpointIO()],
            logger=[TensorBoardLogger(run_dir, name="tb"), CSVLogger(run_dir, name="csv")])
    except InstantiationException as error:  # Lightning refusing the device or strategy
        cause = str(error.__cause__ or error).strip().splitlines()[0]
        raise UserError(f"the trainer settings do not work here: {cause} (trainer=gpu and "
                        f"trainer=fsdp need CUDA GPUs; on CPUs use trainer=cpu, or trainer=ddp "
                        f"trainer.accelerator=cpu)") from None
    problem_dirs = prepare_and_open_shards(problems, config, trainer.is_global_zero)
    model_config = hydra.utils.instantiate(config.model)
    model = T2TModel(model_config, [(p.inputs, p.targets) for p in problems])
    info = checkpoint_info(problems, problem_dirs, model_config)
    say = print if trainer.is_global_zero else (lambda message: None)
    resume = resumable_checkpoint(run_dir / "checkpoints", info, warn=say)
    if config.init_from and resume is None:  # a rerun resumes its own run instead
        say(f"t2t-train: {warm_start(model, [p.name for p in problems], config.init_from)}")
    if config.freeze:
        say(f"t2t-train: {freeze(model, list(config.freeze))}")
    if config.compile:
        model.body.compile_layers()
    module = T2TLitModule(
        model, problems, **config.optim, max_steps=config.trainer.max_steps,
        val_decode_batches=config.eval.decode_batches, beam_size=config.eval.beam_size,
        record_samples=config.record_samples,
        max_decode_length=config.eval.max_decode_length,
        search_best_of=config.eval.search_best_of,
        search_time_budget_s=config.eval.search_time_budget_s,
        on_nonfinite_loss=config.on_nonfinite_loss,
        checkpoint_info=info)
    datamodule = T2TDataModule(problems, problem_dirs, seed=config.seed, **mixing,
                               **config.data)

    say(f"t2t-train: {', '.join(p.name for p in problems)}, "
        f"{model.body.num_parameters():,} body parameters, "
        f"run_dir {run_dir}" + (f", resuming from {resume}" if resume else ""))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SIGTERMException:  # a SystemExit whose status would be 0, as if training finished
        raise UserError(f"stopped by SIGTERM after step {trainer.global_step}, saved to "
                        f"{last}; run the same command again to resume") from None
    if trainer.interrupted:
        raise UserError(f"training interrupted; run the same command again to resume from "
                        f"{last}")
    trainer.validate(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        print_report(module, trainer, examples=config.eval.examples)


def main() -> None:
    run_hydra("t2t-train", "train", train)


if __name__ == "__main__":
    main()
