"""Training losses of the KL autoencoder: reconstruction, KL, optional SSIM and perceptual terms, adversarial.

The generator objective follows the latent-diffusion autoencoder recipe (Rombach et al. 2022, arXiv:2112.10752,
Sec. 3.1 and App. G; Pinaya et al. 2022, arXiv:2209.07162 for 3D brain MRI)::

    total = l1_weight·L1 + kl_weight·KL + ssim_weight·(1 − SSIM) + perceptual_weight·P + adversarial_weight·G

where G is the least-squares patch-GAN generator loss (Mao et al. 2017), active only from
``cfg.adversarial_start_step`` on (the discriminator warm-up of Esser et al. 2021, arXiv:2012.09841: a GAN loss on
a blurry early autoencoder mostly destabilises it).
"""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn

from neuroldm.config import VAEConfig
from neuroldm.metrics.ssim_fast import ssim_loss

TERMS = ("l1", "kl", "ssim", "perceptual", "adversarial")


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, sigma²) ‖ N(0, I) ) of a diagonal Gaussian posterior, summed over (C, D, H, W), batch mean.

    ``0.5 · Σ (mu² + sigma² − log sigma² − 1)`` (Kingma & Welling 2014, App. B); `mu` and `sigma` are
    ``(B, C, d, h, w)``. This is the seed's definition: the sum over latent voxels makes its scale grow with the
    latent size, which is why its weight is tiny (1e-6).
    """
    var = sigma.pow(2)
    kl = 0.5 * (mu.pow(2) + var - torch.log(var) - 1.0)
    return kl.flatten(1).sum(1).mean()


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element."""
    return (x - y).abs().mean()


def adversarial_active(cfg: VAEConfig, step: int) -> bool:
    """Whether the adversarial terms are on at optimiser step `step` (0-based)."""
    return cfg.adversarial_weight > 0 and step >= cfg.adversarial_start_step


def build_discriminator(cfg: VAEConfig) -> PatchDiscriminator | None:
    """The 3D patch discriminator (Isola et al. 2017) with instance norm, or None when adversarial_weight is 0."""
    if cfg.adversarial_weight <= 0:
        return None
    return PatchDiscriminator(spatial_dims=3, channels=cfg.disc_channels, num_layers_d=cfg.disc_layers,
                              in_channels=1, out_channels=1, norm="INSTANCE")


def _logits(discriminator: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    # MONAI's PatchDiscriminator returns its intermediate features followed by the logits; only the logits count.
    return discriminator(x)[-1:]


_ADV = PatchAdversarialLoss(criterion="least_squares")


def generator_adversarial_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss: push the discriminator's patch logits on `fake` ``(B, 1, D, H, W)`` to 'real'.

    Its backward also leaves gradients in the discriminator's parameters: zero them before the discriminator step.
    """
    return _ADV(_logits(discriminator, fake), target_is_real=True, for_discriminator=False)


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss, the mean of its real and fake terms; `fake` is detached here.

    Both inputs are ``(B, 1, D, H, W)``. Gradients reach only the discriminator.
    """
    loss_real = _ADV(_logits(discriminator, real), target_is_real=True, for_discriminator=True)
    loss_fake = _ADV(_logits(discriminator, fake.detach()), target_is_real=False, for_discriminator=True)
    return 0.5 * (loss_real + loss_fake)


class VAELoss:
    """The autoencoder's generator objective with the weights of a `VAEConfig`.

    The perceptual network and the discriminator are built by the caller (`neuroldm.vae.perceptual.build_perceptual`,
    `build_discriminator`) and passed in, so this class owns no parameters and its state never enters a checkpoint.
    Calling it returns ``{"total": Tensor, "l1": float, "kl": float, "ssim": float, "perceptual": float,
    "adversarial": float}``: the total (to back-propagate) and each term *unweighted*, so that
    ``total = Σ weight·term``. A term that is switched off (weight 0, or adversarial before its start step) is
    not computed and reads 0.0.
    """

    def __init__(self, cfg: VAEConfig, perceptual: nn.Module | None = None,
                 discriminator: nn.Module | None = None):
        if cfg.perceptual != "none" and cfg.perceptual_weight > 0 and perceptual is None:
            raise ValueError("cfg asks for a perceptual term: pass the module from build_perceptual(cfg)")
        if cfg.adversarial_weight > 0 and discriminator is None:
            raise ValueError("cfg.adversarial_weight > 0: pass the module from build_discriminator(cfg)")
        self.cfg = cfg
        self.perceptual = perceptual if cfg.perceptual != "none" and cfg.perceptual_weight > 0 else None
        self.discriminator = discriminator if cfg.adversarial_weight > 0 else None

    def weights(self) -> dict[str, float]:
        c = self.cfg
        return {"l1": c.l1_weight, "kl": c.kl_weight, "ssim": c.ssim_weight, "perceptual": c.perceptual_weight,
                "adversarial": c.adversarial_weight}

    def __call__(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                 step: int = 0) -> dict[str, torch.Tensor | float]:
        """Loss of reconstruction `recon` of `x` (both ``(B, 1, D, H, W)``), posterior `mu`, `sigma`
        ``(B, C, d, h, w)``, at optimiser step `step`."""
        w = self.weights()
        # the pixel terms in float32 even under bf16 autocast: SSIM's local variances E[x²] − E[x]² lose every
        # significant digit in bf16's 8-bit mantissa
        with torch.autocast(device_type=recon.device.type, enabled=False):
            recon32, x32 = recon.float(), x.float()
            terms: dict[str, torch.Tensor] = {"l1": l1(recon32, x32), "kl": kl_divergence(mu.float(), sigma.float())}
            if self.cfg.ssim_weight > 0:
                # SSIM's constants scale with the data range: take it from the real batch (max - min); MONAI's
                # SSIMLoss value (11-voxel Gaussian window, sigma 1.5) computed with a separable window
                win = min(11, *(s if s % 2 else s - 1 for s in x.shape[2:]))
                terms["ssim"] = ssim_loss(recon32, x32, float((x32.max() - x32.min()).clamp_min(1e-8)),
                                          win_size=win)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, x)
        if self.discriminator is not None and adversarial_active(self.cfg, step):
            terms["adversarial"] = generator_adversarial_loss(self.discriminator, recon)
        total = sum(w[k] * v for k, v in terms.items())
        out: dict[str, torch.Tensor | float] = {"total": total}
        out.update({k: float(terms[k].detach()) if k in terms else 0.0 for k in TERMS})
        return out
