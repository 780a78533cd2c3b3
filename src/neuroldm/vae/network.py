"""The 3D KL autoencoder: named architecture presets on MONAI's plain `AutoencoderKL`.

All presets are the latent-diffusion autoencoder of Rombach et al. 2022 (arXiv:2112.10752) in its 3D brain form
(Pinaya et al. 2022, arXiv:2209.07162): 1 input channel, ``len(channels) - 1 = 2`` downsamplings, so a
``(B, 1, D, H, W)`` volume maps to a ``(B, C, D/4, H/4, W/4)`` latent, with no attention anywhere (3D attention
at full resolution is the memory hog, and the seed model had none).

Why plain ``monai.networks.nets.AutoencoderKL`` and not MAISI's ``AutoencoderKlMaisi``: the MAISI class's only
differences that matter here are ``MaisiGroupNorm3D``, which loops over the groups in Python and, measured on
2 CPU cores at an equal config, costs about 40 % more time and 50 % more memory per training step, and
``norm_float16``, which fails on CPU (half input vs float bias). The ``maisi`` preset therefore is MAISI's
official *shape* (channels, res blocks, groups) built on the plain class; MAISI's released weights are not
loadable into it as-is and are not used (they cannot be downloaded here anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import AutoencoderKL

from neuroldm.config import VAEConfig
from neuroldm.errors import ConfigError


@dataclass(frozen=True)
class VAEArch:
    """One architecture preset: channels per level, residual blocks per level, GroupNorm groups."""

    channels: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    norm_num_groups: int

    @property
    def downsample(self) -> int:
        """Spatial reduction factor per axis (each level after the first halves the grid)."""
        return 2 ** (len(self.channels) - 1)


VAE_ARCHS: dict[str, VAEArch] = {
    # The seed's model (NeuroLDM-3D): 2.93 M parameters with 4 latent channels.
    "paper": VAEArch(channels=(32, 64, 128), num_res_blocks=(1, 1, 1), norm_num_groups=16),
    # Trains on the demo grid (40x48x40) on 2 CPU cores in minutes (0.19 M parameters): one AdamW step of batch 2
    # with L1 + KL + SSIM took 0.92 s; (16, 32, 64) took 2.2 s and reached a lower validation SSIM in 10 minutes.
    "demo": VAEArch(channels=(8, 16, 32), num_res_blocks=(1, 1, 1), norm_num_groups=8),
    # MAISI's official autoencoder shape (Project-MONAI/tutorials generation/maisi/configs/config_maisi.json),
    # 20.94 M parameters.
    "maisi": VAEArch(channels=(64, 128, 256), num_res_blocks=(2, 2, 2), norm_num_groups=32),
}


def vae_arch(cfg: VAEConfig) -> VAEArch:
    try:
        return VAE_ARCHS[cfg.arch]
    except KeyError:
        raise ConfigError(f"unknown vae.arch '{cfg.arch}'; available: {', '.join(VAE_ARCHS)}") from None


def build_vae(cfg: VAEConfig, grad_checkpointing: bool = False) -> AutoencoderKL:
    """The autoencoder of preset ``cfg.arch`` with ``cfg.latent_channels`` latent channels (random weights).

    `grad_checkpointing` recomputes the encoder and the decoder (each as one block, MONAI's ``use_checkpoint``)
    in the backward pass instead of keeping their activations: less memory for one more forward pass.
    """
    arch = vae_arch(cfg)
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=arch.channels,
        num_res_blocks=arch.num_res_blocks,
        attention_levels=(False,) * len(arch.channels),
        latent_channels=cfg.latent_channels,
        norm_num_groups=arch.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        include_fc=False,
        use_checkpoint=grad_checkpointing,
    )


def check_grid(grid: Sequence[int], factor: int = 4) -> None:
    """Raise `ConfigError` unless every axis of `grid` is a multiple of the autoencoder's `factor`."""
    bad = [g for g in grid if g % factor]
    if bad:
        ok = ",".join(str(factor * round(g / factor)) for g in grid)
        raise ConfigError(f"grid {tuple(int(g) for g in grid)} is not divisible by {factor} on every axis, as the "
                          f"autoencoder's {factor}x downsampling needs; use e.g. --set prepare.grid=[{ok}]")


def latent_shape(grid: Sequence[int], cfg: VAEConfig) -> tuple[int, int, int, int]:
    """``(C, D/4, H/4, W/4)`` of the latent of one volume of spatial shape `grid` ``(D, H, W)``."""
    f = vae_arch(cfg).downsample
    check_grid(grid, f)
    return (cfg.latent_channels, *(int(g) // f for g in grid))


def downsample_factor(model: AutoencoderKL) -> int:
    # AutoencoderKL's encoder has one Downsample per level but the last.
    return 2 ** sum(type(b).__name__ == "AEKLDownsample" for b in model.encoder.blocks)


def encode_stats(model: AutoencoderKL, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation, each ``(B, C, D/4, H/4, W/4)``, of a ``(B, 1, D, H, W)`` batch."""
    check_grid(x.shape[2:], downsample_factor(model))
    return model.encode(x)


def decode(model: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 4d, 4h, 4w)`` volume of a ``(B, C, d, h, w)`` latent, in one pass (see `neuroldm.vae.decode`)."""
    return model.decode(z)
