"""Every config file composes, and the model configs are the presets the code documents."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import asdict

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from t2t.cli.common import CONFIG_DIR, register_problem_configs
from t2t.model import PRESETS, ModelConfig
from t2t.registry import discover

from .conftest import REPO

discover()
register_problem_configs()
EXPERIMENTS = sorted(p.stem for p in (REPO / "problems" / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=[f"experiment={experiment}"])
    model = hydra.utils.instantiate(config.model)
    assert isinstance(model, ModelConfig)
    assert config.problem.name and config.trainer.max_steps > 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_yaml_matches_preset(name):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=[f"model={name}"])
    model = hydra.utils.instantiate(config.model)
    assert asdict(model) == asdict(dataclasses.replace(PRESETS[name], bottoms=model.bottoms))


def test_model_yaml_lists_each_bottoms_settings_with_its_defaults():
    from modalities import AudioModality, ImageModality

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        # tiny: the default bottoms settings (mini, the quickstart's, adds an image stem)
        bottoms = hydra.utils.instantiate(compose("train", overrides=["model=tiny"]).model).bottoms
    for kind, modality in (("image", ImageModality), ("audio", AudioModality)):
        parameters = inspect.signature(modality.bottom).parameters.values()
        assert bottoms[kind] == {p.name: p.default for p in parameters
                                 if p.kind is p.KEYWORD_ONLY}


def test_data_yaml_lists_each_augmentations_settings_with_its_defaults():
    from modalities import AudioModality, ImageModality

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        augment = compose("train").data.augment
    for kind, modality in (("image", ImageModality), ("audio", AudioModality)):
        parameters = inspect.signature(modality.augmentation).parameters.values()
        settings = OmegaConf.to_container(augment[kind])
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()} == {
            p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp"])
def test_trainer_configs_compose(trainer):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=[f"trainer={trainer}"])
    assert config.trainer._target_ == "lightning.pytorch.Trainer"
    assert config.trainer.use_distributed_sampler is False


@pytest.mark.parametrize("command", ["datagen", "decode", "eval"])
def test_command_configs_compose(command):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = ["problem=algorithmic_copy"] + (["ckpt=x"] if command != "datagen" else [])
        config = compose(command, overrides=overrides)
    assert config.problem.name == "algorithmic_copy" and config.data_dir


def test_an_experiment_sets_top_level_keys_and_the_command_line_still_wins():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        plain = compose("train", overrides=["experiment=quickstart"])
        experiment = compose("train", overrides=["experiment=mnist_digit_strings"])
        overridden = compose("train", overrides=["experiment=mnist_digit_strings",
                                                 "ema_decay=null"])
    assert plain.ema_decay is None
    assert experiment.ema_decay == 0.998  # problems/configs/experiment/mnist_digit_strings.yaml
    assert overridden.ema_decay is None
