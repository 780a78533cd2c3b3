"""A tiny prepared cohort and sample folder on a 20x24x20 grid, and a tiny TorchScript stand-in feature network."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from neuroldm.data.manifest import MANIFEST_COLUMNS
from neuroldm.io import save_nifti_atomic, sha256_array
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


@pytest.fixture(scope="session")
def tiny_script(tmp_path_factory):
    """(path, sha1) of a TorchScript file of `TinyNet`."""
    path = tmp_path_factory.mktemp("net") / "tiny.pt"
    torch.jit.script(TinyNet()).save(str(path))
    return path, hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A prepared folder: 16 train, 6 test subjects (half of each class); returns its path."""
    root = tmp_path_factory.mktemp("prepared")
    rows = []
    for k, split in enumerate(["train"] * 16 + ["test"] * 6):
        label = k % 2
        data = brain(seed=k, label=label)
        rel = f"vol/sub-{k:02d}.nii"
        save_nifti_atomic(data, np.diag([3.0, 3.0, 3.0, 1.0]), root / rel)
        rows.append({c: "" for c in MANIFEST_COLUMNS} | {
            "subject": f"sub-{k:02d}", "label": label, "label_name": ["HC", "TLE"][label], "split": split,
            "fold": -1, "path": rel, "shape": "20x24x20", "data_sha256": sha256_array(data), "status": "ok"})
    pd.DataFrame(rows)[MANIFEST_COLUMNS].to_csv(root / "manifest.csv", index=False)
    return root


def write_samples(folder, volumes: list[tuple[np.ndarray, int]], train_subjects: list[str]):
    rows = []
    for i, (data, label) in enumerate(volumes):
        p = folder / f"syn-{i:02d}.nii"
        save_nifti_atomic(data, np.diag([3.0, 3.0, 3.0, 1.0]), p)
        rows.append({"sample": f"syn-{i:02d}", "path": str(p), "label": label, "label_name": ["HC", "TLE"][label],
                     "seed": i, "sampler": "test", "steps": 0, "guidance": 0.0})
    write_sample_manifest(folder, pd.DataFrame(rows), {"train_subjects": train_subjects})
    return folder
