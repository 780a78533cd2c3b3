"""Noise schedules and samplers: diffusers against MONAI, the loss weighting, and samplers on an exact denoiser."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler as MonaiDDIM
from monai.networks.schedulers import DDPMScheduler as MonaiDDPM

from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.process import diffusion_loss, make_sampler, sample_latents, snr, training_scheduler

from denoisers import Oracle

MONAI_SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_schedules_and_forward_process_equal_monai(schedule):
    cfg = DiffusionConfig(schedule=schedule)
    ours = training_scheduler(cfg)
    ref = MonaiDDPM(num_train_timesteps=1000, schedule=MONAI_SCHEDULES[schedule], beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod.float(), rtol=1e-5, atol=1e-7)
    x0, noise, t = torch.randn(3, 4, 5, 6, 5), torch.randn(3, 4, 5, 6, 5), torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=1e-5,
                               atol=1e-6)


def test_cosine_schedule_is_nichol_dhariwal():
    ac = training_scheduler(DiffusionConfig(schedule="cosine")).alphas_cumprod.double()
    f = lambda t: torch.cos((t / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2  # noqa: E731
    t = torch.arange(1, 1001, dtype=torch.float64)
    ref = torch.cumprod(1 - torch.clamp(1 - f(t) / f(t - 1), max=0.999), 0)
    torch.testing.assert_close(ac, ref, rtol=1e-5, atol=1e-7)


def test_ddim_step_equals_monai():
    cfg = DiffusionConfig()
    ours = make_sampler(cfg, "ddim", 50)
    ref = MonaiDDIM(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False, set_alpha_to_one=False)
    ref.set_timesteps(50)
    x, eps = torch.randn(2, 4, 5, 6, 5), torch.randn(2, 4, 5, 6, 5)
    # both step from t to t - 1000 // 50; trailing spacing starts at 999, MONAI's at 980: compare at t = 980
    ours_prev = ours.step(eps, 980, x).prev_sample
    ref_prev, _ = ref.step(eps, 980, x)
    torch.testing.assert_close(ours_prev, ref_prev, rtol=1e-5, atol=1e-5)


def test_ddpm_mean_equals_monai_at_the_last_step():
    cfg = DiffusionConfig()
    ours, ref = make_sampler(cfg, "ddpm", 0), MonaiDDPM(num_train_timesteps=1000, clip_sample=False)
    ref.set_timesteps(1000)
    x, eps = torch.randn(2, 4, 5, 6, 5), torch.randn(2, 4, 5, 6, 5)
    # at t = 0 no noise is added, so the step is the posterior mean in both; 1 - alpha_bar_0 = 1e-4 in float32
    # differs between the two in the 4th digit, hence the tolerance
    torch.testing.assert_close(ours.step(eps, 0, x).prev_sample, ref.step(eps, 0, x)[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("dpm++", 10), ("ddpm", 1)])  # ddpm: steps ignored
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_samplers_reach_the_data_point_with_an_exact_denoiser(sampler, steps, prediction):
    cfg = DiffusionConfig(prediction=prediction)
    target = torch.randn(1, 2, 3, 4, 3)
    noise = torch.randn(2, 2, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    x0 = sample_latents(Oracle(target, cfg), cfg, torch.tensor([0, 1]), noise,
                        SampleConfig(sampler=sampler, steps=steps), generators=gens)
    assert (x0 - target).abs().max() < 0.05


def test_ddpm_noise_depends_only_on_each_samples_generator():
    cfg = DiffusionConfig(num_train_timesteps=50)
    model = Oracle(torch.zeros(1, 1, 2, 2, 2), cfg)
    noise = torch.randn(2, 1, 2, 2, 2)
    make = lambda: [torch.Generator().manual_seed(s) for s in (7, 8)]  # noqa: E731
    ddpm = SampleConfig(sampler="ddpm")
    pair = sample_latents(model, cfg, torch.tensor([0, 0]), noise, ddpm, generators=make())
    alone = sample_latents(model, cfg, torch.tensor([0]), noise[1:], ddpm, generators=make()[1:])
    torch.testing.assert_close(pair[1:], alone)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights(prediction):
    cfg = DiffusionConfig(prediction=prediction, min_snr_gamma=5.0)
    sched = training_scheduler(cfg)

    class Zero(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.zeros_like(x)

    x0 = torch.randn(64, 1, 4, 4, 4)
    g = torch.Generator().manual_seed(3)
    loss = diffusion_loss(Zero(), sched, cfg, x0, torch.zeros(64, dtype=torch.long), generator=g)
    # replay the draws: same t and noise, then the weighted MSE by hand
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (64,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    target = noise if prediction == "epsilon" else sched.get_velocity(x0, noise, t)
    s = snr(sched, t)
    w = s.clamp(max=5) / (s if prediction == "epsilon" else s + 1)
    assert float(loss) == pytest.approx(float((w * target.pow(2).flatten(1).mean(1)).mean()), rel=1e-5)


class GuidanceRecorder(Oracle):
    """The exact denoiser, recording the guidance scale it is asked for at each timestep."""

    def __init__(self, target, cfg):
        super().__init__(target, cfg)
        self.calls: list[tuple[int, float]] = []

    def forward_with_cfg(self, x, t, y, guidance):
        self.calls.append((int(t[0]), guidance))
        return self(x, t, y)


def test_guidance_interval_guides_only_the_timesteps_inside_it():
    cfg = DiffusionConfig()
    noise = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    model = GuidanceRecorder(torch.zeros(1, 1, 2, 2, 2), cfg)
    sample_latents(model, cfg, torch.tensor([1]), noise,
                   SampleConfig(sampler="ddim", steps=10, guidance=3.0, guidance_interval=(0, 500)))
    timesteps = make_sampler(cfg, "ddim", 10).timesteps.tolist()
    assert [t for t, _ in model.calls] == timesteps
    assert {t: g for t, g in model.calls} == {t: (3.0 if t <= 500 else 1.0) for t in timesteps}
    assert {g for _, g in model.calls} == {1.0, 3.0}  # both sides of 500 are visited: the test can fail

    everywhere = GuidanceRecorder(torch.zeros(1, 1, 2, 2, 2), cfg)
    sample_latents(everywhere, cfg, torch.tensor([1]), noise,
                   SampleConfig(sampler="ddim", steps=10, guidance=3.0, guidance_interval=(0, cfg.num_train_timesteps)))
    assert {g for _, g in everywhere.calls} == {3.0}


def test_guidance_interval_must_be_ordered():
    from pydantic import ValidationError

    from neuroldm.config import SampleConfig

    assert SampleConfig(guidance_interval=[0, 500]).guidance_interval == (0, 500)
    with pytest.raises(ValidationError, match="guidance_interval"):
        SampleConfig(guidance_interval=[600, 500])
