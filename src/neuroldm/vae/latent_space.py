"""The diffusion model's latent space: the autoencoder's latents times one scale factor.

The scale factor (Rombach et al. 2022, sec. 4.3; Stable Diffusion's ``scaling_factor``) is ``1 / std`` of the
training-split latents, so the latents the noise schedule sees have unit variance, as it assumes. Encoding computes
it (`from_std`), training scales the autoencoder's latents into diffusion space (`scale`), sampling brings the
samples back for the decoder (`unscale`): one object does all three, so they cannot disagree. The factor travels
as ``scale_factor`` in ``latents.json`` and in the diffusion model file's metadata (`from_meta` reads either).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentSpace:
    """``scale(z) = z · scale_factor`` (autoencoder -> diffusion) and ``unscale(z) = z / scale_factor`` (back)."""

    scale_factor: float

    @classmethod
    def from_std(cls, std: float) -> LatentSpace:
        """The space in which latents of standard deviation `std` have unit variance."""
        return cls(1.0 / std)

    @classmethod
    def from_meta(cls, meta: Mapping) -> LatentSpace:
        """From ``latents.json`` or the diffusion model's metadata (both hold ``scale_factor``)."""
        return cls(float(meta["scale_factor"]))

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents ``(B, C, d, h, w)`` -> the diffusion model's unit-variance latents."""
        return z * self.scale_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents ``(B, C, d, h, w)`` -> autoencoder latents, ready to decode."""
        return z / self.scale_factor
