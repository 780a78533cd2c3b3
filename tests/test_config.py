import re

import pytest
import yaml

from neuroldm.config import (ClassifierConfig, Config, DiffusionConfig, TrainConfig, load_config, parse_override,
                             save_config)
from neuroldm.runs import RunDir
from neuroldm.errors import ConfigError


def test_defaults_are_the_paper_grid():
    cfg = load_config()
    assert cfg.prepare.grid == (112, 136, 112) and cfg.prepare.spacing == (1.5, 1.5, 1.5)
    assert cfg.data.class_index("left") == 1 and cfg.data.class_index("HC") == 0
    assert cfg.data.class_index("MCI") is None


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_presets_load_and_name_themselves(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert all(n % 4 == 0 for n in cfg.prepare.grid), "the VAE downsamples 4x: the grid must divide by 4"


def test_no_preset_caps_the_wall_time():
    """Issue 16: the same seed and settings train the same steps on any machine; max_minutes is the user's."""
    from importlib import resources

    with resources.as_file(resources.files("neuroldm.configs") / "demo_quick.yaml") as quick:
        configs = [load_config("demo"), load_config("paper"), load_config("demo", quick)]
    for cfg in configs:
        trains = [cfg.vae.train, cfg.diffusion.train, cfg.classifier.train]
        assert all(t.max_minutes is None for t in trains), cfg.preset


def test_demo_preset_is_coarser_than_paper():
    demo, paper = load_config("demo"), load_config("paper")
    assert min(demo.prepare.spacing) > max(paper.prepare.spacing)


def test_set_overrides_parse_yaml_values():
    cfg = load_config("demo", None, ["prepare.grid=[32,40,32]", "split.seed=7", "prepare.normalisation=percentile"])
    assert cfg.prepare.grid == (32, 40, 32) and cfg.split.seed == 7
    assert cfg.prepare.normalisation == "percentile"
    assert parse_override("data.classes=[CN, AD]") == (["data", "classes"], ["CN", "AD"])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'prepare.spacng'.*valid keys.*spacing, grid"):
        load_config(None, None, ["prepare.spacng=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus'.*valid keys: preset, seed, data"):
        load_config(None, None, ["bogus=1"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("prepare:\n  grid: [64, 64, 64]\n  normalization: zscore\n")
    with pytest.raises(ConfigError, match=rf"{f}: unknown config key 'prepare.normalization'"):
        load_config(None, f)


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="prepare.normalisation") as e:
        load_config(None, None, ["prepare.normalisation=minmax"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, None, ["split.val_fraction=0.6", "split.test_fraction=0.5"])
    with pytest.raises(ConfigError, match="not in classes"):
        load_config(None, None, ["data.label_map={MCI: AD}"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, None, ["prepare.grid"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, bad)


def test_file_preset_then_file_then_set(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: demo\nsplit:\n  seed: 3\n")
    cfg = load_config(None, f, ["split.folds=3"])
    assert cfg.preset == "demo" and cfg.prepare.grid == load_config("demo").prepare.grid
    assert cfg.split.seed == 3 and cfg.split.folds == 3


def test_label_map_is_replaced_not_merged(tmp_path):
    f = tmp_path / "ad.yaml"
    f.write_text("data:\n  classes: [CN, AD]\n  label_map: {control: CN, alzheimer: AD}\n")
    cfg = load_config(None, f)
    assert cfg.data.label_map == {"control": "CN", "alzheimer": "AD"}
    assert cfg.data.class_index("alzheimer") == 1


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("demo", None, ["split.seed=11"])
    path = save_config(cfg, RunDir(tmp_path / "run").config)
    assert Config.model_validate(yaml.safe_load(path.read_text())) == cfg
    assert load_config(None, path) == cfg


@pytest.mark.parametrize("override", ["vae.train.steps=true", "vae.train.lr=false", "prepare.spacing=[2,true,2]",
                                      "sample.guidance_interval=[0,true]", "classifier.patience=true"])
def test_a_boolean_is_not_a_number(override):
    """`--set vae.train.steps=true` became 1 step."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': .*a number is due, not true/false"):
        load_config("demo", None, [override])


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys: the first, silently lost, may be the one meant."""
    path = tmp_path / "c.yaml"
    path.write_text("vae:\n  train:\n    steps: 5\n    lr: 0.1\n    steps: 7\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: duplicate key 'steps' \(line 5\)"):
        load_config(None, path)


def test_on_off_yes_no_stay_words_where_a_setting_takes_words(tmp_path):
    # YAML 1.1 would read `off` as false, and amp takes auto/bf16/off
    cfg = load_config(None, None, ["vae.train.amp=off", "vae.augment.left_right_flip=yes"])
    assert cfg.vae.train.amp == "off" and cfg.vae.augment.left_right_flip is True
    assert parse_override("data.classes=[no, yes]") == (["data", "classes"], ["no", "yes"])
    assert parse_override("vae.augment.left_right_flip=true")[1] is True
    f = tmp_path / "amp.yaml"
    f.write_text("vae:\n  train:\n    amp: off\n  augment:\n    left_right_flip: on\n")
    cfg = load_config(None, f)
    assert cfg.vae.train.amp == "off" and cfg.vae.augment.left_right_flip is True
    with pytest.raises(ConfigError, match=r"config key 'vae.train.amp'.*got 'no'"):
        load_config(None, None, ["vae.train.amp=no"])


def test_the_old_diffusion_grad_checkpointing_key_is_read_at_its_new_place(tmp_path):
    """diffusion.grad_checkpointing moved into diffusion.train, beside the VAE's and the classifier's: a run's
    config.yaml and a model file written before still load, with the value where the DiT reads it."""
    from neuroldm.config import DiffusionConfig, move_old_keys

    old = tmp_path / "config.yaml"
    old.write_text("diffusion:\n  model: DiT-S/4\n  grad_checkpointing: true\n")
    cfg = load_config(None, old)
    assert cfg.diffusion.train.grad_checkpointing and "grad_checkpointing" not in cfg.to_dict()["diffusion"]
    assert load_config(None, None, ["diffusion.grad_checkpointing=true"]).diffusion.train.grad_checkpointing
    stored = {"model": "DiT-S/4", "grad_checkpointing": True, "train": {"steps": 5}}  # a model file's section
    moved = DiffusionConfig.model_validate(move_old_keys(stored, "model.safetensors", ("diffusion",)))
    assert moved.train.grad_checkpointing and moved.train.steps == 5 and stored["grad_checkpointing"]  # a copy
    old.write_text("diffusion:\n  grad_checkpointing: true\n  train:\n    grad_checkpointing: false\n")
    with pytest.raises(ConfigError, match=rf"{old}: 'diffusion.grad_checkpointing' \(the old name of "
                                          r"'diffusion.train.grad_checkpointing'\) and .* disagree"):
        load_config(None, old)


def test_amp_takes_fp16_and_a_wrong_word_is_a_one_line_error():
    assert load_config(None, None, ["classifier.train.amp=fp16"]).classifier.train.amp == "fp16"
    with pytest.raises(ConfigError, match=r"config key 'vae.train.amp': .*'auto', 'bf16', 'fp16' or 'off'") as e:
        load_config(None, None, ["vae.train.amp=fp32"])
    assert "\n" not in str(e.value)


def test_a_partial_train_block_keeps_its_sections_own_defaults(tmp_path):
    """A `train:` block that sets a few keys keeps the rest of *its section's* defaults (the diffusion model's
    400,000 steps, constant schedule, 1,000 warm-up steps and EMA), not TrainConfig's generic ones; in a preset,
    a file and a --set alike."""
    section = DiffusionConfig().train
    assert (section.steps, section.schedule, section.warmup_steps, section.ema_decay) != (
        TrainConfig().steps, TrainConfig().schedule, TrainConfig().warmup_steps, TrainConfig().ema_decay)
    paper = load_config("paper").diffusion.train  # paper.yaml sets batch_size, lr and ema_decay only
    assert (paper.steps, paper.schedule, paper.warmup_steps) == (400000, "constant", 1000)
    by_set = load_config(None, overrides=["diffusion.train.lr=1e-4"]).diffusion.train
    assert by_set.lr == 1e-4
    assert by_set.model_dump(exclude={"lr"}) == section.model_dump(exclude={"lr"})
    f = tmp_path / "c.yaml"
    f.write_text("classifier:\n  train:\n    steps: 7\n")
    clf = load_config(None, f).classifier.train
    assert clf.steps == 7
    assert clf.model_dump(exclude={"steps"}) == ClassifierConfig().train.model_dump(exclude={"steps"})
