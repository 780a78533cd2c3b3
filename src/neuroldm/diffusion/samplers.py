"""The samplers, as one table: everything neuroldm decides about a sampler reads its entry in `SAMPLERS`.

An entry names the sampler, builds its diffusers scheduler from the diffusion model's config, and says how many
steps it takes, which optional arguments its ``step`` takes (``generator`` for stochastic steps, ``eta`` for DDIM),
the tag in sample file names, and the help text of ``neuroldm sample --sampler``. The sampling loop
(`neuroldm.diffusion.process.sample_latents`), `SampleConfig` validation, the command line, sample file names and
``benchmarks/samplers.py`` all read the table, so a new sampler is one entry here.

The samplers (on the training schedule, `schedule_kwargs`):

- ``ddpm``: ancestral sampling over every training timestep with the fixed-small variance (Ho et al. 2020,
  Algorithm 2), as the seed did;
- ``ddim``: DDIM (Song et al. 2021), deterministic at ``eta = 0``;
- ``dpm++``: second-order multistep DPM-Solver++ (Lu et al. 2022), first order at the last step.

Few-step samplers use "trailing" timestep spacing (Lin et al. 2024), which starts at t = T − 1 so the first step
sees pure noise, as training's last timestep did.

This module is imported by `neuroldm.config`, hence by the command line at start-up: it imports neither torch nor
diffusers at module level (the constructors do), which keeps ``neuroldm --help`` fast, and nothing of neuroldm: it
reads the diffusion config through the `Schedule` protocol, which `neuroldm.config.DiffusionConfig` satisfies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Schedule(Protocol):
    """What a sampler reads of the diffusion model's config (`neuroldm.config.DiffusionConfig`)."""

    num_train_timesteps: int
    beta_start: float
    beta_end: float
    schedule: str  # linear, scaled_linear or cosine
    prediction: str  # epsilon or v_prediction


@dataclass(frozen=True)
class Sampler:
    """One sampler: `scheduler` builds it (timesteps not yet set) from the diffusion model's config.

    `every_timestep` samplers run all ``num_train_timesteps`` steps whatever ``sample.steps`` says; the others
    run ``sample.steps``. `default_steps` is the count the benchmark runs and the help suggests (the config's
    ``sample.steps`` is what sampling uses). `step_args` are the optional arguments of the scheduler's ``step``
    that sampling passes on: ``"generator"`` (per-sample generators of stochastic steps), ``"eta"``.
    """

    name: str
    scheduler: Callable[[Schedule], Any]
    tag: str  # in sample file names, which cannot hold every character a name may (dpm++ -> dpmpp)
    default_steps: int | None  # None: every training timestep
    every_timestep: bool
    step_args: frozenset[str]
    help: str

    def steps_for(self, cfg: Schedule, steps: int) -> int:
        """The number of steps this sampler takes when asked for `steps`."""
        return cfg.num_train_timesteps if self.every_timestep else int(steps)

    def make(self, cfg: Schedule, steps: int):
        """The scheduler with its timesteps set, ready for the sampling loop."""
        s = self.scheduler(cfg)
        s.set_timesteps(self.steps_for(cfg, steps))
        return s


_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def schedule_kwargs(cfg: Schedule) -> dict:
    """The schedule and parameterisation every scheduler of `cfg` shares, training's and the samplers'."""
    return {"num_train_timesteps": cfg.num_train_timesteps, "beta_start": cfg.beta_start, "beta_end": cfg.beta_end,
            "beta_schedule": _BETA_SCHEDULES[cfg.schedule], "prediction_type": cfg.prediction}


# The constructors import diffusers when called, not when this module is imported: it keeps `neuroldm --help` fast.

def _ddpm(cfg: Schedule):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule_kwargs(cfg), variance_type="fixed_small", clip_sample=False)


def _ddim(cfg: Schedule):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**schedule_kwargs(cfg), clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing="trailing")


def _dpmpp(cfg: Schedule):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**schedule_kwargs(cfg), algorithm_type="dpmsolver++", solver_order=2,
                                       timestep_spacing="trailing", final_sigmas_type="zero",
                                       lower_order_final=True)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", _ddpm, tag="ddpm", default_steps=None, every_timestep=True,
            step_args=frozenset({"generator"}), help="every training timestep, ancestral (slow)"),
    Sampler("ddim", _ddim, tag="ddim", default_steps=50, every_timestep=False,
            step_args=frozenset({"generator", "eta"}), help="DDIM, --steps steps (sample.eta > 0: stochastic)"),
    Sampler("dpm++", _dpmpp, tag="dpmpp", default_steps=25, every_timestep=False,
            step_args=frozenset(), help="DPM-Solver++ (2nd order), --steps steps"),
)}


def get_sampler(name: str) -> Sampler:
    """The table's entry for `name`; an unknown name is a ValueError that lists the known ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
