"""The diffusion process: noise schedules, the training objective and the sampling loop, on diffusers' schedulers.

Schedulers are diffusers' (`DDPMScheduler` for training; the samplers' in `neuroldm.diffusion.samplers`), a
maintained implementation checked against MONAI's in the tests, rather than a re-derivation. Only their arithmetic
is used; nothing is downloaded.

Schedules (``num_train_timesteps`` T, default 1000): ``linear`` betas from ``beta_start`` to ``beta_end`` (the
seed: 1e-4 … 0.02), ``scaled_linear`` (linear in sqrt(beta); Stable Diffusion / MAISI), ``cosine`` (Nichol &
Dhariwal 2021, diffusers' ``squaredcos_cap_v2``).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.samplers import get_sampler, schedule_kwargs


def training_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The forward process (``add_noise``, ``get_velocity``, ``alphas_cumprod``) of training."""
    return DDPMScheduler(**schedule_kwargs(cfg), variance_type="fixed_small", clip_sample=False)


def make_sampler(cfg: DiffusionConfig, sampler: str, steps: int):
    """The scheduler of `sampler` (an entry of `neuroldm.diffusion.samplers.SAMPLERS`) with its timesteps set:
    `steps` of them, or every training timestep for the samplers that take them all (``ddpm``)."""
    return get_sampler(sampler).make(cfg, steps)


def snr(scheduler: DDPMScheduler, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar / (1 − alpha_bar)`` at integer timesteps `t`."""
    ac = scheduler.alphas_cumprod.to(t.device)[t].double()
    return (ac / (1 - ac)).float()


def _cond(covariates: torch.Tensor | None) -> dict:
    """The covariates keyword of a model call: none for a model without conditions."""
    return {} if covariates is None else {"covariates": covariates}


def prediction_error(model, scheduler: DDPMScheduler, cfg: DiffusionConfig, x0: torch.Tensor, y: torch.Tensor,
                     t: torch.Tensor, noise: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE ``(B,)`` of the model's prediction (epsilon or v) for ``x0`` noised with `noise` at `t`;
    `covariates` ``(B, K)`` for a model with conditions (`neuroldm.diffusion.conditions.encode`)."""
    xt = scheduler.add_noise(x0, noise, t)
    target = noise if cfg.prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
    return (model(xt, t, y, **_cond(covariates)).float() - target.float()).pow(2).flatten(1).mean(1)


def diffusion_loss(model, scheduler: DDPMScheduler, cfg: DiffusionConfig, x0: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator | None = None, covariates: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of the (optionally min-SNR weighted) MSE of the prediction at a random timestep.

    ε-prediction targets the noise; v-prediction targets ``v = sqrt(ab)·ε − sqrt(1 − ab)·x0``. Min-SNR-γ
    (Hang et al. 2023) weights each sample by ``min(SNR, γ)/SNR`` (ε) or ``min(SNR, γ)/(SNR + 1)`` (v).
    """
    b = x0.shape[0]
    t = torch.randint(0, cfg.num_train_timesteps, (b,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    per_sample = prediction_error(model, scheduler, cfg, x0, y, t, noise, covariates)
    if cfg.min_snr_gamma:
        s = snr(scheduler, t)
        clipped = s.clamp(max=cfg.min_snr_gamma)
        per_sample = per_sample * (clipped / s if cfg.prediction == "epsilon" else clipped / (s + 1))
    return per_sample.mean()


@torch.no_grad()
def sample_latents(model, cfg: DiffusionConfig, labels: torch.Tensor, noise: torch.Tensor, scfg: SampleConfig, *,
                   generators: list[torch.Generator] | None = None, progress=None,
                   covariates: torch.Tensor | None = None) -> torch.Tensor:
    """Run the reverse process of `scfg`'s sampler from `noise` ``(B, C, d, h, w)`` for class `labels` ``(B,)``
    (and `covariates` ``(B, K)`` for a model with conditions, NaN = null); returns ``x0`` in the diffusion model's
    (scaled) latent space.

    Classifier-free guidance ``scfg.guidance`` applies at every step, or with ``scfg.guidance_interval``
    ``(low, high)`` only at training timesteps ``low <= t <= high``; the other steps use the plain conditional
    prediction (one forward pass, not two). Guiding the high-noise steps, where the coarse layout of a volume forms,
    also pushes apart whatever differs by chance between the classes' training subjects (head size, position) and
    narrows the samples' spread of it; guiding only the lower-noise steps keeps the class's local features
    (Kynkaanniemi et al., "Applying guidance in a limited interval improves sample and distribution quality in
    diffusion models", NeurIPS 2024).

    `generators` (one per sample) drive the stochastic samplers (DDPM, DDIM with eta > 0), so a sample depends
    only on its own seed, not on the batch it is drawn in. `progress` is called once per step.
    """
    sched = make_sampler(cfg, scfg.sampler, scfg.steps)
    return reverse_steps(model, sched, sched.timesteps, noise * sched.init_noise_sigma, labels, scfg,
                         generators=generators, progress=progress, covariates=covariates)


@torch.no_grad()
def reverse_steps(model, sched, timesteps: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, scfg: SampleConfig,
                  *, generators: list[torch.Generator] | None = None, progress=None,
                  covariates: torch.Tensor | None = None) -> torch.Tensor:
    """The reverse-process loop of `sample_latents` over `timesteps` of `sched` (all of them, or the tail that an
    edit starts from: `neuroldm.diffusion.edit`), from `x` at the first of them; guidance and `covariates` as
    `sample_latents` (an edit passes none: a model with conditions then edits with every covariate null)."""
    spec = get_sampler(scfg.sampler)
    step_args = {k: v for k, v in {"generator": generators, "eta": scfg.eta}.items() if k in spec.step_args}
    low, high = scfg.guidance_interval or (None, None)
    for t in timesteps:
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        g = scfg.guidance if low is None or low <= int(t) <= high else 1.0
        out = model.forward_with_cfg(sched.scale_model_input(x, t), tt, labels, g, **_cond(covariates))
        x = sched.step(out, t, x, **step_args).prev_sample
        if progress is not None:
            progress()
    return x
