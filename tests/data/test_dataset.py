import numpy as np
import pandas as pd
import pytest
import torch

from neuroldm.config import AugmentConfig
from neuroldm.data.dataset import VolumeDataset, build_augmentation
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        vol = rng.normal(size=(24, 28, 20)).astype(np.float32)
        vol[:, :, 10:] += 3.0  # a bright superior slab: a superior-inferior flip would move it
        save_nifti_atomic(vol, np.diag([3.0, 3.0, 3.0, 1.0]), tmp_path / f"v{i}.nii",
                          what="test volume", frame=ALIGNED_ANAT)
        paths.append(str(tmp_path / f"v{i}.nii"))
    return pd.DataFrame({"path": paths, "label": [0, 1, 1], "subject": ["a", "b", "c"]})


def test_items_have_channel_dim_label_and_index(rows):
    ds = VolumeDataset(rows)
    item = ds[1]
    assert item["image"].shape == (1, 24, 28, 20) and item["image"].dtype == torch.float32
    assert item["label"] == 1 and item["index"] == 1
    assert type(ds[(1, 0)]["image"]) is torch.Tensor
    assert torch.equal(ds[(1, 0)]["image"], item["image"]), "no augmentation configured"


def test_augmentation_is_seeded_by_sample_and_epoch(rows):
    ds = VolumeDataset(rows, AugmentConfig(prob=1.0), seed=5)
    a, b = ds[(0, 3)]["image"], ds[(0, 3)]["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[(0, 4)]["image"]) and not torch.equal(a, ds[(1, 3)]["image"])
    other = VolumeDataset(rows, AugmentConfig(prob=1.0), seed=6)
    assert not torch.equal(a, other[(0, 3)]["image"])
    assert not torch.equal(a, VolumeDataset(rows)[0]["image"])


def test_augmentation_is_small_and_never_flips_superior_inferior(rows):
    ds = VolumeDataset(rows, AugmentConfig(prob=1.0), seed=0)
    raw = VolumeDataset(rows)[0]["image"]
    for epoch in range(20):
        img = ds[(0, epoch)]["image"]
        assert img[..., 14:].mean() > img[..., :6].mean() + 2.0, "the superior slab moved: a flip happened"
        assert torch.corrcoef(torch.stack([img.flatten(), raw.flatten()]))[0, 1] > 0.5


def test_left_right_flip_is_opt_in_and_only_left_right():
    aug = build_augmentation(AugmentConfig(prob=0.0, left_right_flip=True))
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    seen = set()
    for seed in range(20):
        aug.set_random_state(seed=seed)
        out = torch.as_tensor(aug(img))
        assert torch.equal(out, img) or torch.equal(out, torch.flip(img, dims=(1,)))
        seen.add(torch.equal(out, img))
    assert seen == {True, False}


def test_random_patches_are_seeded_and_inside_the_volume(rows):
    ds = VolumeDataset(rows, AugmentConfig(prob=0.0), seed=1, crop=(12, 16, 8))
    a = ds[(0, 0)]["image"]
    assert a.shape == (1, 12, 16, 8) and torch.equal(a, ds[(0, 0)]["image"])
    full = VolumeDataset(rows)[0]["image"][0]
    windows = full.unfold(0, 12, 1).unfold(1, 16, 1).unfold(2, 8, 1)  # every possible patch position
    assert (windows == a[0]).flatten(3).all(-1).any(), "the patch is not a window of the volume"
    assert not torch.equal(a, ds[(0, 1)]["image"])


def _roughness(img: torch.Tensor) -> float:
    """Mean squared difference of neighbouring voxels: high-frequency energy."""
    return float(sum((torch.diff(img, dim=d) ** 2).mean() for d in (1, 2, 3)))


def test_resolution_augmentation_blurs_or_sharpens_and_is_off_by_default():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    img = torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(24, 28, 20)), 1.0).astype(np.float32))[None]
    default = AugmentConfig(prob=0.0)
    assert default.blur_prob == 0 and default.sharpen_prob == 0
    assert torch.equal(torch.as_tensor(build_augmentation(default)(img)), img)
    blur = build_augmentation(AugmentConfig(prob=0.0, blur_prob=1.0))
    sharp = build_augmentation(AugmentConfig(prob=0.0, sharpen_prob=1.0))
    for seed in range(3):
        blur.set_random_state(seed=seed)
        sharp.set_random_state(seed=seed)
        blurred, sharpened = torch.as_tensor(blur(img)), torch.as_tensor(sharp(img))
        assert blurred.shape == sharpened.shape == img.shape
        assert _roughness(blurred) < 0.8 * _roughness(img) < 0.8 * _roughness(sharpened)
        assert torch.corrcoef(torch.stack([sharpened.flatten(), img.flatten()]))[0, 1] > 0.7  # same anatomy
