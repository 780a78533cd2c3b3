"""Golden full-loop values of every sampler on a tiny seeded DiT (the diffusers tests' pattern).

Each case runs the whole reverse process of a tiny DiT, whose weights are fixed by seeds, from fixed seeded noise,
and compares a few summary numbers with values recorded once. The values were recorded before the samplers moved
into one table, so they show that move changed no number; an upgrade of diffusers that changes a scheduler's
arithmetic fails here (pyproject.toml pins the tested range).
"""

import pytest
import torch

from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.process import sample_latents
from neuroldm.diffusion.samplers import SAMPLERS, Sampler, get_sampler

from denoisers import SHAPE, T, tiny_model


def run_case(sampler: str, steps: int, guidance: float, guidance_interval, eta: float,
             prediction: str) -> torch.Tensor:
    cfg = DiffusionConfig(num_train_timesteps=T, beta_end=0.2, prediction=prediction)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    noise = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    scfg = SampleConfig(sampler=sampler, steps=steps, guidance=guidance, guidance_interval=guidance_interval, eta=eta)
    return sample_latents(tiny_model(), cfg, torch.tensor([0, 1]), noise, scfg, generators=gens)


def summary(x: torch.Tensor) -> list[float]:
    """Sum, mean |x| and four elements spread over both samples."""
    flat = x.flatten()
    return [float(x.sum()), float(x.abs().mean()), *(float(flat[i]) for i in (0, 37, 64 + 5, flat.numel() - 1))]


# (sampler, steps, guidance, guidance_interval, eta, prediction) -> summary
GOLDEN = {
    ('ddpm', 50, 1.0, None, 0.0, 'epsilon'):
        [665.0810547, 22.2645512, 8.9260559, 5.2063494, -22.6350307, -56.3517227],
    ('ddpm', 50, 3.0, None, 0.0, 'epsilon'):
        [683.5733643, 22.7417908, 5.9445076, 9.6270876, -20.8402138, -57.1950989],
    ('ddim', 5, 1.0, None, 0.0, 'epsilon'):
        [361.8468933, 14.4162121, 5.9922338, -6.1658292, -27.9664459, -27.2558613],
    ('ddim', 5, 3.0, None, 0.0, 'epsilon'):
        [308.1983032, 14.7901278, 1.9677261, -1.2472025, -27.0466385, -28.5106926],
    ('ddim', 5, 1.0, None, 0.5, 'epsilon'):
        [357.2038574, 14.8153744, 7.986537, -7.4717073, -29.2958012, -28.5968533],
    ('dpm++', 5, 1.0, None, 0.0, 'epsilon'):
        [354.6139221, 14.3539343, 6.089859, -6.7844582, -28.229496, -28.1792412],
    ('dpm++', 5, 3.0, None, 0.0, 'epsilon'):
        [316.9243164, 14.7188492, 2.337491, -2.4471781, -27.4819622, -29.2185745],
    ('dpm++', 5, 3.0, (0, 25), 0.0, 'epsilon'):
        [359.9126892, 14.3597698, 5.9921379, -6.7686019, -28.1492157, -28.0673122],
    ('dpm++', 5, 3.0, None, 0.0, 'v_prediction'):
        [37.9253578, 1.1481378, 0.553929, 0.3868568, -1.9211607, -1.5281184],
    ('ddim', 5, 3.0, (0, 25), 0.0, 'v_prediction'):
        [35.1122398, 1.0350168, 0.7898876, 0.2238745, -1.6755782, -1.2459675],
}


@pytest.mark.parametrize("case", list(GOLDEN), ids=lambda c: "-".join(str(v) for v in c))
def test_full_loop_matches_golden_values(case):
    got = summary(run_case(*case))
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(GOLDEN[case], dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# The table: one entry is all a sampler needs
# --------------------------------------------------------------------------------------------------------------

def test_every_decision_about_a_sampler_reads_its_table_entry(monkeypatch):
    from diffusers import EulerDiscreteScheduler

    from neuroldm.cli import build_parser
    from neuroldm.diffusion.process import make_sampler, schedule_kwargs
    from neuroldm.diffusion.sample import sample_name, steps_taken

    fake = Sampler("euler", lambda cfg: EulerDiscreteScheduler(**schedule_kwargs(cfg), timestep_spacing="trailing"),
                   tag="eul", default_steps=30, every_timestep=False, step_args=frozenset({"generator"}),
                   help="Euler (Karras et al. 2022)")
    monkeypatch.setitem(SAMPLERS, "euler", fake)
    cfg = DiffusionConfig(num_train_timesteps=T, beta_end=0.2)

    scfg = SampleConfig(sampler="euler", steps=4)
    assert make_sampler(cfg, "euler", 4).timesteps.tolist() == [49, 37, 24, 11]
    assert sample_name("TLE", steps_taken(scfg, cfg), 7) == "TLE_eul4_g1_seed7"
    assert build_parser().parse_args(["sample", "--run", "r", "--n", "1", "--label", "HC", "--out", "o",
                                      "--sampler", "euler"]).sampler == "euler"
    # the sampling loop scales the model input as this scheduler asks and passes only the arguments it takes
    x = run_case("euler", 4, 3.0, None, 0.0, "epsilon")
    assert x.shape == (2, *SHAPE) and torch.isfinite(x).all()


def test_unknown_sampler_is_refused_with_the_known_names():
    from pydantic import ValidationError

    from neuroldm.config import load_config
    from neuroldm.diffusion.process import make_sampler
    from neuroldm.errors import ConfigError

    with pytest.raises(ValidationError, match=r"unknown sampler 'euler'; choose from ddpm, ddim, dpm\+\+"):
        SampleConfig(sampler="euler")
    with pytest.raises(ConfigError, match=r"sample\.sampler.*choose from ddpm, ddim, dpm\+\+"):
        load_config(None, None, ["sample.sampler=euler"])
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler(DiffusionConfig(), "euler", 10)


def test_ddpm_takes_every_training_timestep_whatever_steps_says():
    from neuroldm.diffusion.sample import sample_name, steps_taken

    cfg = DiffusionConfig(num_train_timesteps=T)
    assert get_sampler("ddpm").make(cfg, 3).timesteps.tolist() == list(range(T - 1, -1, -1))
    assert get_sampler("ddim").make(cfg, 3).timesteps.tolist() == [49, 32, 16]  # trailing: starts at T - 1
    assert sample_name("HC", steps_taken(SampleConfig(sampler="ddpm", steps=3), cfg), 0) == f"HC_ddpm{T}_g1_seed0"
    assert sample_name("HC", SampleConfig(sampler="dpm++", steps=25, guidance=3, guidance_interval=(0, 500)),
                       1) == "HC_dpmpp25_g3i0-500_seed1"


def test_sample_options_override_the_config_section_and_are_validated(monkeypatch, tmp_path, capsys):
    import neuroldm.diffusion.sample as sample_module
    from neuroldm.cli import main

    seen = []

    def fake(run_dir, out, n, label, scfg, *, seed, device, progress, conditions=None):
        seen.append(scfg)
        return {"written": n, "skipped": 0, "label": label, "seconds": 0.0}

    monkeypatch.setattr(sample_module, "sample_to_folder", fake)
    base = ["sample", "--run", str(tmp_path), "--n", "1", "--label", "HC", "--out", str(tmp_path), "--no-progress",
            "--set", "sample.sampler=ddim", "--set", "sample.eta=0.5", "--set", "sample.steps=40"]
    assert main(base + ["--steps", "8", "--guidance-interval", "0", "300"]) == 0
    assert seen[-1] == SampleConfig(sampler="ddim", steps=8, eta=0.5, guidance_interval=(0, 300))
    assert main(base + ["--steps", "0"]) == 2
    assert "--steps: Input should be greater than or equal to 1 (got 0)" in capsys.readouterr().err
    assert main(base + ["--guidance-interval", "600", "500"]) == 2
    assert "--guidance-interval" in capsys.readouterr().err and len(seen) == 1
