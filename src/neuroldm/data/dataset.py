"""Prepared volumes as a torch `Dataset`, with anatomically plausible augmentation.

Items are ``{"image": (1, D, H, W) float32, "label": int64, "index": int64}``; with ``crop`` the image is a random
patch of that size (fully convolutional models train on patches for speed, as MAISI's autoencoder does).
The engine asks for items by ``(index, epoch)``; augmentation is then seeded by ``(seed, epoch, index)``, so a
volume gets the same augmentation in a resumed run, whichever worker process loads it.

Augmentation (MONAI transforms) is limited to what a scan can plausibly look like: a small rotation, scaling
and translation, and a small intensity scale and shift. There is no flip along the superior-inferior or
anterior-posterior axis (the seed flipped brains upside down), and the left-right flip is off by default because
it swaps the side of a unilateral lesion.
"""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pandas as pd
import torch
from monai.transforms import (Compose, RandAffine, RandFlip, RandGaussianSharpen, RandGaussianSmooth,
                              RandScaleIntensity, RandShiftIntensity, RandSpatialCrop)
from torch.utils.data import Dataset

from neuroldm.config import AugmentConfig
from neuroldm.errors import InputError

_CACHE_LIMIT_BYTES = 4 << 30  # volumes are held in memory below this total size, memory-mapped above it


def load_prepared_volume(path: str) -> np.ndarray:
    """A prepared volume as float32 (D, H, W); uncompressed NIfTI is memory-mapped by nibabel."""
    try:
        return np.asarray(nib.load(path).dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError) as e:
        raise InputError(path, f"cannot read prepared volume ({e}); re-run `neuroldm prepare`") from None


def build_augmentation(cfg: AugmentConfig) -> Compose:
    """Small affine + intensity changes on a (1, D, H, W) array; each applied with probability ``cfg.prob``."""
    rot = np.deg2rad(cfg.rotate_deg)
    transforms = [
        RandAffine(prob=cfg.prob, rotate_range=(rot, rot, rot), scale_range=(cfg.scale,) * 3,
                   translate_range=(cfg.translate_vox,) * 3, mode="bilinear", padding_mode="border"),
        RandScaleIntensity(factors=cfg.intensity_scale, prob=cfg.prob),
        RandShiftIntensity(offsets=cfg.intensity_shift, prob=cfg.prob),
    ]
    if cfg.blur_prob > 0:
        transforms.append(RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0),
                                             prob=cfg.blur_prob))
    if cfg.sharpen_prob > 0:  # x_b + alpha (x_b - G_0.5 x_b), x_b the input lightly blurred (sigma 0.4-0.6)
        transforms.append(RandGaussianSharpen(sigma1_x=(0.4, 0.6), sigma1_y=(0.4, 0.6), sigma1_z=(0.4, 0.6),
                                              alpha=(1.0, 5.0), prob=cfg.sharpen_prob))
    if cfg.left_right_flip:  # spatial axis 0 of an RAS volume is left-right; the other two are never flipped
        transforms.append(RandFlip(prob=0.5, spatial_axis=0))
    return Compose(transforms)


class VolumeDataset(Dataset):
    """The rows of a prepared manifest (see `neuroldm.data.manifest.read_manifest`)."""

    def __init__(self, rows: pd.DataFrame, augment: AugmentConfig | None = None, seed: int = 0,
                 cache: bool | None = None, crop: tuple[int, int, int] | None = None):
        if rows.empty:
            raise InputError("manifest", "no volumes selected")
        self.paths = rows["path"].tolist()
        self.labels = torch.tensor(np.array(rows["label"], dtype=np.int64))
        self.subjects = rows["subject"].tolist()
        transforms = []
        if augment is not None and augment.prob > 0:
            transforms += list(build_augmentation(augment).transforms)
        if crop is not None:  # random patch (after augmentation, so the whole volume was transformed)
            transforms.append(RandSpatialCrop(roi_size=tuple(crop), random_size=False))
        self.augment = Compose(transforms) if transforms else None
        self.seed = seed
        first = load_prepared_volume(self.paths[0])
        self.shape = first.shape
        if cache is None:
            cache = first.nbytes * len(self.paths) <= _CACHE_LIMIT_BYTES
        self._cache = [first] + [load_prepared_volume(p) for p in self.paths[1:]] if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def volume(self, index: int) -> np.ndarray:
        return self._cache[index] if self._cache is not None else load_prepared_volume(self.paths[index])

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        index, epoch = item if isinstance(item, tuple) else (item, None)
        image = torch.from_numpy(np.array(self.volume(index), dtype=np.float32))[None]
        if self.augment is not None and epoch is not None:
            self.augment.set_random_state(seed=int(np.random.SeedSequence([self.seed, epoch, index])
                                                   .generate_state(1)[0]))
            out = self.augment(image)
            image = (out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)).float()
        return {"image": image.contiguous(), "label": self.labels[index], "index": torch.tensor(index)}
