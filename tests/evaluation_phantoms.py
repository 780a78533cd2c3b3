"""Tiny volumes, sample folders and a TorchScript stand-in feature network for the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter

from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.samples import write_sample_manifest

GRID = (20, 24, 20)


def brain(seed: int, label: int, shift: float = 0.0) -> np.ndarray:
    """A smooth random 'brain' (z-scored-like intensities); class 1 has a dark blob on the left."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(GRID, dtype=np.float64)
    c = (np.asarray(GRID, float) - 1)[:, None, None, None] / 2
    r2 = (((ijk - c) / (np.asarray(GRID)[:, None, None, None] * 0.4)) ** 2).sum(0)
    v = np.where(r2 < 1, 1.0, -1.5) + gaussian_filter(rng.normal(size=GRID), 1.5) * 2.0
    if label == 1:
        v[4:8, 9:14, 8:12] -= 1.5
    return (v + shift).astype(np.float32)


class TinyNet(torch.nn.Module):
    """(B, 3, 299, 299) -> (B, 8): pooled responses of 8 fixed 5x5 filters (deterministic, seeded)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(8, 3, 5, 5, generator=g) / 5, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 8), self.weight)
        return torch.relu(y).mean(dim=(2, 3)) + y.std(dim=(2, 3))


def write_samples(folder, volumes: list[tuple[np.ndarray, int]], train_subjects: list[str]):
    rows = []
    for i, (data, label) in enumerate(volumes):
        p = folder / f"syn-{i:02d}.nii"
        save_nifti_atomic(data, np.diag([3.0, 3.0, 3.0, 1.0]), p, what="test volume", frame=ALIGNED_ANAT)
        rows.append({"sample": f"syn-{i:02d}", "path": str(p), "label": label, "label_name": ["HC", "TLE"][label],
                     "seed": i, "sampler": "test", "steps": 0, "guidance": 0.0})
    write_sample_manifest(folder, pd.DataFrame(rows), {"train_subjects": train_subjects})
    return folder
