"""Editing a latent with the diffusion model: take it part of the way to noise, then denoise under another class.

Two ways to reach the intermediate noise level (`EDIT_METHODS`), both on the sub-schedule of a few-step sampler:

- ``sdedit`` (Meng et al., "SDEdit: guided image synthesis and editing with stochastic differential equations",
  ICLR 2022): draw ``x_t = sqrt(ab_t)·z0 + sqrt(1 − ab_t)·ε`` from the forward process (`training_scheduler`'s
  ``add_noise``) and run the sampler (``sample.sampler``'s table entry) from t down to 0. The noise decides what
  the edit may change; the seed fixes it.
- ``inversion``: deterministic DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F): the
  DDIM ODE run backwards from z0 up to t, each step predicting ε at the point it starts from (diffusers'
  `DDIMInverseScheduler`), then DDIM (eta 0) back down. The same sub-schedule both ways, so up to that one-step
  approximation, denoising under the class it was inverted with returns z0; the inversion is conditioned on the
  source class when it is known, else on the null class, and never guided (guided inversion drifts; Mokady et al.,
  "Null-text inversion", CVPR 2023).

**Strength** S in (0, 1]: as diffusers' image-to-image pipelines do, a sampler of N steps (`steps`) keeps the last
``floor(S·N)`` steps of its N-step schedule, so the edit starts at the schedule's timestep nearest below S·T
(S·T − 1 under the trailing spacing of the few-step samplers when S·N is a whole number; e.g. 499 for S = 0.5,
N = 20) and costs ``floor(S·N)`` model evaluations (twice that with guidance). A strength under 1/N takes no
step: the edit returns z0 unchanged.

Everything here is in the diffusion model's (scaled) latent space; `neuroldm.vae.latent_space.LatentSpace` maps
to and from the autoencoder's.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMInverseScheduler

from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.process import make_sampler, reverse_steps, training_scheduler
from neuroldm.diffusion.samplers import schedule_kwargs

EDIT_METHODS = ("sdedit", "inversion")
INVERSION_SAMPLER = "ddim"  # the ODE that inversion runs backwards is the one it denoises with


def edit_steps(steps: int, strength: float) -> int:
    """How many of a `steps`-step schedule's steps an edit of `strength` takes: ``floor(strength·steps)``.

    The product is rounded to 9 decimals first, so 0.57 × 100 (56.99999999999999 in floating point) is 57.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return min(steps, math.floor(round(strength * steps, 9)))


def sampler_of(method: str, scfg: SampleConfig) -> SampleConfig:
    """The denoising settings of `method`: `scfg` for sdedit; deterministic DDIM for inversion."""
    if method not in EDIT_METHODS:
        raise ValueError(f"unknown edit method {method!r}; choose from {', '.join(EDIT_METHODS)}")
    return scfg if method == "sdedit" else scfg.model_copy(update={"sampler": INVERSION_SAMPLER, "eta": 0.0})


def edit_timesteps(cfg: DiffusionConfig, scfg: SampleConfig, strength: float) -> list[int]:
    """The training timesteps an edit denoises at, first (the noise level it starts from) to last; empty when
    `strength` is below one step."""
    sched = make_sampler(cfg, scfg.sampler, scfg.steps)
    n = edit_steps(len(sched.timesteps), strength)
    return [int(t) for t in sched.timesteps[len(sched.timesteps) - n:]]


@torch.no_grad()
def predict(model, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
    """The model's unguided prediction at training timestep `t` for class `labels` ``(B,)``, or for the null class
    (no condition) when `labels` is None."""
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    if labels is None:
        y = torch.zeros_like(tt)
        return model(x, tt, y, force_drop=torch.ones_like(y, dtype=torch.bool))
    return model(x, tt, labels)


@torch.no_grad()
def ddim_invert(model, cfg: DiffusionConfig, z0: torch.Tensor, labels: torch.Tensor | None, steps: int,
                strength: float, *, progress=None) -> torch.Tensor:
    """``x_t`` of `z0` ``(B, C, d, h, w)`` by DDIM inversion up the last ``floor(strength·steps)`` timesteps of the
    `steps`-step DDIM schedule, conditioned on `labels` (None: the null class); `progress` is called per step."""
    inverse = DDIMInverseScheduler(**schedule_kwargs(cfg), clip_sample=False, set_alpha_to_one=False,
                                   timestep_spacing="trailing")  # the DDIM sampler's settings (samplers._ddim)
    inverse.set_timesteps(steps)
    x = z0
    for t in inverse.timesteps[:edit_steps(steps, strength)]:
        x = inverse.step(predict(model, x, int(t), labels), int(t), x).prev_sample
        if progress is not None:
            progress()
    return x


@torch.no_grad()
def edit_latents(model, cfg: DiffusionConfig, z0: torch.Tensor, labels: torch.Tensor, scfg: SampleConfig, *,
                 method: str, strength: float, noise: torch.Tensor | None = None,
                 generators: list[torch.Generator] | None = None, source: torch.Tensor | None = None,
                 progress=None) -> torch.Tensor:
    """`z0` ``(B, C, d, h, w)`` edited toward class `labels` ``(B,)``: noised (`method` sdedit, with `noise` like
    `z0`) or inverted (inversion, conditioned on the `source` classes, None: the null class) to the level of
    `strength`, then denoised with `scfg`'s sampler, steps and guidance (`sampler_of`). `generators` drive a
    stochastic sampler as in `sample_latents`; `progress` is called per model evaluation step."""
    scfg = sampler_of(method, scfg)
    sched = make_sampler(cfg, scfg.sampler, scfg.steps)
    n = edit_steps(len(sched.timesteps), strength)
    if n == 0:
        return z0.clone()
    begin = len(sched.timesteps) - n
    timesteps = sched.timesteps[begin:]
    if hasattr(sched, "set_begin_index"):  # multistep solvers: their state starts at this step (diffusers img2img)
        sched.set_begin_index(begin)
    if method == "sdedit":
        if noise is None:
            raise ValueError("sdedit needs the noise to add")
        t = torch.full((z0.shape[0],), int(timesteps[0]), dtype=torch.long)
        x = training_scheduler(cfg).add_noise(z0, noise.to(z0), t.to(z0.device))
    else:
        x = ddim_invert(model, cfg, z0, source, scfg.steps, strength, progress=progress)
    return reverse_steps(model, sched, timesteps, x, labels, scfg, generators=generators, progress=progress)
