"""The synthetic demo cohort: BIDS layout, determinism, a diffeomorphic warp and a real, unilateral lesion."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from neuroldm.config import DemoCohortConfig
from neuroldm.data.manifest import read_manifest
from neuroldm.data.prepare import prepare_cohort
from neuroldm.demo import cohort as C
from neuroldm.demo import hippocampus as H
from neuroldm.demo import warps as W
from neuroldm.errors import ConfigError
from neuroldm.io import MNI_152

from niftis import assert_neuroldm_header

SPACING = 3.0
CFG = DemoCohortConfig(subjects=12, spacing=SPACING, seed=7)
OTHER = {"left": "right", "right": "left"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "bids"
    table = C.make_demo_cohort(out, CFG, progress=False)
    return out, table


def _load(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img


def _ras(path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _roi_volumes(out, table) -> pd.DataFrame:
    """Hippocampus mask volume (mm3) per side and subject."""
    rows = []
    for pid in table.participant_id:
        mask, img = _load(C.dseg_path(out, pid))
        vox = float(np.prod(img.header.get_zooms()))
        rows.append({"participant_id": pid, "left": (mask == 1).sum() * vox, "right": (mask == 2).sum() * vox})
    return table.merge(pd.DataFrame(rows), on="participant_id")


# ----------------------------------------------------------------------------------------------------------------
# Layout and table
# ----------------------------------------------------------------------------------------------------------------

def test_layout_and_descriptions(cohort):
    out, table = cohort
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["DatasetType"] == "raw" and desc["Name"]
    assert desc["GeneratedBy"][0]["Name"] == "neuroldm" and desc["GeneratedBy"][0]["Version"]
    assert desc["Authors"] and "LICENSE" in desc["License"]
    assert "Louis Collins, McConnell Brain Imaging Centre" in (out / "LICENSE").read_text()
    assert f"{CFG.subjects} synthetic subjects" in (out / "README").read_text()
    deriv_root = out / "derivatives" / C.DERIVATIVE
    deriv = json.loads((deriv_root / "dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative" and deriv["License"] == desc["License"]
    assert (deriv_root / "README").read_text()
    assert deriv["DatasetLinks"] == {"raw": "../../"} and desc["SourceDatasets"][0]["URL"] == C.TEMPLATE_URL
    assert "Hippocampus ROI" in json.loads((deriv_root / "desc-hippocampus_dseg.json").read_text())["Description"]
    labels = pd.read_csv(deriv_root / "desc-hippocampus_dseg.tsv", sep="\t")
    assert labels.to_dict("list") == {"index": [0, 1, 2],
                                      "name": ["background", "left hippocampus", "right hippocampus"]}
    sidecar = json.loads((out / "participants.json").read_text())
    assert set(sidecar) == set(table.columns)
    for pid in table.participant_id:
        assert (out / pid / "anat" / f"{pid}_T1w.nii.gz").is_file()
        assert (deriv_root / pid / "anat" / f"{pid}_desc-hippocampus_dseg.nii.gz").is_file()
        side = json.loads((deriv_root / pid / "anat" / f"{pid}_desc-hippocampus_dseg.json").read_text())
        assert side["SpatialReference"] == f"bids:raw:{pid}/anat/{pid}_T1w.nii.gz"
    assert not list(out.rglob("*_mask.nii*")), "the segmentations are dseg files now"
    assert not list(out.rglob(".*.tmp*")), "atomic writes left temporary files"


def test_participants_table(cohort):
    out, table = cohort
    tsv = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(tsv.columns) == ["participant_id", "group", "side", "atrophy", "age", "sex", "diagnosis"]
    assert tsv.participant_id.tolist() == [f"sub-{i:03d}" for i in range(1, CFG.subjects + 1)]
    n_tle = round(CFG.subjects * CFG.tle_fraction)
    assert (tsv.group == "TLE").sum() == n_tle and (tsv.group == "HC").sum() == CFG.subjects - n_tle
    assert tsv.group.tolist() != sorted(tsv.group.tolist()), "groups should be shuffled"
    tle, hc = tsv[tsv.group == "TLE"], tsv[tsv.group == "HC"]
    assert set(hc.side) == {"n/a"} and (hc.atrophy.astype(float) == 0).all()
    assert abs((tle.side == "left").sum() - (tle.side == "right").sum()) <= 1
    loss = tle.atrophy.astype(float)
    assert loss.between(*CFG.atrophy).all()
    assert tsv.age.str.isdigit().all() and set(tsv.sex) <= {"M", "F"}
    # the three-class label is group and side in one: HC, TLE-L, TLE-R
    assert (hc.diagnosis == "HC").all()
    assert (tle.diagnosis == tle.side.map({"left": "TLE-L", "right": "TLE-R"})).all()
    assert (table.astype(str).values == tsv.values).all(), "returned table differs from the written one"


# ----------------------------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------------------------

def test_volumes_grid_labels_and_orientation(cohort):
    out, table = cohort
    codes = set()
    for pid in table.participant_id:
        t1, t1_img = _load(C.t1w_path(out, pid))
        mask, mask_img = _load(C.dseg_path(out, pid))
        assert t1.dtype == np.float32 and mask.dtype == np.uint8
        assert t1.shape == mask.shape
        np.testing.assert_allclose(t1_img.affine, mask_img.affine)
        assert abs(np.linalg.det(t1_img.affine[:3, :3])) == pytest.approx(SPACING**3)
        np.testing.assert_allclose(t1_img.header.get_zooms(), (SPACING,) * 3)
        assert set(np.unique(mask)) == {0, 1, 2}
        assert_neuroldm_header(C.t1w_path(out, pid), MNI_152, "synthetic T1w")
        assert_neuroldm_header(C.dseg_path(out, pid), MNI_152, "hippocampus dseg", labels=True)
        codes.add(nib.aff2axcodes(t1_img.affine))
        assert nib.aff2axcodes(mask_img.affine) == nib.aff2axcodes(t1_img.affine)
    assert ("R", "A", "S") in codes and len(codes) > 1, f"expected RAS and non-RAS subjects, got {codes}"


def test_same_world_grid_whatever_the_voxel_order(cohort):
    """LAS subjects are RAS subjects with the first axis flipped: world coordinates of voxel centres agree."""
    out, table = cohort
    affines = {nib.aff2axcodes(nib.load(C.t1w_path(out, p)).affine): nib.load(C.t1w_path(out, p))
               for p in table.participant_id}
    ras, las = affines[("R", "A", "S")], affines[("L", "A", "S")]
    assert ras.shape == las.shape
    np.testing.assert_allclose(nib.as_closest_canonical(las).affine, ras.affine, atol=1e-6)


def test_image_is_a_brain_with_noisy_background(cohort):
    out, table = cohort
    t1 = _ras(C.t1w_path(out, table.participant_id[0]))
    corner = t1[:5, :5, -5:]  # outside the head
    brain = t1[t1.shape[0] // 2 - 5:t1.shape[0] // 2 + 5, t1.shape[1] // 2 - 5:t1.shape[1] // 2 + 5,
               t1.shape[2] // 2:t1.shape[2] // 2 + 10]
    assert np.isfinite(t1).all() and t1.min() >= 0
    assert corner.mean() > 0 and corner.std() > 0, "background must be Rician (Rayleigh) noise, not zeros"
    assert brain.mean() > 10 * corner.mean()
    assert 300 < np.percentile(t1, 99) < 3000  # white matter ~ 1000 x gain


def test_prepare_finds_every_segmentation_and_keeps_the_mni_frame(cohort, tmp_path, small_cfg):
    """The reader's defaults (data.bids.roi = hippocampus) find the demo's dseg files, and the prepared volumes
    and ROIs stay in the template's world (code 4)."""
    out, table = cohort
    df = prepare_cohort(out, tmp_path / "prep", small_cfg, progress=False)
    assert (df["status"] == "ok").all() and len(df) == CFG.subjects
    m = read_manifest(tmp_path / "prep", usable_only=False)
    assert (m["roi_path"] != "").all()
    assert_neuroldm_header(m["path"][0], MNI_152, "prepared T1w")
    assert_neuroldm_header(m["roi_path"][0], MNI_152, "prepared ROI labels", labels=True)
    assert set(np.unique(np.asarray(nib.load(m["roi_path"][0]).dataobj))) == {0, 1, 2}


def test_subjects_differ(cohort):
    out, table = cohort
    a, b = (_ras(C.t1w_path(out, p)) for p in table.participant_id[:2])
    assert np.abs(a - b).mean() > 0.05 * np.abs(a).mean()


# ----------------------------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------------------------

def test_same_seed_same_volumes_different_seed_differs(cohort, tmp_path):
    out, table = cohort
    C.make_demo_cohort(tmp_path / "again", CFG, progress=False, workers=1)  # thread count must not matter
    for pid in table.participant_id:
        for path in (C.t1w_path, C.dseg_path):
            x, x_img = _load(path(out, pid))
            y, y_img = _load(path(tmp_path / "again", pid))
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x_img.affine, y_img.affine)
    assert (out / "participants.tsv").read_text() == (tmp_path / "again" / "participants.tsv").read_text()

    other = CFG.model_copy(update={"seed": CFG.seed + 1, "subjects": 4})
    C.make_demo_cohort(tmp_path / "other", other, progress=False)
    x = _ras(C.t1w_path(out, "sub-001"))
    y = _ras(C.t1w_path(tmp_path / "other", "sub-001"))
    assert x.shape == y.shape and not np.array_equal(x, y)


# ----------------------------------------------------------------------------------------------------------------
# The warp
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backward_map_is_diffeomorphic(seed):
    """Jacobian determinant of the whole backward map (pose, a strong warp, maximal atrophy) is positive."""
    cfg = DemoCohortConfig(spacing=2.0, warp_mm=6.0, rotation_deg=10.0, scale=0.1, seed=seed)
    template = C.load_template(SPACING)  # only its brain box is used for the grid
    grid = C.output_grid(template, cfg)
    var = C.draw_variation(C.subject_rng(cfg, 0), cfg, grid, (template.brain_lo_mm + template.brain_hi_mm) / 2)
    coords = C.backward_map(var, grid, "left" if seed % 2 else "right", H.MAX_LOSS)
    det = W.jacobian_determinant(coords, grid.spacing)
    assert det.min() > 0
    assert np.abs(var.warp).max() > 3.0  # the warp is really there


def test_atrophy_map_positive_jacobian_and_exact_volume():
    """On a fine grid: det > 0 everywhere, and det = 1 / (1 - loss) inside the ROI (backward map)."""
    for side in H.CENTRES:
        c = np.array(H.CENTRES[side])
        grid = W.grid_around(c - 36, c + 36, 1.0, 0.0)
        p = grid.points(np.float64)
        q = H.atrophy_backward(p.reshape(3, -1), side, H.MAX_LOSS).reshape(p.shape)
        det = W.jacobian_determinant(q, 1.0)
        assert det.min() > 0
        inside = H.ellipsoid_rho(q, side) <= 0.9
        np.testing.assert_allclose(det[inside], 1 / (1 - H.MAX_LOSS), rtol=1e-3)
        far = np.sqrt(((p - c.reshape(3, 1, 1, 1)) ** 2).sum(0)) > H.frame(side).reach_mm()
        np.testing.assert_array_equal(q[:, far], p[:, far])


def test_loss_outside_the_model_is_refused():
    with pytest.raises(ValueError):
        H.atrophy_backward(np.zeros((3, 1)), "left", H.MAX_LOSS + 0.1)
    with pytest.raises(ConfigError):
        C.plan_cohort(DemoCohortConfig(atrophy=(0.3, 0.9)))


# ----------------------------------------------------------------------------------------------------------------
# The lesion
# ----------------------------------------------------------------------------------------------------------------

def test_lesion_side_shrinks_contralateral_does_not(cohort):
    """TLE lesion-side ROI >= 35% below the HC mean on that side, on average; the other side within 8%.

    8%: the ROI volume of HC subjects varies ~9% between subjects (warp and scale), so a 6-vs-6 comparison of means
    has a standard error of ~5%; across 12 seeds the contralateral mean stayed within 5% of the HC mean. The lesion
    (45-60% applied) is far outside that band.
    """
    out, table = cohort
    vols = _roi_volumes(out, table)
    hc = vols[vols.group == "HC"][["left", "right"]].mean()
    tle = vols[vols.group == "TLE"]
    lesion = np.mean([1 - r[r.side] / hc[r.side] for _, r in tle.iterrows()])
    contra = np.mean([r[OTHER[r.side]] / hc[OTHER[r.side]] - 1 for _, r in tle.iterrows()])
    assert lesion >= 0.35, f"lesion-side ROI only {lesion:.1%} below HC"
    assert abs(contra) <= 0.08, f"contralateral ROI {contra:+.1%} off HC"


def _twin(template, grid, plan, cfg=CFG):
    """The subject rendered with and without its lesion: same anatomy, scan and noise."""
    lesioned = C.synthesize_subject(template, grid, cfg, plan.index, plan.side, plan.atrophy)
    healthy = C.synthesize_subject(template, grid, cfg, plan.index, None, 0.0)
    return lesioned, healthy


def test_remaining_hippocampus_is_hypointense():
    """The sclerotic hippocampus that is left is darker by ~`sclerosis_t1` than the same voxels without the lesion;
    with ``sclerosis_t1 = 0`` it is not."""
    template = C.load_template(SPACING)
    grid = C.output_grid(template, CFG)
    plan = next(p for p in C.plan_cohort(CFG) if p.group == "TLE")
    lab = H.LABELS[plan.side]
    ratios = {}
    for drop in (0.0, CFG.sclerosis_t1):
        cfg = CFG.model_copy(update={"sclerosis_t1": drop})
        (img, mask), (img0, _) = _twin(template, grid, plan, cfg)
        core = ndimage.binary_erosion(mask == lab)  # away from the freed shell's partial volume
        core = core if core.sum() >= 3 else mask == lab
        ratios[drop] = img[core].mean() / img0[core].mean()
    assert CFG.sclerosis_t1 >= 0.1
    assert ratios[CFG.sclerosis_t1] < ratios[0.0] - 0.5 * CFG.sclerosis_t1, ratios
    assert ratios[CFG.sclerosis_t1] > 1 - 2 * CFG.sclerosis_t1, ratios


def test_temporal_horn_widens_beyond_the_freed_space():
    """Voxels that were never hippocampus turn to CSF next to the lesion (the horn), many more than without it."""
    template = C.load_template(SPACING)
    grid = C.output_grid(template, CFG)
    plan = next(p for p in C.plan_cohort(CFG) if p.group == "TLE")
    counts = {}
    for horn in (0.0, CFG.horn_mm):
        cfg = CFG.model_copy(update={"horn_mm": horn})
        (img, mask), (img0, mask0) = _twin(template, grid, plan, cfg)
        outside = (mask0 == 0) & (mask == 0)
        wm = np.percentile(img0, 99)
        counts[horn] = int((outside & (img0 - img > 0.15 * wm)).sum())
    horn_vox = 4 / 3 * np.pi * H.SEMI_AXES[0] * H.HORN_LENGTH * CFG.horn_mm**2 / SPACING**3
    assert counts[CFG.horn_mm] > counts[0.0] + 0.25 * horn_vox, (counts, horn_vox)


def test_lesion_against_the_same_anatomy_without_it(cohort):
    """Per TLE subject: lesion-side ROI shrinks by ~the applied loss, the other side is identical, and the freed
    shell turns from hippocampal grey matter toward CSF."""
    template = C.load_template(SPACING)
    grid = C.output_grid(template, CFG)
    for plan in [p for p in C.plan_cohort(CFG) if p.group == "TLE"][:3]:
        (img, mask), (img0, mask0) = _twin(template, grid, plan)
        lab, other = H.LABELS[plan.side], H.LABELS[OTHER[plan.side]]
        np.testing.assert_array_equal(mask == other, mask0 == other)
        measured = 1 - (mask == lab).sum() / (mask0 == lab).sum()
        assert abs(measured - plan.atrophy) < 0.1, (measured, plan.atrophy)
        shell = (mask0 == lab) & (mask != lab)
        assert shell.sum() > 5
        before, after = img0[shell].mean(), img[shell].mean()
        wm = np.percentile(img0, 99)
        csf = C.CSF_LEVEL * wm
        assert after < 0.8 * before, (before, after)
        assert abs(after - csf) < abs(before - csf)
        assert np.array_equal(img[mask0 == other], img0[mask0 == other])
