"""Latent edits (sdedit, DDIM inversion): the strength's sub-schedule, an exact denoiser, a tiny seeded DiT."""

import pytest
import torch

from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.edit import ddim_invert, edit_latents, edit_steps, edit_timesteps, sampler_of
from neuroldm.diffusion.process import make_sampler

from denoisers import SHAPE, T, Oracle, tiny_model


def test_an_edit_takes_the_last_floor_of_strength_times_steps():
    assert edit_steps(20, 0.5) == 10 and edit_steps(20, 0.3) == 6 and edit_steps(20, 1.0) == 20
    assert edit_steps(100, 0.57) == 57  # 0.57 * 100 is 56.99999999999999 in floating point
    assert edit_steps(20, 0.04) == 0  # below one step: no edit
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="strength must be in"):
            edit_steps(20, bad)


@pytest.mark.parametrize("sampler", ["dpm++", "ddim"])
def test_the_edit_starts_at_strength_times_t(sampler):
    """Trailing spacing: the sub-schedule's timestep at S·T is S·T − 1 when S·N is whole, and the edit keeps the
    schedule's tail from there."""
    cfg = DiffusionConfig()
    scfg = SampleConfig(sampler=sampler, steps=20)
    assert edit_timesteps(cfg, scfg, 0.5) == list(range(499, 0, -50))
    assert edit_timesteps(cfg, scfg, 0.3) == [299, 249, 199, 149, 99, 49]
    assert edit_timesteps(cfg, scfg, 1.0) == make_sampler(cfg, sampler, 20).timesteps.tolist()
    assert edit_timesteps(cfg, scfg, 0.01) == []


def test_inversion_denoises_with_deterministic_ddim():
    scfg = SampleConfig(sampler="dpm++", steps=20, eta=0.5)
    assert sampler_of("sdedit", scfg) == scfg
    assert (sampler_of("inversion", scfg).sampler, sampler_of("inversion", scfg).eta) == ("ddim", 0.0)
    with pytest.raises(ValueError, match="unknown edit method"):
        sampler_of("blend", scfg)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("method,tol", [("sdedit", 1e-5), ("inversion", 1e-2)])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_an_exact_denoiser_edits_its_data_point_back_to_itself(prediction, method, tol, strength):
    """The exact denoiser of a point mass at z: every path from z leads back to z. sdedit does so to float
    rounding; DDIM inversion up to its one-step-ahead prediction (under 1e-2 at 20 steps)."""
    cfg = DiffusionConfig(prediction=prediction)
    target = torch.randn(1, 2, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    z0 = target.expand(2, -1, -1, -1, -1).clone()
    out = edit_latents(Oracle(target, cfg), cfg, z0, torch.tensor([0, 1]), SampleConfig(sampler="dpm++", steps=20),
                       method=method, strength=strength, noise=torch.randn(z0.shape), source=torch.tensor([1, 0]))
    assert (out - target).abs().max() < tol


def test_ddim_inversion_is_the_ddim_update_run_upwards():
    """Against the DDIM update written out (Song et al. 2021, eq. 12 with eta 0, from level s up to level t):
    x0 = (x − sqrt(1 − ab_s)·ε̂) / sqrt(ab_s), x ← sqrt(ab_t)·x0 + sqrt(1 − ab_t)·ε̂, with ε̂ predicted at (x, t),
    over the trailing 20-step schedule's timesteps 49, 99, ..., 499 from the level of t = 0."""
    cfg = DiffusionConfig(prediction="epsilon")
    target = torch.randn(1, 2, 3, 4, 3, generator=torch.Generator().manual_seed(1))
    model = Oracle(target, cfg)
    start = torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    ab = make_sampler(cfg, "ddim", 20).alphas_cumprod
    x, level = start.clone(), ab[0]
    for t in range(49, 500, 50):
        eps = model(x, torch.tensor([t]), torch.tensor([0]))
        x0 = (x - (1 - level).sqrt() * eps) / level.sqrt()
        x, level = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps, ab[t]
    torch.testing.assert_close(ddim_invert(model, cfg, start, None, 20, 0.5), x, rtol=1e-4, atol=1e-4)


def _tiny_edit(method: str, labels, strength=0.5, guidance=2.0, seed=0, source=None, batch=2, steps=10):
    cfg = DiffusionConfig(num_train_timesteps=T, beta_end=0.2, prediction="v_prediction")
    z0 = torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(seed) for _ in range(batch)]
    noise = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    scfg = SampleConfig(sampler="dpm++", steps=steps, guidance=guidance)
    return z0, edit_latents(tiny_model(), cfg, z0, torch.tensor(labels), scfg, method=method, strength=strength,
                            noise=noise, generators=gens, source=source)


@pytest.mark.parametrize("method", ["sdedit", "inversion"])
def test_the_same_seed_gives_the_same_edit_whatever_the_batch(method):
    z0, pair = _tiny_edit(method, [1, 0])
    _, again = _tiny_edit(method, [1, 0])
    torch.testing.assert_close(pair, again, rtol=0, atol=0)
    _, alone = _tiny_edit(method, [1], batch=1)
    torch.testing.assert_close(pair[:1], alone, rtol=1e-5, atol=1e-5)
    assert (pair - z0).abs().max() > 1e-3  # it edited something


def test_sdedit_depends_on_the_seed_and_inversion_does_not():
    _, a = _tiny_edit("sdedit", [1, 0], seed=0)
    _, b = _tiny_edit("sdedit", [1, 0], seed=1)
    assert (a - b).abs().max() > 1e-3
    _, a = _tiny_edit("inversion", [1, 0], seed=0)
    _, b = _tiny_edit("inversion", [1, 0], seed=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_strength_below_one_step_returns_the_latent():
    z0, out = _tiny_edit("sdedit", [1, 0], strength=0.05)  # floor(0.05 x 10) = 0 steps
    torch.testing.assert_close(out, z0, rtol=0, atol=0)


def test_inversion_then_regeneration_without_a_class_change_reproduces_the_latent():
    """On the tiny seeded DiT (a rough network, not an exact denoiser), the round trip under the source class
    without guidance returns the latent to within 5 % of its RMS when it steps through every timestep (T = 50,
    strength 0.3: measured 3.1 %), and its error shrinks as a first-order method's does, by more than half from 10 to
    25 steps (measured 13.7 % to 5.4 %)."""
    labels = torch.tensor([1, 0])

    def error(steps: int) -> float:
        z0, out = _tiny_edit("inversion", labels.tolist(), strength=0.3, guidance=1.0, source=labels, steps=steps)
        return float((out - z0).pow(2).mean().sqrt() / z0.pow(2).mean().sqrt())

    assert error(T) < 0.05
    assert error(25) < error(10) / 2


class NullRecorder(Oracle):
    """The exact denoiser, recording which samples it was asked for unconditionally."""

    def __init__(self, target, cfg):
        super().__init__(target, cfg)
        self.dropped: list[list[bool]] = []

    def forward(self, x, t, y, force_drop=None):
        self.dropped.append([False] * len(y) if force_drop is None else force_drop.tolist())
        return super().forward(x, t, y)


def test_inversion_is_conditioned_on_the_source_class_or_on_the_null_class():
    cfg = DiffusionConfig()
    target = torch.zeros(1, 1, 2, 2, 2)
    for source, dropped in ((None, [True]), (torch.tensor([1]), [False])):
        model = NullRecorder(target, cfg)
        ddim_invert(model, cfg, target, source, 10, 0.5)
        assert model.dropped == [dropped] * 5
