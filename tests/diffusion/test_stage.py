"""train-diffusion and sample end to end on a tiny run: EMA export, resume, NIfTI outputs, seeds, skipping."""

import json

import monai
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import neuroldm
from neuroldm.cli import main
from neuroldm.config import SampleConfig, load_config
from neuroldm.diffusion.sample import generate
from neuroldm.diffusion.train import train_diffusion
from neuroldm.diffusion.weights import load_dit, load_train_subjects, subjects_sha256
from neuroldm.errors import InputError
from neuroldm.io import ALIGNED_ANAT
from neuroldm.samples import read_sample_manifest
from neuroldm.train.checkpoint import load_state

from niftis import assert_neuroldm_header
from tiny_run import SUBJECTS, TINY, encoded_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return encoded_run(tmp_path_factory.mktemp("diffusion"))


def test_train_exports_ema_weights_and_resume_reproduces(run, tmp_path):
    import shutil

    cfg = load_config(None, None, TINY)
    summary = train_diffusion(run, cfg, progress=False)
    assert summary["steps"] == 4 and summary["best"] is not None
    model, dcfg, meta = load_dit(run)
    state = load_state(run / "diffusion" / "checkpoints" / "last.safetensors")
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    assert not all(torch.equal(ema[k], state["modules"]["model"][k]) for k in ema)  # EMA, not the raw weights
    assert meta["classes"] == ["HC", "TLE"] and meta["latent_shape"] == [4, 5, 6, 5]
    # the training subjects' IDs stay in the run; the model file holds only their sha256
    subjects = json.loads((run / "diffusion" / "train_subjects.json").read_text())["train_subjects"]
    assert set(subjects) < set(SUBJECTS) and "train_subjects" not in meta
    assert meta["train_subjects_sha256"] == subjects_sha256(subjects) == subjects_sha256(reversed(subjects))

    # interrupted after 1 step by a zero time budget, then resumed: the same weights as the straight run
    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("diffusion"))
    stopped = train_diffusion(other, load_config(None, None, TINY + ["diffusion.train.max_minutes=0"]),
                              progress=False)
    assert stopped["steps"] == 1
    train_diffusion(other, cfg, progress=False)
    a = load_state(run / "diffusion" / "checkpoints" / "last.safetensors")
    b = load_state(other / "diffusion" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a["modules"]["model"][k], b["modules"]["model"][k]) for k in a["modules"]["model"])


def test_sample_writes_one_nifti_per_volume_and_resumes(run, tmp_path, capsys):
    if not (run / "diffusion" / "model.safetensors").exists():
        train_diffusion(run, load_config(None, None, TINY), progress=False)
    out = tmp_path / "samples"
    args = ["sample", "--run", str(run), "--n", "3", "--label", "TLE", "--sampler", "ddim", "--steps", "4",
            "--guidance", "2", "--batch-size", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    s = read_sample_manifest(out)
    assert len(s.rows) == 3 and s.rows["sample"].is_unique and set(s.rows["label_name"]) == {"TLE"}
    assert s.rows["seed"].tolist() == [0, 1, 2] and (s.rows["label"] == 1).all()
    latents = json.loads((run / "latents" / "latents.json").read_text())
    img = nib.load(s.rows["path"][0])
    assert img.shape == (20, 24, 20)
    np.testing.assert_allclose(img.affine, latents["reference_affine"])
    side = json.loads((out / f"{s.rows['sample'][0]}.json").read_text())
    assert side["guidance"] == 2 and side["sampler"] == "ddim" and len(side["checkpoint_sha256"]) == 64
    assert side["synthetic"] is True and "conditions" not in side  # a model without conditions records none
    assert side["software_versions"] == {"neuroldm": neuroldm.__version__, "torch": torch.__version__,
                                         "monai": monai.__version__, "nibabel": nib.__version__}
    for path in s.rows["path"]:
        assert_neuroldm_header(path, ALIGNED_ANAT, "synthetic T1w TLE seed")
    assert s.train_subjects == load_train_subjects(run, load_dit(run)[2])
    assert s.info["train_subjects_sha256"] == load_dit(run)[2]["train_subjects_sha256"] and "run" in s.info

    # the same seed gives the same volume, whatever the batch; a re-run skips what exists
    first = np.asarray(img.dataobj)
    again = generate(run, ["TLE"], [0], SampleConfig(sampler="ddim", steps=4, guidance=2.0))[0, 0].numpy()
    np.testing.assert_allclose(again, first, atol=1e-4)
    capsys.readouterr()
    assert main(args[:4] + ["4"] + args[5:]) == 0
    assert "1 TLE volume(s) written, 3 already there" in capsys.readouterr().out
    assert len(pd.read_csv(out / "manifest.csv")) == 4


def test_guidance_interval_reaches_the_sampler_and_names_the_sample(run, tmp_path, monkeypatch):
    if not (run / "diffusion" / "model.safetensors").exists():
        train_diffusion(run, load_config(None, None, TINY), progress=False)
    import neuroldm.diffusion.sample as sample_module

    seen = []
    original = sample_module.sample_latents

    def spy(*args, **kwargs):
        seen.append(next(a for a in args if isinstance(a, SampleConfig)).guidance_interval)
        return original(*args, **kwargs)

    monkeypatch.setattr(sample_module, "sample_latents", spy)
    out = tmp_path / "samples"
    base = ["sample", "--run", str(run), "--n", "1", "--label", "TLE", "--sampler", "ddim", "--steps", "4",
            "--guidance", "3", "--out", str(out), "--no-progress"]
    assert main(base) == 0 and main(base + ["--guidance-interval", "0", "500"]) == 0
    assert seen == [None, (0, 500)]
    s = read_sample_manifest(out)
    assert sorted(s.rows["sample"]) == ["TLE_ddim4_g3_seed0", "TLE_ddim4_g3i0-500_seed0"]
    side = json.loads((out / "TLE_ddim4_g3i0-500_seed0.json").read_text())
    assert side["guidance_interval"] == [0, 500] and side["guidance"] == 3
    # the setting is read from the config too; an interval without guidance changes nothing and names nothing
    assert main(base[:-5] + ["--guidance", "1", "--set", "sample.guidance_interval=[0,500]", "--out", str(out),
                             "--no-progress"]) == 0
    assert seen[-1] == (0, 500) and "TLE_ddim4_g1_seed0" in set(read_sample_manifest(out).rows["sample"])


def test_sample_refuses_unknown_label_and_foreign_folder(run, tmp_path):
    if not (run / "diffusion" / "model.safetensors").exists():
        train_diffusion(run, load_config(None, None, TINY), progress=False)
    with pytest.raises(InputError, match="unknown label 'MCI'"):
        generate(run, ["MCI"], [0], SampleConfig(steps=2))
    out = tmp_path / "s"
    out.mkdir()
    (out / "samples.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64, "train_subjects": []}))
    assert main(["sample", "--run", str(run), "--n", "1", "--label", "HC", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 2


def test_torchrun_two_processes_train_the_diffusion_model(run, tmp_path):
    import shutil
    import subprocess
    import sys

    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("diffusion"))
    sets = [x for t in TINY for x in ("--set", t)]
    script = tmp_path / "launch.py"  # torchrun's own parser would take --run for its --run-path
    args = ["train-diffusion", "--run", str(other), "--no-progress", *sets, "--set", "diffusion.train.batch_size=2"]
    script.write_text(f"from neuroldm.cli import main\nraise SystemExit(main({args!r}))\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", str(script)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((other / "diffusion" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert load_dit(other)[2]["step"] == 4


def _copy_run(run, tmp_path):
    import shutil

    if not (run / "diffusion" / "model.safetensors").exists():
        train_diffusion(run, load_config(None, None, TINY), progress=False)
    other = tmp_path / "run"
    shutil.copytree(run, other)
    return other


def test_a_damaged_model_is_refused_by_its_recorded_hash(run, tmp_path, capsys):
    """Bytes flipped in diffusion/model.safetensors (same size) gave 12/12 all-NaN samples with exit 0."""
    other = _copy_run(run, tmp_path)
    model = other / "diffusion" / "model.safetensors"
    assert (other / "diffusion" / "model.safetensors.sha256").read_text().split()[0] == load_dit(run)[2]["sha256"]
    data = bytearray(model.read_bytes())
    size = len(data)
    data[-64:] = b"\xff" * 64  # inside the weights: the header still parses
    model.write_bytes(bytes(data))
    assert model.stat().st_size == size
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(other), "--n", "2", "--label", "TLE", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"neuroldm sample: error: {model}: damaged or replaced: its sha256 ")
    assert not out.exists()


def test_non_finite_samples_are_refused_naming_the_model(run, tmp_path, capsys):
    """A model whose weights are NaN (its hash recorded as it was written) samples NaN: nothing is written."""
    from neuroldm.diffusion.weights import export_dit

    other = _copy_run(run, tmp_path)
    model, dcfg, meta = load_dit(other)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    export_dit(model, dcfg, other / "diffusion" / "model.safetensors", meta)
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(other), "--n", "2", "--label", "TLE", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"neuroldm sample: error: {other / 'diffusion' / 'model.safetensors'}: sampled latents "
                          f"of seeds 0, 1 are NaN or Inf; nothing was written for them")
    assert not list(out.glob("*.nii.gz"))
