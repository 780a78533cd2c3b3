import math

import pytest
import torch
from monai.networks.nets import PatchDiscriminator
from torch.distributions import Normal, kl_divergence as torch_kl

from neuroldm.config import VAEConfig
from neuroldm.vae.losses import (TERMS, VAELoss, adversarial_active, build_discriminator, discriminator_loss,
                                 kl_divergence, l1)


def test_kl_is_zero_for_the_standard_normal_posterior():
    mu, sigma = torch.zeros(2, 4, 3, 4, 5), torch.ones(2, 4, 3, 4, 5)
    assert kl_divergence(mu, sigma).item() == 0.0


def test_kl_matches_the_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    mu = torch.randn(3, 4, 5, 6, 7)
    sigma = torch.rand(3, 4, 5, 6, 7) * 2 + 0.05
    # independent reference: torch.distributions' analytic KL, summed over (C, D, H, W), batch mean
    ref = torch_kl(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma))).flatten(1).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, sigma), ref, rtol=1e-5, atol=1e-4)
    # and one voxel by hand: 0.5 * (mu^2 + s^2 - log s^2 - 1)
    one = kl_divergence(torch.full((1, 1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1, 1), 2.0))
    assert one.item() == pytest.approx(0.5 * (0.25 + 4 - math.log(4) - 1), rel=1e-6)


def test_l1():
    x = torch.randn(2, 1, 4, 4, 4)
    assert l1(x, x).item() == 0.0
    assert l1(x, x + 0.5).item() == pytest.approx(0.5, rel=1e-6)
    y = torch.randn_like(x)
    assert l1(x, y).item() == pytest.approx(float(abs(x.numpy() - y.numpy()).mean()), rel=1e-5)


def test_discriminator_exists_only_with_a_positive_adversarial_weight():
    assert build_discriminator(VAEConfig(adversarial_weight=0.0)) is None
    disc = build_discriminator(VAEConfig(adversarial_weight=0.1, disc_channels=8, disc_layers=2))
    assert isinstance(disc, PatchDiscriminator)
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in disc.modules())
    cfg = VAEConfig(adversarial_weight=0.1, adversarial_start_step=5)
    assert [adversarial_active(cfg, s) for s in (0, 4, 5, 6)] == [False, False, True, True]
    assert not adversarial_active(VAEConfig(adversarial_weight=0.0, adversarial_start_step=0), 100)


class _MSEPerceptual(torch.nn.Module):
    """A stand-in perceptual module: anything mapping (recon, target) to a scalar."""

    def forward(self, recon, target):
        return (recon - target).pow(2).mean()


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 16, 16, 16, generator=g)
    recon = (x + 0.1 * torch.randn(x.shape, generator=g)).requires_grad_(True)
    mu = torch.randn(2, 4, 4, 4, 4, generator=g)
    sigma = torch.rand(2, 4, 4, 4, 4, generator=g) + 0.5
    return x, recon, mu, sigma


def test_total_is_the_weighted_sum_of_the_reported_terms():
    torch.manual_seed(0)
    cfg = VAEConfig(l1_weight=1.0, kl_weight=1e-3, ssim_weight=0.3, perceptual="2.5d", perceptual_weight=0.6,
                    adversarial_weight=0.05, adversarial_start_step=10, disc_channels=8, disc_layers=2)
    disc = _Counting(build_discriminator(cfg))
    loss = VAELoss(cfg, perceptual=_MSEPerceptual(), discriminator=disc)
    x, recon, mu, sigma = _batch()
    out = loss(x, recon, mu, sigma, step=10)
    assert set(out) == {"total", *TERMS} and disc.calls == 1
    assert all(out[k] > 0 for k in TERMS)
    weighted = sum(loss.weights()[k] * out[k] for k in TERMS)
    assert out["total"].item() == pytest.approx(weighted, rel=1e-5)
    # each term is what its own function gives
    assert out["l1"] == pytest.approx(l1(recon, x).item(), rel=1e-6)
    assert out["kl"] == pytest.approx(kl_divergence(mu, sigma).item(), rel=1e-6)
    assert out["perceptual"] == pytest.approx((recon - x).pow(2).mean().item(), rel=1e-6)
    out["total"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_adversarial_term_is_skipped_before_its_start_step():
    cfg = VAEConfig(perceptual="none", adversarial_weight=0.5, adversarial_start_step=100, disc_channels=8,
                    disc_layers=2)
    disc = _Counting(build_discriminator(cfg))
    loss = VAELoss(cfg, discriminator=disc)
    x, recon, mu, sigma = _batch()
    before = loss(x, recon, mu, sigma, step=99)
    assert before["adversarial"] == 0.0 and disc.calls == 0
    assert before["total"].item() == pytest.approx(before["l1"] + cfg.kl_weight * before["kl"], rel=1e-6)
    after = loss(x, recon, mu, sigma, step=100)
    assert after["adversarial"] > 0 and disc.calls == 1


def test_terms_that_are_off_read_zero_and_identical_volumes_cost_nothing():
    cfg = VAEConfig(perceptual="none", ssim_weight=1.0, kl_weight=0.0)
    loss = VAELoss(cfg)
    x = torch.rand(1, 1, 16, 16, 16)
    out = loss(x, x.clone(), torch.zeros(1, 4, 4, 4, 4), torch.ones(1, 4, 4, 4, 4))
    assert out["l1"] == 0.0 and out["kl"] == 0.0 and out["ssim"] == pytest.approx(0.0, abs=1e-5)
    assert out["perceptual"] == 0.0 and out["adversarial"] == 0.0


def test_a_configured_term_without_its_module_is_refused():
    with pytest.raises(ValueError, match="build_perceptual"):
        VAELoss(VAEConfig(perceptual="2.5d", perceptual_weight=0.5))
    with pytest.raises(ValueError, match="build_discriminator"):
        VAELoss(VAEConfig(perceptual="none", adversarial_weight=0.1))
    VAELoss(VAEConfig(perceptual="2.5d", perceptual_weight=0.0))  # weight 0: no module needed


def test_discriminator_loss_is_least_squares_on_real_and_detached_fake():
    torch.manual_seed(0)
    disc = build_discriminator(VAEConfig(adversarial_weight=1.0, disc_channels=8, disc_layers=2))
    real = torch.rand(2, 1, 16, 16, 16)
    fake = torch.rand(2, 1, 16, 16, 16, requires_grad=True)
    loss = discriminator_loss(disc, real, fake)
    # reference: MONAI's least-squares criterion is MSE after a LeakyReLU(0.05), targets 1 (real) and 0 (fake)
    act = torch.nn.LeakyReLU(0.05)
    with torch.no_grad():
        ref = 0.5 * ((act(disc(real)[-1]) - 1).pow(2).mean() + act(disc(fake)[-1]).pow(2).mean())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert fake.grad is None, "the fake must be detached: no gradient to the generator"
    assert all(p.grad is not None for p in disc.parameters() if p.requires_grad)
