"""Helpers of the classifier tests: a tiny prepared cohort with a hippocampus-like ROI, synthetic sample folders.

(A module beside `phantoms.py` rather than in ``tests/classify/conftest.py``, which tests cannot import by name.)"""

import numpy as np
import pandas as pd

from neuroldm.config import load_config
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.data.prepare import prepare_cohort
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.samples import write_sample_manifest

from phantoms import phantom, save

TINY = ["prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=2", "split.val_fraction=0.25",
        "split.test_fraction=0.25", "split.seed=1", "classifier.arch=efficientnetv2-tiny",
        "classifier.train.batch_size=2", "classifier.train.steps=4", "classifier.train.warmup_steps=0",
        "classifier.train.val_every=2", "classifier.train.ckpt_every=2", "classifier.train.log_every=1",
        "classifier.patience=null", "classifier.bootstrap=50", "classifier.seeds=[0]"]
ROI_MM = np.array([-20.0, 0.0, -10.0])  # centre of the 'hippocampus' (left), world mm


def tiny_cfg(*extra):
    return load_config(None, None, TINY + list(extra))


def make_cohort(root):
    """16 subjects (8 HC, 8 TLE); TLE subjects have a darker ROI. Returns the prepared folder."""
    bids = root / "bids"
    lines = ["participant_id\tgroup"]
    for k in range(16):
        sub, group = f"sub-{k:02d}", ("TLE" if k % 2 else "HC")
        data, affine = phantom(shape=(48, 56, 48), spacing=3.0, seed=k, marker=False)
        xyz = np.indices(data.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
        roi = (np.linalg.norm((xyz - ROI_MM) / [10, 16, 8], axis=1) < 1).reshape(data.shape)
        if group == "TLE":
            data[roi] *= 0.6
        save(bids / sub / "anat" / f"{sub}_T1w.nii.gz", data, affine)
        save(bids / "derivatives" / "roi" / sub / "anat" / f"{sub}_desc-hippocampus_dseg.nii.gz", roi.astype(np.uint8),
             affine)
        lines.append(f"{sub}\t{group}")
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    prepare_cohort(bids, root / "prep", tiny_cfg(), progress=False, workers=1)
    return root / "prep"


def write_samples(cohort, folder, train_subjects, per_class=8, seed=0, classes=("HC", "TLE")):
    """Synthetic volumes: noisy copies of the prepared training volumes, with a sample manifest."""
    rows = read_manifest(cohort)
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    out = []
    for label, name in enumerate(classes):
        pool = rows[(rows["label"] == label) & (rows["split"] == "train")]
        for i in range(per_class):
            src = pool.iloc[i % len(pool)]
            vol = load_prepared_volume(src["path"]) + rng.normal(0, 0.1, (20, 24, 20)).astype(np.float32)
            path = folder / f"syn-{name}-{i}.nii.gz"
            save_nifti_atomic(vol, affine, path, what="test volume", frame=ALIGNED_ANAT)
            out.append({"sample": f"syn-{name}-{i}", "path": str(path), "label": label, "label_name": name,
                        "seed": i, "sampler": "test", "steps": 0, "guidance": 0.0})
    write_sample_manifest(folder, pd.DataFrame(out), {"train_subjects": list(train_subjects)})
    return folder
