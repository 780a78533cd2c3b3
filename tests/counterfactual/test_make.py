"""`neuroldm counterfactual` on a tiny run: its files, strength 0, seeds, the inversion round trip, bad inputs."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroldm.cli import main
from neuroldm.config import CounterfactualConfig
from neuroldm.counterfactual.make import Counterfactuals
from neuroldm.data.manifest import read_manifest
from neuroldm.diffusion.weights import export_dit, load_dit
from neuroldm.io import read_frame_code
from neuroldm.runs import CounterfactualDir, RunDir

from niftis import assert_neuroldm_header
from phantoms import phantom, save


def _args(run, inputs, out, *extra):
    return ["counterfactual", "--run-dir", str(run), "--input", str(inputs), "--out", str(out), "--no-progress",
            *extra]


def _input(tmp_path, seed=3, name="scan.nii.gz"):
    return save(tmp_path / "in" / name, *phantom(seed=seed))


def _volumes(folder: CounterfactualDir, name: str, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(nib.load(p).dataobj) for p in (folder.volume(name), folder.reconstruction(source),
                                                            folder.difference(name)))


def test_writes_the_counterfactual_its_reference_difference_sidecar_and_figure(tiny_run, tmp_path):
    scan = _input(tmp_path)
    out = CounterfactualDir(tmp_path / "out")
    assert main(_args(tiny_run, scan, out, "--to", "TLE", "--method", "sdedit", "--strength", "0.5")) == 0
    name = "scan_to-TLE_sdedit-s0.5_g3_seed0"
    cf, recon, diff = _volumes(out, name, "scan")
    np.testing.assert_allclose(diff, cf - recon, atol=1e-6)
    assert cf.shape == (20, 24, 20) and np.isfinite(cf).all() and np.abs(diff).max() > 0
    # on the input's prepared grid with its affine, as `prepare` would have written it
    mc = Counterfactuals(tiny_run, CounterfactualConfig())
    prepared = mc.prepare(scan)
    np.testing.assert_allclose(nib.load(out.volume(name)).affine, prepared["affine"])
    side = json.loads(out.sidecar(name).read_text())
    assert (side["method"], side["strength"], side["start_timestep"], side["seed"]) == ("sdedit", 0.5, 499, 0)
    assert side["timesteps"] == list(range(499, 0, -100)) and side["target_class"] == "TLE"
    assert side["checkpoint_sha256"] == load_dit(tiny_run)[2]["sha256"] and len(side["vae_sha256"]) == 64
    assert side["reconstruction"] == "scan_reconstruction.nii.gz" and side["prepare"]["grid"] == [20, 24, 20]
    assert out.figure(name).read_bytes().startswith(b"\x89PNG")
    frame = read_frame_code(scan)  # the input's world, as prepare keeps it
    assert_neuroldm_header(out.volume(name), frame, "counterfactual")
    assert_neuroldm_header(out.difference(name), frame, "counterfactual - reconstruction")
    assert_neuroldm_header(out.reconstruction("scan"), frame, "reconstruction")


def test_a_strength_below_one_step_returns_the_reconstruction(tiny_run, tmp_path):
    scan = _input(tmp_path)
    out = CounterfactualDir(tmp_path / "out")
    assert main(_args(tiny_run, scan, out, "--to", "HC", "--strength", "0.05")) == 0  # floor(0.05 x 10) = 0 steps
    cf, recon, diff = _volumes(out, "scan_to-HC_inversion-s0.05_g3", "scan")
    np.testing.assert_array_equal(cf, recon)
    assert not diff.any()


@pytest.mark.parametrize("method", ["sdedit", "inversion"])
def test_the_same_seed_gives_the_same_volume(tiny_run, tmp_path, method):
    scan = _input(tmp_path)
    outs = [CounterfactualDir(tmp_path / f"out{i}") for i in range(3)]
    for out, seed in zip(outs, (7, 7, 8)):
        assert main(_args(tiny_run, scan, out, "--to", "TLE", "--method", method, "--seed", str(seed))) == 0
    name = {"sdedit": "scan_to-TLE_sdedit-s0.5_g3_seed{}", "inversion": "scan_to-TLE_inversion-s0.5_g3"}[method]
    a, b, c = (np.asarray(nib.load(o.volume(name.format(s))).dataobj) for o, s in zip(outs, (7, 7, 8)))
    np.testing.assert_array_equal(a, b)
    assert (np.abs(a - c).max() > 1e-4) == (method == "sdedit")  # inversion is deterministic: no noise drawn


def test_inversion_then_regeneration_without_a_class_change_reproduces_the_latent(tiny_run):
    """Round trip of the posterior means of prepared volumes through DDIM inversion and DDIM back, under their own
    class and without guidance, at strength 0.5 and 10 DDIM steps: within 5 % of the latents' RMS on the tiny
    model (measured 1.0 %; the demo's trained model, on 8 validation subjects at its 20 steps: 6.0 % at strength
    0.25, 7.4 % at 0.5, the price of DDIM inversion's one-step-ahead prediction)."""
    mc = Counterfactuals(tiny_run, CounterfactualConfig(method="inversion", guidance=1.0, steps=10))
    rows = read_manifest(RunDir(tiny_run).prepared_cohort(mc.gen.latent_info["prepared"]))[:4]
    images = torch.stack([torch.from_numpy(np.asarray(nib.load(p).dataobj, np.float32))[None] for p in rows["path"]])
    mu = mc.encode(images)
    labels = rows["label"].tolist()
    back = mc.edit(mu, labels, 0.5, labels)
    assert float((back - mu).pow(2).mean().sqrt() / mu.pow(2).mean().sqrt()) < 0.05
    assert float((mc.edit(mu, [1 - v for v in labels], 0.5, labels) - mu).abs().max()) > 0  # a change does change


def test_a_folder_and_a_csv_of_inputs(tiny_run, tmp_path):
    a = _input(tmp_path, 3, "a.nii.gz")
    _input(tmp_path, 4, "b.nii")  # beside it: the folder holds both, the table names it relative to itself
    out = CounterfactualDir(tmp_path / "folder")
    assert main(_args(tiny_run, a.parent, out, "--to", "HC")) == 0
    assert sorted(p.name for p in out.root.glob("*_reconstruction.nii.gz")) == ["a_reconstruction.nii.gz",
                                                                               "b_reconstruction.nii.gz"]
    table = tmp_path / "inputs.csv"
    table.write_text(f"path,subject,label\n{a},s/01,HC\nin/b.nii,s-02,TLE\n")  # relative to the table's folder
    out = CounterfactualDir(tmp_path / "table")
    assert main(_args(tiny_run, table, out, "--to", "TLE")) == 0
    first = json.loads(out.sidecar("s-01_to-TLE_inversion-s0.5_g3").read_text())
    second = json.loads(out.sidecar("s-02_to-TLE_inversion-s0.5_g3").read_text())
    assert (first["source_class"], first["inversion_condition"]) == ("HC", "HC")  # the inversion's condition
    assert second["input"].endswith("b.nii") and second["source_class"] == "TLE"


def _one_line_error(capsys, match: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroldm counterfactual: error: ") and match in err[0], err


def test_bad_inputs_say_one_line_exit_2_and_write_nothing(tiny_run, tmp_path, capsys):
    good = _input(tmp_path)
    out = tmp_path / "out"
    small = save(tmp_path / "bad" / "small.nii.gz", np.random.default_rng(0).random((6, 6, 6)), np.eye(4))
    degenerate = tmp_path / "bad" / "degenerate.nii.gz"  # a flat axis: no orientation can be read from it
    img = nib.Nifti1Image(phantom()[0], None)
    img.header.set_qform(None, code=0)  # nibabel builds no qform of a singular affine: the sform alone
    img.header.set_sform(np.diag([2.0, 2.0, 0.0, 1.0]), code=2)
    nib.save(img, degenerate)
    cases = [
        (_args(tiny_run, small, out, "--to", "TLE"), "small.nii.gz: field of view 6x6x6 mm is too small"),
        (_args(tiny_run, degenerate, out, "--to", "TLE"), "degenerate.nii.gz: degenerate affine"),
        (_args(tiny_run, good, out, "--to", "MCI"), "unknown label 'MCI'; classes are HC, TLE"),
        (_args(tiny_run, good, out, "--to", "TLE", "--strength", "0"), "--strength: Input should be greater than 0"),
        (_args(tiny_run, good, out, "--to", "TLE", "--strength", "1.5"),
         "--strength: Input should be less than or equal to 1"),
    ]
    for args, match in cases:
        assert main(args) == 2, match
        _one_line_error(capsys, match)
        assert not out.exists()

    # a run whose latents were encoded by another autoencoder, and a diffusion model trained on another one's
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    info = json.loads(RunDir(other).latents.info.read_text())
    RunDir(other).latents.info.write_text(json.dumps({**info, "vae_sha256": "0" * 64}))
    assert main(_args(other, good, out, "--to", "TLE")) == 2
    _one_line_error(capsys, "vae/model.safetensors: the autoencoder changed after the latents were encoded")
    RunDir(other).latents.info.write_text(json.dumps(info))
    model, dcfg, meta = load_dit(other)
    export_dit(model, dcfg, RunDir(other).diffusion.model, {**meta, "vae_sha256": "0" * 64})
    assert main(_args(other, good, out, "--to", "TLE")) == 2
    _one_line_error(capsys, "diffusion/model.safetensors: the diffusion model was trained on the latents of another "
                            "autoencoder")
    assert not out.exists()


def test_the_options_override_the_runs_counterfactual_settings(tmp_path, monkeypatch):
    import neuroldm.counterfactual.make as make_module
    from neuroldm.config import load_config

    seen = []

    def fake(run, inputs, out, target, ccfg, data, **kw):
        seen.append((ccfg, target, kw["source_label"]))
        return {"n": 1, "target": target, "folder": str(out), "seconds": 0.0, "timesteps": [299]}

    monkeypatch.setattr(make_module, "counterfactuals_to_folder", fake)
    RunDir(tmp_path / "run").save_config(load_config("demo", None, ["counterfactual.guidance=4"]))
    argv = _args(tmp_path / "run", tmp_path / "x.nii.gz", tmp_path / "out", "--to", "HC")
    assert main(argv) == 0
    assert (seen[-1][0].guidance, seen[-1][0].strength, seen[-1][0].method) == (4.0, 0.25, "inversion")
    assert main([*argv, "--strength", "0.7", "--method", "sdedit", "--seed", "5", "--from", "TLE"]) == 0
    ccfg, target, source = seen[-1]
    assert (ccfg.strength, ccfg.method, ccfg.seed, ccfg.guidance, target, source) == (0.7, "sdedit", 5, 4.0, "HC",
                                                                                       "TLE")
