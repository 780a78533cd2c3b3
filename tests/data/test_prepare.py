import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroldm.cli import main
from neuroldm.data.manifest import read_manifest
from neuroldm.data.prepare import prepare_cohort
from neuroldm.errors import InputErrors
from neuroldm.io import ALIGNED_ANAT, MNI_152, SCANNER_ANAT

from niftis import assert_neuroldm_header
from phantoms import phantom, save, write_bids

GROUPS = {f"sub-{i:02d}": ("HC" if i % 2 else ("left" if i % 4 else "right")) for i in range(12)}


@pytest.fixture(scope="module")
def bids_template(tmp_path_factory):
    return write_bids(tmp_path_factory.mktemp("bids") / "bids", GROUPS, sessions={"sub-03": ["ses-1", "ses-2"]})


@pytest.fixture
def bids(bids_template, tmp_path):
    """A fresh copy per test, since tests break or extend it."""
    return Path(shutil.copytree(bids_template, tmp_path / "bids"))


def test_prepare_writes_manifest_volumes_and_splits(bids, tmp_path, small_cfg):
    out = tmp_path / "prep"
    df = prepare_cohort(bids, out, small_cfg, progress=False)
    assert (df["status"] == "ok").all() and len(df) == 13
    m = read_manifest(out)  # leakage-checked on read
    assert m.groupby("subject")["split"].nunique().max() == 1, "sessions of one subject crossed splits"
    assert set(m["split"]) == {"train", "val", "test"}
    assert m["label"].tolist() == [0 if GROUPS[s] == "HC" else 1 for s in m["subject"]]
    for path in m["path"]:
        img = nib.load(path)
        assert img.shape == (40, 48, 40) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (4, 4, 4))
        assert isinstance(img.dataobj, nib.arrayproxy.ArrayProxy) and path.endswith(".nii")  # memory-mappable
    assert (out / "config.yaml").exists() and (out / "prepare_summary.json").exists()
    assert m["source_sha256"].str.len().eq(64).all() and m["data_sha256"].str.len().eq(64).all()


def test_rerun_reuses_and_config_change_recomputes(bids, tmp_path, small_cfg):
    out = tmp_path / "prep"
    prepare_cohort(bids, out, small_cfg, progress=False)
    files = sorted((out / "volumes").iterdir())
    mtimes = [f.stat().st_mtime_ns for f in files]
    before = pd.read_csv(out / "manifest.csv")
    prepare_cohort(bids, out, small_cfg, progress=False)
    assert [f.stat().st_mtime_ns for f in sorted((out / "volumes").iterdir())] == mtimes
    pd.testing.assert_frame_equal(pd.read_csv(out / "manifest.csv"), before)
    # a changed setting makes every cached volume stale: new files, old ones removed
    changed = small_cfg.model_copy(deep=True)
    changed.prepare.normalisation = "percentile"
    prepare_cohort(bids, out, changed, progress=False)
    new_files = sorted((out / "volumes").iterdir())
    assert len(new_files) == len(files) and not set(new_files) & set(files)
    # a changed input is recomputed alone
    data, affine = phantom(seed=99)
    save(bids / "sub-05" / "anat" / "sub-05_T1w.nii.gz", data, affine)
    df = prepare_cohort(bids, out, changed, progress=False)
    assert len(set(sorted((out / "volumes").iterdir())) - set(new_files)) == 1
    assert (df["status"] == "ok").all()


def _break_some(bids):
    """Five kinds of bad input at once."""
    (bids / "sub-00" / "anat" / "sub-00_T1w.nii.gz").unlink()  # participant without image
    cut = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    cut.write_bytes(cut.read_bytes()[:3000])  # truncated gzip
    data, affine = phantom(shape=(8, 8, 8), spacing=1.0, marker=False)
    save(bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz", data + 1, affine)  # field of view too small
    save(bids / "sub-04" / "anat" / "sub-04_T1w.nii.gz", np.zeros((30, 30, 30), np.float32), np.eye(4))
    with open(bids / "participants.tsv", "a") as f:
        f.write("sub-99\tMCI\n")
    save(bids / "sub-99" / "anat" / "sub-99_T1w.nii.gz", *phantom())  # unknown label
    return {"sub-00": "has no T1w image", "sub-01_T1w": "unreadable or truncated",
            "sub-02_T1w": "field of view", "sub-04_T1w": "constant image", "participants.tsv": "unknown label"}


def test_bad_inputs_are_all_reported_and_earlier_outputs_survive(bids, tmp_path, small_cfg):
    out = tmp_path / "prep"
    prepare_cohort(bids, out, small_cfg, progress=False)
    manifest_before = (out / "manifest.csv").read_bytes()
    volumes_before = {f.name: f.read_bytes() for f in (out / "volumes").iterdir()}
    expected = _break_some(bids)
    with pytest.raises(InputErrors) as e:
        prepare_cohort(bids, out, small_cfg, progress=False)
    assert len(e.value.errors) == 5
    text = str(e.value)
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in text.splitlines()), (name, problem, text)
    assert (out / "manifest.csv").read_bytes() == manifest_before
    assert all((out / "volumes" / n).read_bytes() == b for n, b in volumes_before.items())
    read_manifest(out)  # still consistent


def test_skip_invalid_records_why(bids, tmp_path, small_cfg):
    _break_some(bids)
    df = prepare_cohort(bids, tmp_path / "prep", small_cfg, skip_invalid=True, progress=False)
    bad = df[df["status"] == "invalid"]
    assert sorted(bad["subject"]) == ["sub-00", "sub-01", "sub-02", "sub-04", "sub-99"]
    assert bad["reason"].str.len().gt(0).all() and (bad["split"] == "").all()
    m = read_manifest(tmp_path / "prep")
    assert len(m) == len(df) - 5 and not set(m["subject"]) & set(bad["subject"])


def test_identical_images_under_two_subjects_share_a_split(bids, tmp_path, small_cfg, caplog):
    shutil.copy(bids / "sub-06" / "anat" / "sub-06_T1w.nii.gz", bids / "sub-07" / "anat" / "sub-07_T1w.nii.gz")
    df = prepare_cohort(bids, tmp_path / "prep", small_cfg, progress=False)
    assert "identical images under different subjects" in caplog.text and "sub-06, sub-07" in caplog.text
    rows = df.set_index("subject").loc[["sub-06", "sub-07"]]
    assert rows["split"].nunique() == 1 and rows["data_sha256"].nunique() == 1


def test_roi_masks_from_derivatives_follow_the_volume(bids, tmp_path, small_cfg):
    data, affine = phantom()
    roi = (data > 150).astype(np.uint8) * 2  # the marker as label 2
    anat = bids / "derivatives" / "masks" / "sub-05" / "anat"
    save(anat / "sub-05_label-marker_mask.nii.gz", roi, affine)
    save(anat / "sub-05_desc-brain_mask.nii.gz", (data > 50).astype(np.uint8), affine)  # another mask: not the ROI
    save(anat / "sub-05_space-MNI152NLin2009cAsym_label-marker_mask.nii.gz", roi, affine)  # another space
    cfg = small_cfg.model_copy(deep=True)
    cfg.data.bids.roi = "marker"
    prepare_cohort(bids, tmp_path / "prep", cfg, progress=False)
    m = read_manifest(tmp_path / "prep").set_index("subject")
    img, mask = nib.load(m.loc["sub-05", "path"]), nib.load(m.loc["sub-05", "roi_path"])
    np.testing.assert_allclose(mask.affine, img.affine)
    values = np.asarray(mask.dataobj)
    assert set(np.unique(values)) == {0, 2}
    peak = np.unravel_index(np.argmax(img.get_fdata()), img.shape)
    assert values[peak] == 2, "the ROI and the image disagree on where the marker is"
    assert m.loc["sub-04", "roi_path"] == ""
    # the phantoms are written by a plain nibabel image: sform code 2, which the prepared files keep
    assert_neuroldm_header(m.loc["sub-05", "path"], ALIGNED_ANAT, "prepared T1w")
    assert_neuroldm_header(m.loc["sub-05", "roi_path"], ALIGNED_ANAT, "prepared ROI labels", labels=True)

    # with the default ROI name (hippocampus) the marker mask is not a ROI; two matching ones are refused
    prepare_cohort(bids, tmp_path / "default", small_cfg, progress=False)
    assert (read_manifest(tmp_path / "default")["roi_path"] == "").all()
    save(anat / "sub-05_desc-marker_dseg.nii.gz", roi, affine)
    with pytest.raises(InputErrors) as e:
        prepare_cohort(bids, tmp_path / "two", cfg, progress=False)
    assert len(e.value.errors) == 1 and "\n" not in str(e.value.errors[0])
    assert ("sub-05: 2 ROI images match data.bids.roi='marker', masks/sub-05/anat/sub-05_desc-marker_dseg.nii.gz, "
            "masks/sub-05/anat/sub-05_label-marker_mask.nii.gz; keep one") in str(e.value.errors[0])


@pytest.mark.parametrize(("sform", "qform", "expected"), [(MNI_152, SCANNER_ANAT, MNI_152),
                                                          (0, SCANNER_ANAT, SCANNER_ANAT)])
def test_prepared_volumes_keep_the_input_world(tmp_path, small_cfg, sform, qform, expected):
    """An input registered to MNI stays MNI (code 4); one with only a scanner qform stays scanner (code 1)."""
    root = write_bids(tmp_path / "bids", {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(10)})
    for path in root.glob("sub-*/anat/*_T1w.nii.gz"):
        img = nib.load(path)
        img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
        img.set_sform(img.affine, code=sform)
        img.set_qform(img.affine, code=qform)
        nib.save(img, path)
    prepare_cohort(root, tmp_path / "prep", small_cfg, progress=False)
    for path in read_manifest(tmp_path / "prep")["path"]:
        assert_neuroldm_header(path, expected, "prepared T1w")


def test_cli_prepare_reports_bad_files_in_one_line_each(bids, tmp_path, capsys):
    _break_some(bids)
    args = ["prepare", str(bids), "--out", str(tmp_path / "prep"), "--no-progress", "--workers", "1",
            "--set", "prepare.spacing=[4,4,4]", "--set", "prepare.grid=[40,48,40]", "--set", "split.folds=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "5 invalid inputs:" in err
    assert len([line for line in err.splitlines() if line.startswith("  ")]) == 5
    assert not (tmp_path / "prep" / "manifest.csv").exists()
    assert main(args + ["--skip-invalid"]) == 0
    assert "5 invalid skipped" in capsys.readouterr().out


def test_a_copied_run_reuses_its_prepared_volumes(bids, tmp_path, small_cfg):
    """A copied run folder retrained everything: the manifest named its cohort by absolute path, so the copy's
    prepare recomputed every volume and wrote a different manifest, and every later stage was out of date."""
    run = tmp_path / "run"
    shutil.copytree(bids, run / "cohort")
    prepare_cohort(run / "cohort", run / "prepared", small_cfg, progress=False)
    rows = pd.read_csv(run / "prepared" / "manifest.csv", dtype=str, keep_default_na=False)
    assert rows["source"].str.startswith("../cohort/sub-").all()
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    shutil.rmtree(run)  # the original is gone: nothing may be read from it
    prepare_cohort(copy / "cohort", copy / "prepared", small_cfg, progress=False)
    summary = pd.read_json(copy / "prepared" / "prepare_summary.json", typ="series")
    assert summary["reused"] == 13 and summary["computed"] == 0
    assert pd.read_csv(copy / "prepared" / "manifest.csv", dtype=str, keep_default_na=False).equals(rows)  # same
    outside = prepare_cohort(bids, tmp_path / "elsewhere" / "prep", small_cfg, progress=False)  # not one folder
    kept = pd.read_csv(tmp_path / "elsewhere" / "prep" / "manifest.csv", dtype=str, keep_default_na=False)
    assert kept["source"].tolist() == outside["source"].tolist() and kept["source"].str.startswith("/").all()
