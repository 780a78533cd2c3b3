from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import neuroldm
from neuroldm.errors import InputError
from neuroldm.io import (ALIGNED_ANAT, MNI_152, SCANNER_ANAT, atomic_path, frame_code, nifti_descrip, read_frame_code,
                         save_nifti_atomic, sha256_array, sha256_file, verified_sha256, write_json_atomic,
                         write_sha256, write_text_atomic)

from niftis import assert_neuroldm_header


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_temp_name_keeps_the_nifti_suffix(tmp_path):
    with atomic_path(tmp_path / "vol.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"x"


def test_nifti_round_trip_keeps_data_and_affine_and_sets_the_header(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -20], [0, 0, 2.5, 5], [0, 0, 0, 1]])
    save_nifti_atomic(data, affine, tmp_path / "a" / "v.nii", what="test volume", frame=MNI_152)
    img = nib.load(tmp_path / "a" / "v.nii")
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(img.affine, affine)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.header["sform_code"] == 4 and img.header["qform_code"] == 4
    assert img.header["descrip"].item() == f"neuroldm {neuroldm.__version__} test volume".encode()
    assert img.header.get_intent()[0] == "none"
    assert_neuroldm_header(tmp_path / "a" / "v.nii", MNI_152, "test volume")

    save_nifti_atomic(data.astype(np.uint8), affine, tmp_path / "l.nii.gz", what="labels", frame=SCANNER_ANAT,
                      labels=True)
    assert_neuroldm_header(tmp_path / "l.nii.gz", SCANNER_ANAT, "labels", labels=True)


def test_descrip_is_cut_to_the_field_and_a_bad_frame_code_is_refused(tmp_path):
    save_nifti_atomic(np.zeros((2, 2, 2), np.float32), np.eye(4), tmp_path / "v.nii", what="x" * 200,
                      frame=ALIGNED_ANAT)
    descrip = nib.load(tmp_path / "v.nii").header["descrip"].item()
    assert len(nifti_descrip("x" * 200)) == 80 and descrip == nifti_descrip("x" * 200)
    with pytest.raises(ValueError, match="xform code 7"):
        save_nifti_atomic(np.zeros((2, 2, 2), np.float32), np.eye(4), tmp_path / "w.nii", what="x", frame=7)


@pytest.mark.parametrize(("sform", "qform", "expected"), [(4, 1, 4), (0, 1, 1), (0, 0, 2), (3, 0, 3)])
def test_frame_code_is_the_code_of_the_transform_nibabel_reads(tmp_path, sform, qform, expected):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.set_sform(np.eye(4), code=sform)
    img.set_qform(np.eye(4), code=qform)
    nib.save(img, tmp_path / "in.nii")
    assert frame_code(img.header) == expected and read_frame_code(tmp_path / "in.nii") == expected


# Every module that writes a NIfTI, and the test that checks what it writes with `niftis.assert_neuroldm_header`.
NIFTI_WRITERS = {
    "neuroldm/data/prepare.py": "tests/data/test_prepare.py",  # prepared volumes and ROIs
    "neuroldm/demo/cohort.py": "tests/demo/test_cohort.py",  # demo T1w and hippocampus dseg
    "neuroldm/diffusion/sample.py": "tests/diffusion/test_stage.py",  # synthetic samples
    "neuroldm/vae/reconstruct.py": "tests/vae/test_vae_stage.py",  # reconstructions
    "neuroldm/vae/prior.py": "tests/vae/test_vae_stage.py",  # VAE prior samples
    "neuroldm/classify/saliency.py": "tests/classify/test_saliency.py",  # saliency maps and class means
    "neuroldm/counterfactual/make.py": "tests/counterfactual/test_make.py",  # counterfactuals, differences
    "neuroldm/counterfactual/cohort.py": "tests/counterfactual/test_cohort.py",  # the stage's reconstructions
}


def test_every_nifti_writer_goes_through_the_helper_and_has_its_header_checked():
    """A module that writes NIfTI without `save_nifti_atomic`, or a new writer whose test does not check the
    header, fails here."""
    package = Path(neuroldm.__file__).parent
    writers, direct = set(), []
    for path in sorted(package.rglob("*.py")):
        rel = str(path.relative_to(package.parent))
        text = path.read_text()
        if "save_nifti_atomic(" in text and rel != "neuroldm/io.py":
            writers.add(rel)
        if rel != "neuroldm/io.py" and any(s in text for s in ("nib.save(", ".to_filename(", "nib.nifti1.save(")):
            direct.append(rel)
    assert direct == [], f"NIfTI written around neuroldm.io.save_nifti_atomic in {direct}"
    assert writers == set(NIFTI_WRITERS)
    root = package.parent.parent
    for module, test in NIFTI_WRITERS.items():
        assert "assert_neuroldm_header(" in (root / test).read_text(), f"{test} does not check {module}'s files"


def test_array_hash_sees_dtype_shape_and_values():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert sha256_array(a) == sha256_array(a.copy())
    assert sha256_array(a) != sha256_array(a.reshape(4, 3, 2))
    assert sha256_array(a) != sha256_array(a.astype(np.float64))
    b = a.copy()
    b[0, 0, 0] += 1e-3
    assert sha256_array(a) != sha256_array(b)


def test_write_text_creates_folders(tmp_path):
    write_text_atomic(tmp_path / "x" / "y" / "z.txt", "hello")
    assert (tmp_path / "x" / "y" / "z.txt").read_text() == "hello"


def test_weights_file_round_trip_and_one_line_errors(tmp_path):
    import torch

    from neuroldm.errors import InputError
    from neuroldm.io import load_weights, save_weights_atomic

    module = torch.nn.Linear(3, 2)
    path = save_weights_atomic(module, tmp_path / "m.safetensors", {"thing_config": "{}"})
    state, meta = load_weights(path, required_key="thing_config", what="thing")
    assert meta == {"thing_config": "{}"} and all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    with pytest.raises(InputError, match=r"m\.safetensors: not a neuroldm autoencoder file \(no vae_config"):
        load_weights(path, required_key="vae_config", what="autoencoder")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError, match=r"m\.safetensors: not a readable safetensors file"):
        load_weights(path, required_key="thing_config", what="thing")


def test_a_non_finite_volume_is_never_written(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    target = tmp_path / "vol.nii.gz"
    with pytest.raises(InputError, match=r"vol.nii.gz: not written: 2 of 64 voxels are NaN or Inf"):
        save_nifti_atomic(data, np.eye(4), target, what="x", frame=ALIGNED_ANAT)
    assert list(tmp_path.iterdir()) == []
    # integer masks are always finite
    save_nifti_atomic(np.ones((2, 2, 2), np.uint8), np.eye(4), target, what="x", frame=ALIGNED_ANAT)


def test_a_recorded_hash_is_checked(tmp_path):
    path, record = tmp_path / "m.bin", tmp_path / "m.bin.sha256"
    path.write_bytes(b"weights")
    assert verified_sha256(path, record) == sha256_file(path)  # no record: nothing to compare with
    digest = write_sha256(path, record)
    assert record.read_text() == f"{digest}  m.bin\n" and verified_sha256(path, record) == digest
    path.write_bytes(b"weighTs")  # same size, one byte changed
    with pytest.raises(InputError, match=r"m.bin: damaged or replaced: its sha256 .* recorded in m.bin.sha256"):
        verified_sha256(path, record)


def test_an_exported_model_records_its_hash_and_a_damaged_one_is_refused(tmp_path):
    import torch

    from neuroldm.classify.network import build_classifier
    from neuroldm.classify.predict import export_classifier, load_classifier
    from neuroldm.config import load_config
    from neuroldm.runs import ClassifierDir

    cfg = load_config(None, None, ["classifier.arch=cnn"]).classifier
    folder = ClassifierDir(tmp_path)
    export_classifier(build_classifier(cfg, 2), cfg, folder.model, {"classes": ["HC", "TLE"], "grid": [8, 8, 8],
                                                                   "spacing": [1, 1, 1]})
    assert load_classifier(tmp_path)[1]["sha256"] == folder.model_record.read_text().split()[0]
    data = bytearray(folder.model.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN weight: safetensors still reads it
    folder.model.write_bytes(bytes(data))
    with pytest.raises(InputError, match="model.safetensors: damaged or replaced"):
        load_classifier(tmp_path, torch.device("cpu"))
