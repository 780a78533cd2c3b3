"""A synthetic, labelled BIDS cohort of healthy controls (HC) and temporal-lobe-epilepsy patients (TLE).

Why by hand: no library generates a labelled cohort with a known, controllable lesion. This one exists so the
whole pipeline (prepare, train, generate, evaluate) can run end to end offline, on data whose ground truth is
known, from the only brain image we can count on having: the MNI152 2009 T1 template that nilearn ships
(197x233x189, 1 mm, skull-stripped; its file is ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, the ICBM
2009a nonlinear symmetric template).

Generative model, per subject (every random draw comes from a generator seeded by ``(cfg.seed, subject index)``,
so the same seed gives identical volumes, and a subject's anatomy does not depend on its group):

* anatomy: the template under a random smooth warp (cubic B-spline displacement, knots every 40 mm, RMS length
  ``warp_mm``; its Jacobian determinant is checked positive on every voxel and the warp halved until it is) and a
  random pose (rotation up to ``rotation_deg`` per axis, anisotropic scale ``1 +- scale``, translation up to
  ``translation_mm``, about the brain's centre);
* scan: a smooth multiplicative bias field (``exp(+-bias)``), a random global intensity scale (white matter about
  1000 x a gain in [0.75, 1.33]), a mild contrast change (gamma in [0.9, 1.1]), partial volume (the template is
  blurred by the output voxel's point spread, FWHM = ``spacing``) and Rician noise (magnitude of complex Gaussian
  noise, sigma = ``noise`` x white matter, so the background is noise, not zero);
* lesion (TLE only): unilateral hippocampal sclerosis, side drawn at random but balanced. Three signs, as on a
  clinical T1 (atrophy, hypointensity, a dilated temporal horn): the hippocampus's cross-section contracts toward
  its inferomedial edge by a smooth diffeomorphic map (`neuroldm.demo.hippocampus`), so the ROI loses exactly a
  fraction drawn uniformly in ``atrophy`` (default 45-60 %, the range of volume loss reported for sclerotic
  hippocampi) of its volume; the remaining hippocampus's signal drops by ``sclerosis_t1`` (15 %); and the freed
  space (hippocampus before, not after) plus a widened temporal horn along its superolateral edge (an ellipsoid
  about 32 mm long with cross-section semi-axes ``horn_mm``) is filled with CSF intensity. On the demo's 4 mm grid
  some 60 voxels on one side change by more than 20 % of white matter (one subject at 52 % loss; a plain 35 %
  atrophy changed 8), not a sub-voxel edge, so a classifier can learn it and a generative model trained on
  4x-downsampled latents has a lesion to reproduce.

The hippocampus ROI is an approximation, not an atlas label: one ellipsoid per side (about 40 x 13 x 10 mm,
placed by eye on the template) intersected with the template's grey matter. The segmentation written for each
subject (a BIDS ``dseg``: 0 background, 1 left, 2 right hippocampus, named in ``desc-hippocampus_dseg.tsv``) is
that ROI after the subject's atrophy and warp, resampled exactly like the image.

All transforms are composed into one backward map per subject (output voxel -> template mm) and the 1 mm template
is sampled once, with `scipy.ndimage.map_coordinates` (order 1), onto an isotropic ``spacing`` grid that covers the
brain with a margin for the random pose and warp. HC and TLE subjects share this grid.

Layout written under ``out``::

    dataset_description.json  README  LICENSE  participants.tsv  participants.json
    sub-001/anat/sub-001_T1w.nii.gz                                         float32
    derivatives/neuroldm-demo/dataset_description.json  README  desc-hippocampus_dseg.{tsv,json}
    derivatives/neuroldm-demo/sub-001/anat/sub-001_desc-hippocampus_dseg.nii.gz   uint8: 0, 1 left, 2 right
    derivatives/neuroldm-demo/sub-001/anat/sub-001_desc-hippocampus_dseg.json      its SpatialReference

The ``dseg.tsv`` (and the ``.json`` describing the segmentations) lie at the derivative's root, so by BIDS
inheritance they apply to every subject's ``*_desc-hippocampus_dseg.nii.gz``; each subject's sidecar names the
T1w image whose grid the segmentation shares (a BIDS URI into the raw dataset, ``DatasetLinks`` "raw"). Every
volume is written in the template's world (NIfTI sform and qform code 4, MNI_152; `neuroldm.io` states the rule).
The licence is the template's: the images are derived from it, and its copyright notice (`TEMPLATE_NOTICE`) asks
to travel with every copy, so LICENSE holds it.

About a third of the subjects (seeded) are stored in LAS voxel order (first axis flipped, affine adjusted so world
coordinates are unchanged), the rest RAS, to exercise reorientation downstream; a subject's T1w and segmentation
share its orientation. Age and sex in ``participants.tsv`` are plausible random covariates; they do not affect
images.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from nilearn import datasets
from scipy import ndimage
from tqdm import tqdm

import neuroldm
from neuroldm.config import DemoCohortConfig
from neuroldm.demo import hippocampus as hippo
from neuroldm.demo import warps
from neuroldm.errors import ConfigError
from neuroldm.io import MNI_152, save_nifti_atomic, write_text_atomic

WARP_KNOT_MM = 40.0  # control-point spacing of the warp: coarser knots shift the hippocampus more than they resize it
BIAS_KNOT_MM = 70.0  # bias fields vary over the whole head, not locally
MIN_WARP_JACOBIAN = 0.2  # a warp that compresses any voxel more than 5x is halved (rare: ~0.7 at warp_mm=3)
GAIN_RANGE = (0.75, 1.33)
GAMMA_RANGE = (0.9, 1.1)
WM_INTENSITY = 1000.0
CSF_LEVEL = 0.25  # fill of the widened temporal horn, x white matter: the template's ventricles are ~0.25
LAS_FRACTION = 1 / 3
DERIVATIVE = "neuroldm-demo"
BIDS_VERSION = "1.9.0"
ROI_DESC = "hippocampus"  # the desc entity of the segmentations: `data.bids.roi`'s default finds them
# The copyright notice of the ICBM 2009 templates as the McConnell Brain Imaging Centre publishes it with them
# (nilearn 0.14's dataset description says "License: unknown"; these are the terms the template comes with).
TEMPLATE_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University. Permission to use, copy, modify, and distribute this software and its documentation for "
    "any purpose and without fee is hereby granted, provided that the above copyright notice appear in all "
    "copies. The authors and McGill University make no representations about the suitability of this software "
    "for any purpose. It is provided \"as is\" without express or implied warranty. The authors are not "
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or patients resulting "
    "from the use or misuse of this software package.")
TEMPLATE_URL = "http://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/"
TEMPLATE_REFERENCES = [
    ("Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL (2009). Unbiased nonlinear average age-appropriate "
     "brain templates from birth to adulthood. NeuroImage 47(Suppl 1):S102"),
    ("Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL (2011). Unbiased average age-appropriate "
     "atlases for pediatric studies. NeuroImage 54(1):313-327"),
]


# --------------------------------------------------------------------------------------------------------------
# The template
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    """The 1 mm MNI152 2009 T1 (white matter = 1, blurred to the output resolution) and what is derived from it."""

    t1: np.ndarray
    affine: np.ndarray
    brain_lo_mm: np.ndarray
    brain_hi_mm: np.ndarray
    roi: hippo.RoiCrop


def psf_sigma_mm(spacing: float) -> float:
    """Gaussian sigma (mm) that takes the 1 mm template to a point spread of FWHM = `spacing`."""
    return float(np.sqrt(max(spacing**2 - 1.0, 0.0)) / (2 * np.sqrt(2 * np.log(2))))


@lru_cache(maxsize=2)
def load_template(spacing: float) -> Template:
    """Load nilearn's offline template once per spacing (it is blurred for that spacing's partial volume)."""
    img = datasets.load_mni152_template(resolution=None)
    t1 = np.asarray(img.get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=None).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=None).get_fdata()) > 0
    # white matter: bright voxels with (almost) no grey-matter probability
    wm = float(np.median(t1[brain & (gm < 0.05) & (t1 > 0.5 * t1.max())]))
    sigma = psf_sigma_mm(spacing)
    t1 = ndimage.gaussian_filter(t1 / wm, sigma) if sigma > 0 else t1 / wm
    idx = np.argwhere(brain)
    lo, hi = (img.affine[:3, :3] @ v + img.affine[:3, 3] for v in (idx.min(axis=0), idx.max(axis=0)))
    return Template(t1.astype(np.float32), img.affine.copy(), np.minimum(lo, hi), np.maximum(lo, hi),
                    hippo.roi_crop(gm, img.affine, sigma))


def output_grid(template: Template, cfg: DemoCohortConfig) -> warps.Grid:
    """The brain's box plus room for the largest pose and warp the config can draw."""
    half = float((template.brain_hi_mm - template.brain_lo_mm).max()) / 2
    margin = 4.0 + cfg.translation_mm + 2 * cfg.warp_mm + half * (cfg.scale + np.deg2rad(cfg.rotation_deg))
    return warps.grid_around(template.brain_lo_mm, template.brain_hi_mm, cfg.spacing, margin)


# --------------------------------------------------------------------------------------------------------------
# The cohort's plan: who is who
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubjectPlan:
    index: int
    participant_id: str
    group: str  # "HC" or "TLE"
    side: str | None  # lesion side of a TLE subject
    atrophy: float  # hippocampal volume loss applied (0 for HC)
    age: int
    sex: str
    orientation: str  # voxel order written: "RAS" or "LAS"


def _balanced_sides(rng: np.random.Generator, n: int) -> list[str]:
    """As many left as right lesions; an odd one out gets a random side."""
    sides = ["left", "right"] * (n // 2)
    if n % 2:
        sides.append(str(rng.choice(["left", "right"])))
    return list(rng.permutation(sides))


def plan_cohort(cfg: DemoCohortConfig) -> list[SubjectPlan]:
    """Groups (round(subjects * tle_fraction) TLE, order shuffled), sides, losses, covariates and orientations."""
    lo, hi = cfg.atrophy
    if not 0.0 <= lo <= hi <= hippo.MAX_LOSS:
        raise ConfigError(f"demo_cohort.atrophy must satisfy 0 <= low <= high <= {hippo.MAX_LOSS}, got {cfg.atrophy}")
    rng = np.random.default_rng(cfg.seed)
    n_tle = int(round(cfg.subjects * cfg.tle_fraction))
    if not 0 < n_tle < cfg.subjects:
        raise ConfigError(f"demo_cohort: {cfg.subjects} subjects x tle_fraction {cfg.tle_fraction} "
                          "leaves a group empty")
    groups = rng.permutation(["TLE"] * n_tle + ["HC"] * (cfg.subjects - n_tle))
    sides = iter(_balanced_sides(rng, n_tle))
    losses = rng.uniform(lo, hi, cfg.subjects)
    ages = rng.integers(18, 66, cfg.subjects)
    sexes = rng.choice(["F", "M"], cfg.subjects)
    las = set(rng.choice(cfg.subjects, int(round(cfg.subjects * LAS_FRACTION)), replace=False).tolist())
    width = max(3, len(str(cfg.subjects)))
    plans = []
    for i, group in enumerate(groups):
        tle = group == "TLE"
        plans.append(SubjectPlan(
            index=i, participant_id=f"sub-{i + 1:0{width}d}", group=str(group),
            side=str(next(sides)) if tle else None,
            atrophy=round(float(losses[i]), 4) if tle else 0.0,  # rounded first: the table holds what is applied
            age=int(ages[i]), sex=str(sexes[i]), orientation="LAS" if i in las else "RAS"))
    return plans


# --------------------------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variation:
    """Everything random about one subject except its noise and lesion."""

    pose: np.ndarray  # 4x4, subject mm -> template mm
    warp: np.ndarray  # (3, X, Y, Z) displacement, mm
    bias: np.ndarray  # (X, Y, Z) multiplicative field
    gain: float
    gamma: float


def subject_rng(cfg: DemoCohortConfig, index: int) -> np.random.Generator:
    """Independent stream per subject: its anatomy and scan do not depend on its group or on the cohort size."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))


def random_warp(rng: np.random.Generator, grid: warps.Grid, warp_mm: float) -> np.ndarray:
    """Smooth displacement (mm) with RMS length `warp_mm`, halved until its Jacobian is comfortably positive."""
    basis = warps.spline_basis(grid, WARP_KNOT_MM)
    coef = warps.random_coefficients(rng, basis, 3)
    # expected RMS of a unit-coefficient spline on this grid, so warp_mm means the same at every spacing
    unit_sd = float(np.sqrt(np.prod([(b**2).sum(axis=1).mean() for b in basis.values])))
    coef *= warp_mm / (np.sqrt(3.0) * unit_sd)
    while warp_mm > 0 and warps.displacement_jacobian_det(coef, basis).min() < MIN_WARP_JACOBIAN:
        coef *= 0.5
    return warps.displacement(coef, basis)


def draw_variation(rng: np.random.Generator, cfg: DemoCohortConfig, grid: warps.Grid,
                   centre_mm: np.ndarray) -> Variation:
    """Draw pose, warp, bias and intensity, always in this order (determinism)."""
    pose = warps.random_affine(rng, cfg.rotation_deg, cfg.scale, cfg.translation_mm, centre_mm)
    warp = random_warp(rng, grid, cfg.warp_mm)
    bias = np.exp(cfg.bias * warps.smooth_random_field(rng, grid, BIAS_KNOT_MM)).astype(np.float32)
    gain = float(np.exp(rng.uniform(*np.log(GAIN_RANGE))))
    gamma = float(rng.uniform(*GAMMA_RANGE))
    return Variation(pose, warp.astype(np.float32), bias, gain, gamma)


def pose_and_warp(var: Variation, grid: warps.Grid) -> np.ndarray:
    """(3, X, Y, Z) template mm of every output voxel, before any atrophy: pose(p + warp(p))."""
    p = grid.points() + var.warp
    m = var.pose.astype(np.float32)
    return np.tensordot(m[:3, :3], p, axes=1) + m[:3, 3].reshape(3, 1, 1, 1)


def _near(points: np.ndarray, side: str) -> np.ndarray:
    """Flat indices of (3, ...) points the atrophy of `side` can move."""
    c = np.array(hippo.CENTRES[side], dtype=points.dtype).reshape(3, 1)
    flat = points.reshape(3, -1)
    return np.flatnonzero(((flat - c) ** 2).sum(axis=0) < hippo.frame(side).reach_mm() ** 2)


def apply_atrophy(pre: np.ndarray, side: str | None, loss: float) -> np.ndarray:
    """Compose the atrophy (template side) into the backward map, only where it is not the identity."""
    if side is None or loss == 0:
        return pre
    out = pre.reshape(3, -1).copy()
    idx = _near(pre, side)
    out[:, idx] = hippo.atrophy_backward(out[:, idx], side, loss)
    return out.reshape(pre.shape)


def backward_map(var: Variation, grid: warps.Grid, side: str | None, loss: float) -> np.ndarray:
    """The one map, output voxel -> template mm, that every image and mask of the subject is sampled through."""
    return apply_atrophy(pose_and_warp(var, grid), side, loss)


def _template_voxels(template: Template, points: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(template.affine).astype(np.float32)
    return np.tensordot(inv[:3, :3], points, axes=1) + inv[:3, 3].reshape((3,) + (1,) * (points.ndim - 1))


def _roi_region(pre: np.ndarray) -> np.ndarray:
    """Flat indices of voxels whose ROI or freed shell can be non-zero (both sides)."""
    return np.unique(np.concatenate([_near(pre, s) for s in hippo.CENTRES]))


def render(template: Template, var: Variation, grid: warps.Grid, side: str | None, loss: float,
           sclerosis_t1: float = 0.0, horn_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image (float32, white matter ~ 1000 x gain) and label mask (uint8) of one subject.

    On the lesion side (`side`, volume loss `loss`): the remaining hippocampus's signal drops by `sclerosis_t1`, and
    the freed space plus the widened temporal horn (`hippocampus.horn_indicator`, semi-axes `horn_mm`, on the
    anatomy before the atrophy) becomes CSF, outside the remaining hippocampus.
    """
    pre = pose_and_warp(var, grid)
    post = apply_atrophy(pre, side, loss)
    img = ndimage.map_coordinates(template.t1, _template_voxels(template, post), order=1, mode="constant",
                                  cval=0.0, output=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    idx = _roi_region(pre)
    flat_img, flat_mask = img.reshape(-1), mask.reshape(-1)
    pre_pts, post_pts = pre.reshape(3, -1)[:, idx], post.reshape(3, -1)[:, idx]
    for s, label in hippo.LABELS.items():
        after = hippo.sample_roi(template.roi, s, post_pts)
        flat_mask[idx[after >= 0.5]] = label
        if s == side:
            # freed space: hippocampus here before the atrophy, not after; with the horn beyond it -> CSF
            freed = np.clip(hippo.sample_roi(template.roi, s, pre_pts) - after, 0.0, 1.0)
            horn = hippo.horn_indicator(pre_pts, s, horn_mm, grid.spacing) * (1.0 - np.clip(after, 0.0, 1.0))
            csf = np.maximum(freed, horn)
            sclerotic = flat_img[idx] * (1.0 - sclerosis_t1 * np.clip(after, 0.0, 1.0))  # T1 hypointensity
            flat_img[idx] = (1 - csf) * sclerotic + csf * CSF_LEVEL
    img = np.power(np.maximum(img, 0.0), var.gamma) * var.bias * (WM_INTENSITY * var.gain)
    return img.astype(np.float32), mask


def add_rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: Rician in tissue, Rayleigh in the background."""
    real = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def synthesize_subject(template: Template, grid: warps.Grid, cfg: DemoCohortConfig, index: int,
                       side: str | None, loss: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of subject `index` in RAS voxel order on `grid`."""
    rng = subject_rng(cfg, index)
    centre = (template.brain_lo_mm + template.brain_hi_mm) / 2
    var = draw_variation(rng, cfg, grid, centre)
    img, mask = render(template, var, grid, side, loss, cfg.sclerosis_t1, cfg.horn_mm)
    return add_rician_noise(img, cfg.noise * WM_INTENSITY * var.gain, rng), mask


def reorient(data: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """RAS data and affine -> `orientation` voxel order, same world coordinates."""
    if orientation == "RAS":
        return data, affine
    if orientation != "LAS":
        raise ValueError(f"unsupported orientation {orientation}")
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    return np.ascontiguousarray(data[::-1]), affine @ flip


# --------------------------------------------------------------------------------------------------------------
# BIDS files
# --------------------------------------------------------------------------------------------------------------

def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _generated_by() -> list[dict]:
    return [{"Name": "neuroldm", "Version": neuroldm.__version__,
             "Description": "neuroldm.demo.cohort: synthetic HC/TLE cohort from the MNI152 2009 template"}]


LICENSE_NAME = "ICBM 2009 template notice (free use with the McGill copyright notice kept; full text in LICENSE)"


def dataset_description() -> dict:
    return {"Name": "neuroldm synthetic demo cohort (HC vs unilateral hippocampal atrophy)",
            "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "GeneratedBy": _generated_by(),
            # who made this dataset; the template's authors are credited in ReferencesAndLinks and HowToAcknowledge
            "Authors": ["neuroldm contributors"],
            "License": LICENSE_NAME,
            "HowToAcknowledge": "Cite the ICBM 2009 template papers in ReferencesAndLinks; every image here is "
                                "derived from that template.",
            "ReferencesAndLinks": [*TEMPLATE_REFERENCES, TEMPLATE_URL],
            "SourceDatasets": [{"URL": TEMPLATE_URL, "Version": "ICBM 2009a nonlinear symmetric, as shipped by "
                                                               "nilearn"}]}


def derivative_description() -> dict:
    # "raw" names the demo dataset two levels up in the BIDS URIs of the segmentations' sidecars
    return {"Name": "neuroldm demo hippocampus segmentations", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": _generated_by(), "License": LICENSE_NAME,
            "Authors": ["neuroldm contributors"], "DatasetLinks": {"raw": "../../"}}


DSEG_DESCRIPTION = {"Description": "Hippocampus ROI (an ellipsoid per side intersected with the MNI152 template's "
                                   "grey matter) after the subject's warp and atrophy; labels in "
                                   f"desc-{ROI_DESC}_dseg.tsv"}


def dseg_sidecar(pid: str) -> dict:
    """The segmentation lies on the grid of the subject's T1w image, which `SpatialReference` names."""
    t1w = f"bids:raw:{pid}/anat/{pid}_T1w.nii.gz"
    return {"SpatialReference": t1w, "Sources": [t1w]}


DSEG_TSV = "index\tname\n0\tbackground\n" + "".join(
    f"{label}\t{side} hippocampus\n" for side, label in hippo.LABELS.items())


def readme(plans: list[SubjectPlan]) -> str:
    n_tle = sum(p.group == "TLE" for p in plans)
    return f"""neuroldm synthetic demo cohort
==============================

{len(plans)} synthetic subjects, {len(plans) - n_tle} healthy controls (HC) and {n_tle} with a simulated unilateral
hippocampal sclerosis (TLE: hippocampal atrophy, T1 hypointensity, a widened temporal horn). No person was
scanned: every T1w image is the ICBM 2009a nonlinear symmetric MNI152 template (as shipped by nilearn) under a
random smooth warp and pose, with a bias field, an intensity scale and Rician noise, made by neuroldm
{neuroldm.__version__} (neuroldm.demo.cohort, whose docstring gives the generative model).

participants.tsv: group (HC/TLE), lesion side, the fraction of hippocampal volume removed, random age and
sex covariates that do not affect the images, and diagnosis (HC, TLE-L, TLE-R: group and side in one label, for
three-class use).

derivatives/{DERIVATIVE}/: each subject's hippocampus segmentation after its warp and atrophy
(*_desc-{ROI_DESC}_dseg.nii.gz, labels in desc-{ROI_DESC}_dseg.tsv: 1 left, 2 right), a coarse ROI (an ellipsoid
per side intersected with the template's grey matter), not an atlas label.

Images are stored in the template's world coordinates (NIfTI sform/qform code 4, MNI_152); about a third are in
LAS voxel order on purpose.

Licence: the images are derived from the ICBM 2009 template and come under its copyright notice, in LICENSE.
"""


def derivative_readme() -> str:
    return (f"Hippocampus segmentations of the neuroldm synthetic demo cohort in the folder two levels up: one "
            f"*_desc-{ROI_DESC}_dseg.nii.gz per subject on its T1w image's grid, labels in "
            f"desc-{ROI_DESC}_dseg.tsv. Licence: see the LICENSE of that folder.\n")


PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Subject label"},
    "group": {"Description": "Diagnostic group",
              "Levels": {"HC": "healthy control", "TLE": "temporal lobe epilepsy (synthetic hippocampal atrophy)"}},
    "side": {"Description": "Side of the hippocampal atrophy (n/a for HC)",
             "Levels": {"left": "left hippocampus", "right": "right hippocampus"}},
    "atrophy": {"Description": "Fraction of hippocampal ROI volume removed on the lesion side (0 for HC); the "
                            "remaining hippocampus is also T1-hypointense and the temporal horn widened"},
    "age": {"Description": "Age (random covariate, does not affect the image)", "Units": "year"},
    "sex": {"Description": "Sex (random covariate, does not affect the image)", "Levels": {"F": "female",
                                                                                            "M": "male"}},
    "diagnosis": {"Description": "Group and lesion side in one label (three classes)",
                  "Levels": {"HC": "healthy control", "TLE-L": "TLE, left hippocampal atrophy",
                             "TLE-R": "TLE, right hippocampal atrophy"}},
}

DIAGNOSIS = {None: "HC", "left": "TLE-L", "right": "TLE-R"}  # lesion side -> the diagnosis column


def participants_table(plans: list[SubjectPlan]) -> pd.DataFrame:
    return pd.DataFrame({
        "participant_id": [p.participant_id for p in plans],
        "group": [p.group for p in plans],
        "side": [p.side or "n/a" for p in plans],
        "atrophy": [p.atrophy for p in plans],
        "age": [p.age for p in plans],
        "sex": [p.sex for p in plans],
        "diagnosis": [DIAGNOSIS[p.side] for p in plans],  # last: every earlier column as it was
    })


def t1w_path(out: Path, pid: str) -> Path:
    return out / pid / "anat" / f"{pid}_T1w.nii.gz"


def dseg_path(out: Path, pid: str) -> Path:
    return out / "derivatives" / DERIVATIVE / pid / "anat" / f"{pid}_desc-{ROI_DESC}_dseg.nii.gz"


def dseg_table_path(out: Path) -> Path:
    return out / "derivatives" / DERIVATIVE / f"desc-{ROI_DESC}_dseg.tsv"


def _sidecar(path: Path) -> Path:
    """The JSON beside a NIfTI or TSV file (BIDS: same name, .json)."""
    return path.with_name(path.name.split(".")[0] + ".json")


def write_subject(out: Path, plan: SubjectPlan, img: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
    img, oriented = reorient(img, affine, plan.orientation)
    mask, _ = reorient(mask, affine, plan.orientation)
    save_nifti_atomic(img, oriented, t1w_path(out, plan.participant_id), frame=MNI_152,
                      what=f"synthetic T1w, demo {plan.group} (ICBM 2009a template)")
    save_nifti_atomic(mask, oriented, dseg_path(out, plan.participant_id), frame=MNI_152, labels=True,
                      what="demo hippocampus dseg: 1 left, 2 right")
    write_text_atomic(_sidecar(dseg_path(out, plan.participant_id)), _json(dseg_sidecar(plan.participant_id)))


def make_demo_cohort(out: str | Path, cfg: DemoCohortConfig, *, progress: bool = True,
                     workers: int | None = None) -> pd.DataFrame:
    """Write the synthetic HC/TLE BIDS cohort to `out` and return its participants table (as written: ``side`` is
    the string ``"n/a"`` for HC).

    Subjects are made by `workers` threads (default: the CPU count, at most 4): numpy, scipy and
    zlib release the GIL for most of the work, and each subject has its own random stream, so the result does not
    depend on the number of threads.
    """
    out = Path(out)
    plans = plan_cohort(cfg)
    template = load_template(float(cfg.spacing))
    grid = output_grid(template, cfg)

    def make(plan: SubjectPlan) -> None:
        img, mask = synthesize_subject(template, grid, cfg, plan.index, plan.side, plan.atrophy)
        write_subject(out, plan, img, mask, grid.affine)

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(n_workers) as pool:
        done = pool.map(make, plans)
        for _ in tqdm(done, total=len(plans), desc="demo cohort", unit="subject", disable=not progress):
            pass
    table = participants_table(plans)
    write_text_atomic(out / "participants.tsv", table.to_csv(sep="\t", index=False, lineterminator="\n"))
    write_text_atomic(out / "participants.json", _json(PARTICIPANTS_JSON))
    write_text_atomic(out / "dataset_description.json", _json(dataset_description()))
    write_text_atomic(out / "README", readme(plans))
    write_text_atomic(out / "LICENSE", TEMPLATE_NOTICE + "\n")
    derivative = out / "derivatives" / DERIVATIVE
    write_text_atomic(derivative / "dataset_description.json", _json(derivative_description()))
    write_text_atomic(derivative / "README", derivative_readme())
    write_text_atomic(dseg_table_path(out), DSEG_TSV)
    write_text_atomic(_sidecar(dseg_table_path(out)), _json(DSEG_DESCRIPTION))  # inherited by every *_dseg.nii.gz
    return table
