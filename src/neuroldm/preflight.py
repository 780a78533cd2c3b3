"""Every check a command can make before it starts work: names, cross-field rules, and the files its stages need.

A bad value used to surface late: ``--set diffusion.model=DiT-S/3`` passed `load_config`, and ``neuroldm run``
finished prepare, train-vae and encode before `build_dit` failed with a traceback. `preflight` runs first in every
command, and in `run_pipeline` before the run directory is created, for the stages that invocation may run; the
first broken rule is raised as one line (`ConfigError` / `InputError`) naming the key and the valid values or
the fix.

Where each rule lives:

- `neuroldm.config`, when any command loads its config: unknown keys; the names that are literals (vae.arch,
  classifier.arch, sample.sampler, saliency methods, ...); value ranges; data.classes against data.label_map
  (`DataConfig`); positive DiT patch and window and VAE decoding window.
- here, per stage (`check_config` for names and rules, `check_files` for files), because they need a registry
  or the file system:

  ================  ====================================================================================
  train-vae         vae.arch is a `VAE_ARCHS` preset; prepare.grid and vae.patch_size are multiples of its
                    downsampling on every axis; the perceptual backbone's weights file (vae.perceptual)
  train-diffusion   diffusion.model is a `DIT_MODELS` size
  classify,         classifier.arch is ``cnn`` or an EfficientNetV2 preset
  classify-grid
  (with a device)   each training stage's train.amp is an autocast the device can run (`runtime.check_amp`)
  evaluate          the FID Inception weights (or evaluate.random_features); evaluate.medicalnet_path
  report            every key of pipeline.bars is a flat metric of metrics.json
  ================  ====================================================================================

  The other stages (demo-cohort, prepare, encode, sample, saliency, counterfactual, report) need nothing beyond the
  config's own validation: encode, sample and counterfactual use the models a run already holds, with the settings
  they were built with.

What the DiT does *not* require, so is not checked: a patch that tiles the latent grid (`PatchEmbed3D` pads an
axis that is not a multiple of the patch and crops the output) or a window that fits the token grid (`Attention`
cuts a window to the grid and masks the padding); any positive patch and window build.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from neuroldm.classify.efficientnet import PRESETS
from neuroldm.config import Config
from neuroldm.diffusion.dit import DIT_MODELS
from neuroldm.errors import ConfigError, InputError
from neuroldm.evaluate.inception import find_inception, resolve_feature_network
from neuroldm.report.headline import check_bar_keys
from neuroldm.runs import STAGE_ORDER
from neuroldm.runtime import check_amp
from neuroldm.vae.network import VAE_ARCHS
from neuroldm.vae.perceptual import backbone_weights_path


def preflight(cfg: Config, stages: Iterable[str], device: str | torch.device | None = None) -> None:
    """Raise the first broken rule or missing file of `stages` (pipeline stage or command names) in `cfg`, and,
    given the `device`, an autocast setting of a training stage that it cannot run.

    Names without rules of their own (e.g. ``prepare``) pass; `cfg` itself was validated when it was loaded.
    """
    stages = set(stages)
    check_config(cfg, stages)
    check_files(cfg, stages)
    if device is not None:
        for stage, train in (("train-vae", cfg.vae.train), ("train-diffusion", cfg.diffusion.train),
                             ("classify", cfg.classifier.train), ("classify-grid", cfg.classifier.train)):
            if stage in stages:
                check_amp(device, train.amp)


def check_stage_options(from_stage: str | None, only: str | None, stages=STAGE_ORDER) -> None:
    """``--from`` and ``--only`` name stages of `stages`, and not both."""
    for option, name in (("--from", from_stage), ("--only", only)):
        if name is not None and name not in stages:
            raise ConfigError(f"{option} {name!r}: unknown stage; stages: {', '.join(stages)}")
    if from_stage and only:
        raise ConfigError("--from and --only exclude each other")


def check_pipeline_input(cfg: Config) -> None:
    """`neuroldm run` needs a cohort: pipeline.input names it (a BIDS folder, a CSV, or the demo cohort)."""
    if cfg.pipeline.input is None:
        raise ConfigError("pipeline.input is not set: name the cohort (a BIDS folder or a CSV) with "
                          "--set pipeline.input=PATH, or run `neuroldm demo`")


# --------------------------------------------------------------------------------------------------------------
# Names and cross-field rules
# --------------------------------------------------------------------------------------------------------------

def check_config(cfg: Config, stages: Iterable[str]) -> None:
    """The registries' names and the rules between keys that the stages in `stages` depend on."""
    stages = set(stages)
    if "train-vae" in stages:
        check_vae(cfg)
    if "train-diffusion" in stages:
        check_dit(cfg)
    if stages & {"classify", "classify-grid"}:
        check_classifier(cfg)
    if "report" in stages:
        check_bar_keys(cfg.pipeline.bars)


def check_vae(cfg: Config) -> None:
    """vae.arch names a preset, and the volumes it trains on (prepare.grid, vae.patch_size) are multiples of its
    downsampling factor on every axis (the encoder halves the grid per level, the decoder doubles it back)."""
    arch = VAE_ARCHS.get(cfg.vae.arch)
    if arch is None:
        raise ConfigError(f"vae.arch {cfg.vae.arch!r} is not an autoencoder preset; choose from "
                          f"{', '.join(VAE_ARCHS)}")
    _check_multiple("prepare.grid", cfg.prepare.grid, arch.downsample, cfg.vae.arch)
    if cfg.vae.patch_size is not None:
        _check_multiple("vae.patch_size", cfg.vae.patch_size, arch.downsample, cfg.vae.arch)


def _check_multiple(key: str, shape: Iterable[int], factor: int, arch: str) -> None:
    shape = [int(s) for s in shape]
    if any(s % factor for s in shape):
        fix = ",".join(str(max(factor, factor * round(s / factor))) for s in shape)
        raise ConfigError(f"{key} {shape} is not a multiple of {factor} on every axis, as vae.arch {arch!r} "
                          f"downsamples {factor}x; use e.g. --set {key}=[{fix}]")


def check_dit(cfg: Config) -> None:
    """diffusion.model names a `DIT_MODELS` size (`build_dit` would refuse it only after the VAE is trained)."""
    if cfg.diffusion.model not in DIT_MODELS:
        raise ConfigError(f"diffusion.model {cfg.diffusion.model!r} is not a DiT size; choose from "
                          f"{', '.join(DIT_MODELS)}")


def check_classifier(cfg: Config) -> None:
    """classifier.arch is ``cnn`` or ``efficientnetv2-<preset>`` of `neuroldm.classify.efficientnet.PRESETS`."""
    valid = ["cnn", *(f"efficientnetv2-{p}" for p in PRESETS)]
    if cfg.classifier.arch not in valid:
        raise ConfigError(f"classifier.arch {cfg.classifier.arch!r} is not a classifier; choose from "
                          f"{', '.join(valid)}")


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------

def check_files(cfg: Config, stages: Iterable[str]) -> None:
    """The local weight files the stages in `stages` will read (nothing is ever downloaded)."""
    stages = set(stages)
    if "train-vae" in stages:
        check_perceptual_weights(cfg)
    if "evaluate" in stages:
        check_fid_weights(cfg)
        check_medicalnet_weights(cfg)


def check_perceptual_weights(cfg: Config) -> None:
    """The backbone file of vae.perceptual, looked up as `build_perceptual` does (its message names both fixes:
    give the file, or turn the term off)."""
    if cfg.vae.perceptual == "none" or cfg.vae.perceptual_weight <= 0:
        return
    backbone_weights_path(cfg.vae)


def check_fid_weights(cfg: Config) -> None:
    """Fail in one line before hours of training when the evaluation's FID weights are missing."""
    if find_inception(cfg.evaluate.inception_path) is None and not cfg.evaluate.random_features:
        resolve_feature_network(cfg.evaluate)  # raises the one-line error that says how to install them


def check_medicalnet_weights(cfg: Config) -> None:
    """evaluate.medicalnet_path, when set, is a file (the 3D FID reads it after every 2D metric)."""
    path = cfg.evaluate.medicalnet_path
    if path and not Path(path).is_file():
        raise InputError(path, "MedicalNet weights file not found (evaluate.medicalnet_path; nothing is downloaded): "
                               "give the file, or leave the 3D FID out with --set evaluate.medicalnet_path=null")
