import numpy as np
import pandas as pd
import pytest

from neuroldm.errors import InputError
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.samples import SAMPLE_COLUMNS, read_sample_manifest, write_sample_manifest


def _rows(folder, n=3):
    rows = []
    for i in range(n):
        p = folder / f"s{i}.nii.gz"
        save_nifti_atomic(np.zeros((4, 4, 4), np.float32), np.eye(4), p, what="test volume", frame=ALIGNED_ANAT)
        rows.append({"sample": f"s{i}", "path": str(p), "label": i % 2, "label_name": ["HC", "TLE"][i % 2],
                     "seed": i, "sampler": "ddim", "steps": 25, "guidance": 1.5})
    return pd.DataFrame(rows)


def test_round_trip_makes_paths_relative_on_disk_and_absolute_on_read(tmp_path):
    write_sample_manifest(tmp_path, _rows(tmp_path), {"train_subjects": ["sub-001", "sub-002"]})
    on_disk = pd.read_csv(tmp_path / "manifest.csv")
    assert list(on_disk.columns) == SAMPLE_COLUMNS
    assert on_disk["path"].tolist() == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    moved = tmp_path.rename(tmp_path.with_name(tmp_path.name + "_moved"))
    s = read_sample_manifest(moved)
    assert s.rows["path"].tolist() == [str(moved / f"s{i}.nii.gz") for i in range(3)]
    assert s.rows["label"].tolist() == [0, 1, 0] and s.train_subjects == ["sub-001", "sub-002"]


def test_generator_subjects_are_required(tmp_path):
    with pytest.raises(ValueError, match="train_subjects"):
        write_sample_manifest(tmp_path, _rows(tmp_path), {})


def test_missing_volume_is_named(tmp_path):
    write_sample_manifest(tmp_path, _rows(tmp_path), {"train_subjects": []})
    (tmp_path / "s1.nii.gz").unlink()
    with pytest.raises(InputError, match=r"s1\.nii\.gz: listed in .* but missing \(1 missing"):
        read_sample_manifest(tmp_path / "manifest.csv")
