"""Whole-volume MedicalNet features for the 3D FID, from a local weights file."""

import numpy as np
import pytest
import torch
from evaluation_phantoms import brain
from safetensors.torch import save_file

from neuroldm.errors import InputError
from neuroldm.evaluate.features3d import MEDICALNET_DIM, load_medicalnet, volume_features
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.vae.perceptual import MedicalNetResNet10


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory):
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in MedicalNetResNet10().state_dict().items()}  # DataParallel-style names
    state["conv_seg.0.weight"] = torch.zeros(2, 512, 1, 1, 1)  # a segmentation head the features ignore
    path = tmp_path_factory.mktemp("mn") / "resnet_10.safetensors"
    save_file(state, str(path))
    return path


def test_features_are_pooled_512d_and_deterministic(medicalnet_file, tmp_path):
    net = load_medicalnet(medicalnet_file)
    paths = []
    for i, v in enumerate([brain(0, 0), brain(1, 1), brain(0, 0)]):
        paths.append(str(tmp_path / f"v{i}.nii"))
        save_nifti_atomic(v, np.eye(4), paths[-1], what="test volume", frame=ALIGNED_ANAT)
    f = volume_features(net, paths, progress=False)
    assert f.shape == (3, MEDICALNET_DIM) and np.isfinite(f).all()
    np.testing.assert_array_equal(f[0], f[2])
    assert not np.allclose(f[0], f[1])
    scaled = str(tmp_path / "scaled.nii")  # per-volume z-scoring: an affine intensity change does not matter
    save_nifti_atomic(brain(0, 0) * 3.0 + 1.0, np.eye(4), scaled, what="test volume", frame=ALIGNED_ANAT)
    np.testing.assert_allclose(volume_features(net, [scaled], progress=False)[0], f[0], rtol=1e-4, atol=1e-5)


def test_missing_or_foreign_weights_are_refused(tmp_path):
    with pytest.raises(InputError, match="MedicalNet weights file not found"):
        load_medicalnet(tmp_path / "absent.pth")
    save_file({"conv1.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match="does not match the MedicalNetResNet10 backbone"):
        load_medicalnet(tmp_path / "bad.safetensors")
