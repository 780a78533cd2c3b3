"""Fixtures of the evaluation tests: a tiny prepared cohort on a 20x24x20 grid and a tiny TorchScript network."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from evaluation_phantoms import TinyNet, brain

from neuroldm.data.manifest import MANIFEST_COLUMNS
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic, sha256_array


@pytest.fixture(scope="session")
def tiny_script(tmp_path_factory):
    """(path, sha1) of a TorchScript file of `TinyNet`."""
    path = tmp_path_factory.mktemp("net") / "tiny.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the FID network ships as TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
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
        save_nifti_atomic(data, np.diag([3.0, 3.0, 3.0, 1.0]), root / rel, what="test volume", frame=ALIGNED_ANAT)
        rows.append({c: "" for c in MANIFEST_COLUMNS} | {
            "subject": f"sub-{k:02d}", "label": label, "label_name": ["HC", "TLE"][label], "split": split,
            "fold": -1, "path": rel, "shape": "20x24x20", "data_sha256": sha256_array(data), "status": "ok"})
    pd.DataFrame(rows)[MANIFEST_COLUMNS].to_csv(root / "manifest.csv", index=False)
    return root
