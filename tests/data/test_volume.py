"""Every kind of bad volume gets one line naming the file and the problem."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from neuroldm.data.volume import load_volume
from neuroldm.errors import InputError

from phantoms import phantom, save


def _fail(path, pattern):
    with pytest.raises(InputError, match=pattern) as e:
        load_volume(path)
    assert e.value.path == str(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_good_volume_loads_with_affine(tmp_path):
    data, affine = phantom()
    path = save(tmp_path / "ok.nii.gz", data, affine)
    out, aff = load_volume(path)
    assert out.dtype == np.float32 and out.shape == data.shape
    np.testing.assert_allclose(aff, affine)
    np.testing.assert_allclose(out, data, atol=1e-4)


def test_missing_file(tmp_path):
    _fail(tmp_path / "nope.nii.gz", "file not found")


def test_truncated_gzip(tmp_path):
    path = save(tmp_path / "cut.nii.gz", *phantom())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _fail(path, "unreadable or truncated")


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"x" * 10)[:8] + b"\x00" * 400)
    _fail(path, "not a readable NIfTI|unreadable or truncated")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("subject,label\nS1,HC\n" * 30)
    _fail(path, "not a readable NIfTI image")


def test_other_format_is_refused(tmp_path):
    data, affine = phantom()
    path = tmp_path / "vol.mgz"
    nib.save(nib.MGHImage(data, affine), path)
    _fail(path, r"not a NIfTI image \(read as MGHImage\)")


def test_4d_image(tmp_path):
    data, affine = phantom(shape=(20, 24, 20))
    path = save(tmp_path / "bold.nii.gz", np.stack([data] * 3, axis=-1), affine)
    _fail(path, "a 4D image with 3 volumes")


def test_4d_with_one_volume_is_squeezed(tmp_path):
    data, affine = phantom(shape=(20, 24, 20))
    path = save(tmp_path / "one.nii.gz", data[..., None], affine)
    assert load_volume(path)[0].shape == (20, 24, 20)


def test_2d_image(tmp_path):
    path = save(tmp_path / "slice.nii.gz", phantom()[0][:, :, 40], np.eye(4))
    _fail(path, "a 2D image")


def test_nan_and_inf(tmp_path):
    data, affine = phantom(shape=(20, 24, 20))
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    _fail(save(tmp_path / "nan.nii.gz", data, affine), "4 voxels are NaN or Inf")


def test_constant_image(tmp_path):
    _fail(save(tmp_path / "zeros.nii.gz", np.zeros((20, 24, 20), np.float32), np.eye(4)),
          r"constant image \(every voxel is 0\)")


def _save_sform_only(path, data, affine):
    """nibabel refuses to build a qform from a singular affine, so write it as the sform alone."""
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=2)
    nib.save(img, path)
    return path


def test_degenerate_affine(tmp_path):
    data, _ = phantom(shape=(20, 24, 20))
    _fail(_save_sform_only(tmp_path / "flat.nii.gz", data, np.diag([2.0, 2.0, 0.0, 1.0])), "degenerate affine")
    collinear = np.eye(4)
    collinear[:3, 1] = collinear[:3, 0]
    _fail(_save_sform_only(tmp_path / "collinear.nii.gz", data, collinear), "degenerate affine")
    nonfinite = np.eye(4)
    nonfinite[0, 3] = np.nan
    _fail(_save_sform_only(tmp_path / "nan_affine.nii.gz", data, nonfinite), "degenerate affine")
