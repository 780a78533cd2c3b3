"""`neuroldm.preflight`: every name, cross-field rule and weights file checked before a stage starts work."""

import pytest

from neuroldm.classify.efficientnet import PRESETS
from neuroldm.config import load_config
from neuroldm.diffusion.dit import DIT_MODELS, build_dit
from neuroldm.errors import ConfigError, InputError
from neuroldm.evaluate import inception
from neuroldm.pipeline import runner
from neuroldm.pipeline.stages import STAGE_NAMES
from neuroldm.preflight import preflight
from neuroldm.vae.network import VAE_ARCHS, VAEArch


def _cfg(*overrides):
    """The demo preset (no weights files needed but the FID's), with `overrides`."""
    return load_config("demo", None, ["evaluate.random_features=true", *overrides])


def test_the_demo_and_paper_presets_pass_every_stage(tmp_path):
    preflight(_cfg(), STAGE_NAMES)
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"not read here")
    preflight(load_config("paper", None, [f"vae.perceptual_weights_path={weights}", "evaluate.random_features=true"]),
              STAGE_NAMES)


# --------------------------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------------------------

def test_an_unknown_dit_model_names_the_key_and_every_size():
    with pytest.raises(ConfigError) as e:
        preflight(_cfg("diffusion.model=DiT-S/3"), ["train-diffusion"])
    msg = str(e.value)
    assert msg.startswith("diffusion.model 'DiT-S/3'") and "\n" not in msg
    assert all(name in msg for name in DIT_MODELS)
    preflight(_cfg("diffusion.model=DiT-S/3"), ["prepare", "train-vae", "sample"])  # only train-diffusion builds it


@pytest.mark.parametrize("model", sorted(DIT_MODELS))
def test_every_dit_size_passes(model):
    preflight(_cfg(f"diffusion.model={model}"), ["train-diffusion"])


@pytest.mark.parametrize("patch, window", [((3, 3, 3), (3, 3, 3)), ((4, 2, 4), (8, 8, 8)), ((7, 5, 1), None),
                                           (None, (1, 1, 1)), ((20, 20, 20), (2, 3, 4))])
def test_any_positive_patch_and_window_pass_because_the_dit_builds_with_them(patch, window):
    """No tiling rule: the DiT pads a partial patch and cuts a window to the token grid (the demo latent is
    10x12x10, which neither (3, 3, 3) patches nor 8-token windows tile)."""
    sets = [f"diffusion.patch={list(patch) if patch else 'null'}", f"diffusion.window={list(window) if window else 'null'}",
            "diffusion.model=tiny"]
    cfg = _cfg(*sets)
    preflight(cfg, ["train-diffusion"])
    d = cfg.diffusion
    model = build_dit(d.model, (10, 12, 10), 4, 2, patch=d.patch, window=d.window, shift_windows=d.shift_windows,
                      global_every=d.global_every)
    assert model.x_embedder.num_tokens > 0


@pytest.mark.parametrize("key", ["diffusion.patch", "diffusion.window", "vae.decode_roi"])
def test_patch_and_window_sizes_must_be_positive(key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*at least 1 on every axis"):
        _cfg(f"{key}=[2,0,2]")


# --------------------------------------------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------------------------------------------

def test_a_grid_off_the_downsampling_names_the_key_and_a_fix():
    with pytest.raises(ConfigError) as e:
        preflight(_cfg("prepare.grid=[30,32,32]"), ["train-vae"])
    msg = str(e.value)
    assert msg.startswith("prepare.grid [30, 32, 32] is not a multiple of 4") and "prepare.grid=[32,32,32]" in msg
    preflight(_cfg("prepare.grid=[30,32,32]"), ["prepare"])  # preparing at any grid is fine


def test_the_downsampling_is_read_from_the_arch(monkeypatch):
    monkeypatch.setitem(VAE_ARCHS, "demo", VAEArch(channels=(8, 16, 32, 64), num_res_blocks=(1,) * 4,
                                                   norm_num_groups=8))
    preflight(_cfg("prepare.grid=[40,48,40]"), ["train-vae"])
    with pytest.raises(ConfigError, match=r"^prepare.grid \[44, 48, 40\] is not a multiple of 8 on every axis, as "
                                          r"vae.arch 'demo' downsamples 8x; use e.g. --set prepare.grid=\[48,48,40\]$"):
        preflight(_cfg("prepare.grid=[44,48,40]"), ["train-vae"])


def test_training_patches_must_be_multiples_of_the_downsampling():
    preflight(_cfg("vae.patch_size=[20,24,20]"), ["train-vae"])
    with pytest.raises(ConfigError, match=r"^vae.patch_size \[18, 24, 20\] is not a multiple of 4.*"
                                          r"--set vae.patch_size=\[16,24,20\]"):
        preflight(_cfg("vae.patch_size=[18,24,20]"), ["train-vae"])


def test_an_arch_missing_from_the_registry_names_the_presets(monkeypatch):
    monkeypatch.delitem(VAE_ARCHS, "maisi")
    with pytest.raises(ConfigError, match="^vae.arch 'maisi' is not an autoencoder preset; choose from paper, demo$"):
        preflight(_cfg("vae.arch=maisi"), ["train-vae"])


def test_a_missing_perceptual_file_names_both_ways_out(tmp_path):
    cfg = _cfg("vae.perceptual=2.5d", f"vae.perceptual_weights_path={tmp_path / 'nope.pth'}")
    with pytest.raises(ConfigError) as e:
        preflight(cfg, ["train-vae"])
    msg = str(e.value)
    assert "\n" not in msg and "nope.pth" in msg
    assert "--set vae.perceptual_weights_path=" in msg and "--set vae.perceptual=none" in msg
    preflight(cfg, ["encode", "train-diffusion"])  # only training reads it


def test_the_perceptual_file_is_needed_only_when_the_term_is_on(tmp_path):
    preflight(_cfg("vae.perceptual=3d"), ["prepare"])
    preflight(_cfg("vae.perceptual=3d", "vae.perceptual_weight=0"), ["train-vae"])
    with pytest.raises(ConfigError, match="not set"):
        preflight(_cfg("vae.perceptual=3d"), ["train-vae"])
    weights = tmp_path / "resnet_10_23dataset.pth"
    weights.write_bytes(b"")
    preflight(_cfg("vae.perceptual=3d", f"vae.perceptual_weights_path={weights}"), ["train-vae"])


# --------------------------------------------------------------------------------------------------------------
# Classes, classifier
# --------------------------------------------------------------------------------------------------------------

def test_every_label_map_value_must_be_a_class():
    with pytest.raises(ConfigError, match=r"data.label_map maps to \['TLE'\], which are not in classes"):
        _cfg("data.classes=[HC,EPI]")


def test_every_class_must_be_reachable_by_some_raw_label():
    with pytest.raises(ConfigError, match="no raw label reaches class 'TLE'"):
        _cfg("data.label_map={TLE: HC, left: HC}")
    swapped = _cfg("data.label_map={TLE: HC, HC: TLE}").data  # both reached, through each other's raw name
    assert (swapped.class_index("TLE"), swapped.class_index("HC")) == (0, 1)
    assert _cfg("data.classes=[CN,AD]", "data.label_map={}").data.class_index("AD") == 1  # by its own name


def test_a_classifier_missing_from_the_registry_names_the_valid_ones(monkeypatch):
    monkeypatch.delitem(PRESETS, "l")
    with pytest.raises(ConfigError, match="^classifier.arch 'efficientnetv2-l' is not a classifier; choose from "
                                          "cnn, efficientnetv2-s, efficientnetv2-m, efficientnetv2-tiny$"):
        preflight(_cfg("classifier.arch=efficientnetv2-l"), ["classify-grid"])
    preflight(_cfg("classifier.arch=efficientnetv2-l"), ["evaluate"])


# --------------------------------------------------------------------------------------------------------------
# Evaluation weights
# --------------------------------------------------------------------------------------------------------------

def test_missing_fid_weights_fail_only_where_evaluate_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = _cfg("evaluate.random_features=false")
    with pytest.raises(ConfigError, match="^no InceptionV3 FID weights found"):
        preflight(cfg, ["evaluate"])
    preflight(cfg, ["train-vae", "train-diffusion", "sample"])
    preflight(_cfg(), ["evaluate"])  # random features asked for
    with pytest.raises(InputError, match="absent.pt: Inception weights file not found"):
        preflight(_cfg(f"evaluate.inception_path={tmp_path / 'absent.pt'}"), ["evaluate"])


def test_a_missing_medicalnet_file_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"nope.pth: MedicalNet weights file not found \(evaluate.medicalnet_path"):
        preflight(_cfg(f"evaluate.medicalnet_path={tmp_path / 'nope.pth'}"), ["evaluate"])
    weights = tmp_path / "resnet_10.pth"
    weights.write_bytes(b"")
    preflight(_cfg(f"evaluate.medicalnet_path={weights}"), ["evaluate"])


# --------------------------------------------------------------------------------------------------------------
# The pipeline's stages
# --------------------------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


@pytest.fixture
def checked(monkeypatch, tmp_path):
    """The stages `run_pipeline` asks `preflight` about (it stops right there); the run dir must not appear."""
    seen: list[list[str]] = []

    def fake(cfg, stages, device=None):
        seen.append(list(stages))
        raise _Stop

    monkeypatch.setattr(runner, "preflight", fake)
    yield seen
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, expected", [
    ({}, list(STAGE_NAMES)),
    ({"from_stage": "sample"}, list(STAGE_NAMES)),  # the stages before it rerun when they are out of date
    ({"only": "evaluate"}, ["evaluate"]),
])
def test_run_pipeline_checks_the_stages_it_may_run_before_creating_the_run(checked, tmp_path, kwargs, expected):
    with pytest.raises(_Stop):
        runner.run_pipeline(tmp_path / "run", _cfg(), progress=False, **kwargs)
    assert checked == [expected]


def test_a_cohort_of_ones_own_skips_the_demo_cohort_stage(checked, tmp_path):
    with pytest.raises(_Stop):
        runner.run_pipeline(tmp_path / "run", _cfg(f"pipeline.input={tmp_path}"), progress=False)
    assert checked == [list(STAGE_NAMES[1:])]


def test_the_paper_preset_without_perceptual_weights_stops_before_the_run_exists(tmp_path):
    cfg = load_config("paper", None, ["pipeline.input=demo-cohort", "evaluate.random_features=true"])
    with pytest.raises(ConfigError, match=r"^vae.perceptual=2.5d needs a local copy .*--set "
                                          r"vae.perceptual_weights_path=.*--set vae.perceptual=none$"):
        runner.run_pipeline(tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_run_pipeline_refuses_a_bad_config_before_creating_the_run(tmp_path):
    with pytest.raises(ConfigError, match="diffusion.model 'DiT-S/3'"):
        runner.run_pipeline(tmp_path / "run", _cfg("diffusion.model=DiT-S/3"), progress=False)
    assert not (tmp_path / "run").exists()


def test_given_the_device_an_autocast_it_cannot_run_is_refused_before_any_work(monkeypatch):
    import contextlib

    from neuroldm import runtime

    cfg = load_config("demo", None, ["classifier.train.amp=fp16", "diffusion.train.amp=off"])
    preflight(cfg, ["classify-grid", "train-diffusion"], "cpu")  # torch runs float16 autocast on the CPU
    monkeypatch.setattr(runtime.torch, "autocast", lambda **kw: contextlib.nullcontext())  # a torch that cannot
    preflight(cfg, ["classify-grid"])  # without a device nothing is probed
    preflight(cfg, ["train-diffusion", "evaluate"], "cpu")  # the stages to run train in float32
    with pytest.raises(ConfigError, match=r"^train.amp=fp16: torch .* has no float16 autocast on cpu; use bf16 or "
                                          r"off$"):
        preflight(cfg, ["classify-grid"], "cpu")
