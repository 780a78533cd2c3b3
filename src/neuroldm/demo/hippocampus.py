"""Hippocampus ROI and the unilateral atrophy model of the demo cohort (see `neuroldm.demo.cohort`).

The ROI is an *approximation*: one ellipsoid per side in MNI152 2009 millimetres, placed and oriented by eye on
nilearn's template (long axis running anterior-posterior, head lower and more lateral than the tail), intersected
with the template's grey-matter probability so its edge follows the grey matter rather than cutting through white
matter and the temporal horn. It is not an atlas segmentation and it is not meant to be one; it only has to be the
same structure in every subject so that a shrunken one is a learnable, measurable difference.

Atrophy is a backward map (atrophied space -> template space) that scales the cross-section (the two short axes)
by ``1/alpha`` about an anchor near the inferomedial edge, uniformly over the cylinder that holds the ellipsoid, so
the ROI's tissue contracts toward that edge with an area factor ``alpha**2 = 1 - loss`` while its length is kept;
outside the cylinder the scaling fades smoothly to the identity (within ~35 mm of the centre, so the other side is
untouched). The freed space opens superolaterally, where the temporal horn of the lateral ventricle lies; the
cohort fills it with CSF and widens the horn further (`horn_indicator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

# MNI mm. Centres from the brief (left (-26,-22,-13), right (28,-22,-13)); the axes were checked by overlaying the
# ellipsoids on the template: ~40 mm long, pitched 25 deg (head lower), yawed 15 deg (head more lateral).
CENTRES = {"left": (-26.0, -22.0, -13.0), "right": (28.0, -22.0, -13.0)}
SEMI_AXES = (20.0, 6.5, 5.0)  # mm: long axis, lateral, superior
PITCH_DEG = 25.0
YAW_DEG = 15.0
LABELS = {"left": 1, "right": 2}
GM_THRESHOLD = 0.35  # keep the ellipsoid's grey matter; drops the white matter and CSF it overlaps at its edges
# The contraction's anchor in the cross-section, in units of the semi-axes: lower-medial edge, so the freed space
# opens superolaterally, toward the temporal horn.
ANCHOR = (-0.8, -0.8)  # (lateral, superior)
# The contraction is uniform in the cylinder |long| <= 1, |cross-section| <= 1 (semi-axis units, it holds the
# ellipsoid) and fades to the identity over these widths. Only the cross-section fade enters the Jacobian (the long
# coordinate is kept), so the lengthwise one can be short; the cross-section one is set so det > 0 up to MAX_LOSS
# (min det 0.18 at 0.6 on a 1 mm grid; 2.5 went negative at 0.6). The reach stays < 40 mm: the other side is ~47 mm.
FADE_LONG = 0.25
FADE_CROSS = 3.5
MAX_LOSS = 0.6
# The widened temporal horn: an ellipsoid of CSF along the hippocampus's superolateral edge (where the freed space
# opens), centred on that edge in the cross-section and HORN_LENGTH x the ROI's long semi-axis long; its cross-section
# semi-axes are the cohort's ``horn_mm``.
HORN_CENTRE = (0.0, 0.75, 0.75)  # (long, lateral, superior), semi-axis units of the ROI ellipsoid
HORN_LENGTH = 0.8


@dataclass(frozen=True)
class Frame:
    """An ellipsoid's centre (mm), orthonormal axes (rows: long, lateral, superior) and semi-axes (mm)."""

    centre: np.ndarray
    axes: np.ndarray
    semi: np.ndarray

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(3, ...) mm -> (3, ...) coordinates in units of the semi-axes."""
        d = points - self.centre.reshape((3,) + (1,) * (points.ndim - 1))
        return np.tensordot(self.axes, d, axes=1) / self.semi.reshape((3,) + (1,) * (points.ndim - 1))

    def to_mm(self, local: np.ndarray) -> np.ndarray:
        scaled = local * self.semi.reshape((3,) + (1,) * (local.ndim - 1))
        return np.tensordot(self.axes.T, scaled, axes=1) + self.centre.reshape((3,) + (1,) * (local.ndim - 1))

    def reach_mm(self) -> float:
        """Radius (mm) around the centre beyond which the atrophy map is the identity."""
        long_mm = self.semi[0] * (1.0 + FADE_LONG)
        cross_mm = self.semi[1:].max() * (1.0 + FADE_CROSS)
        return float(np.hypot(long_mm, cross_mm))


@lru_cache(maxsize=None)
def frame(side: str) -> Frame:
    """The ellipsoid of one side. Lateral is -x on the left and +x on the right, so the model is mirror-symmetric."""
    lat = -1.0 if side == "left" else 1.0
    p, y = np.deg2rad(PITCH_DEG), np.deg2rad(YAW_DEG)
    long_axis = np.array([lat * np.sin(y) * np.cos(p), np.cos(y) * np.cos(p), -np.sin(p)])  # toward the head
    lateral = np.array([lat, 0.0, 0.0])
    lateral -= lateral.dot(long_axis) * long_axis
    lateral /= np.linalg.norm(lateral)
    superior = np.cross(long_axis, lateral)
    if superior[2] < 0:
        superior = -superior
    return Frame(np.array(CENTRES[side]), np.stack([long_axis, lateral, superior]), np.array(SEMI_AXES))


def _smooth_fade(x: np.ndarray, width: float) -> np.ndarray:
    """1 for x <= 1, 0 for x >= 1 + width, smoothstep (C1) in between."""
    u = np.clip((x - 1.0) / width, 0.0, 1.0)
    return 1.0 - u * u * (3.0 - 2.0 * u)


def atrophy_backward(points: np.ndarray, side: str, loss: float) -> np.ndarray:
    """Map (3, N) mm points of the atrophied brain to the template points they come from.

    Inside the hippocampal cylinder the cross-section is scaled by ``1/alpha`` (alpha**2 = 1 - loss) about the
    anchor; the factor fades smoothly to 1 outside. The long coordinate is untouched, so the Jacobian is block
    triangular and its determinant is ``k * (k + grad(k) . (s - anchor))`` (k the scale, s the cross-section
    position): positive for loss <= MAX_LOSS. The ROI lies inside the plateau, so its volume shrinks by exactly
    ``loss``.
    """
    if not 0.0 <= loss <= MAX_LOSS:
        raise ValueError(f"hippocampal volume loss must be in [0, {MAX_LOSS}], got {loss}")
    if loss == 0.0:
        return points
    f = frame(side)
    local = f.to_local(points)
    cross = np.sqrt(local[1] ** 2 + local[2] ** 2)
    weight = _smooth_fade(np.abs(local[0]), FADE_LONG) * _smooth_fade(cross, FADE_CROSS)
    k = 1.0 + (1.0 / np.sqrt(1.0 - loss) - 1.0) * weight
    anchor = np.array(ANCHOR).reshape((2,) + (1,) * (local.ndim - 1))
    local[1:] = anchor + (local[1:] - anchor) * k
    # exactly the identity where the weight is 0 (no round-off through the local frame and back)
    return np.where(weight > 0, f.to_mm(local), points).astype(points.dtype, copy=False)


def horn_indicator(points: np.ndarray, side: str, radius_mm: float, edge_mm: float) -> np.ndarray:
    """Soft (0..1) indicator of the widened temporal horn of `side` at (3, ...) template mm points.

    An ellipsoid centred on the ROI's superolateral edge (``HORN_CENTRE``), ``HORN_LENGTH`` x the ROI's long
    semi-axis long, with cross-section semi-axes `radius_mm`; its boundary ramps linearly over about `edge_mm`
    (partial volume of the output voxel).
    """
    if radius_mm <= 0:
        return np.zeros(points.shape[1:], dtype=np.float32)
    f = frame(side)
    local = f.to_local(points)
    shape = (3,) + (1,) * (points.ndim - 1)
    centre = np.array(HORN_CENTRE).reshape(shape)
    semi = np.array([SEMI_AXES[0] * HORN_LENGTH, radius_mm, radius_mm]).reshape(shape)
    rho = np.sqrt((((local - centre) * f.semi.reshape(shape) / semi) ** 2).sum(axis=0))
    return np.clip(0.5 + (1.0 - rho) * radius_mm / max(edge_mm, 1e-6), 0.0, 1.0).astype(np.float32)


def ellipsoid_rho(points: np.ndarray, side: str) -> np.ndarray:
    """Normalised ellipsoidal radius of (3, ...) mm points: <= 1 inside the ellipsoid."""
    local = frame(side).to_local(points)
    return np.sqrt((local**2).sum(axis=0))


@dataclass(frozen=True)
class RoiCrop:
    """Soft (0..1) 1 mm ROI indicators of both sides in a box of the template, for sampling with order 1."""

    soft: dict[str, np.ndarray]
    corner_vox: np.ndarray  # template voxel index of the box's first voxel
    vox_to_mm: np.ndarray  # the template's affine


def roi_crop(gm: np.ndarray, affine: np.ndarray, psf_sigma_mm: float, margin_mm: float = 5.0) -> RoiCrop:
    """Rasterise the ROIs (ellipsoid AND grey matter) in a box around both ellipsoids of the 1 mm template.

    The indicator is blurred by the output voxel's point spread (as the template is), so it is the ROI's partial
    volume: order-1 sampling and a 0.5 threshold then give a mask of the right volume, without a staircase.
    """
    inv = np.linalg.inv(affine)
    reach = max(SEMI_AXES) + margin_mm
    corners = np.array([np.array(CENTRES[s]) + d for s in CENTRES for d in (-reach, reach)])
    vox = inv[:3, :3] @ corners.T + inv[:3, 3:4]
    lo = np.maximum(np.floor(vox.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(vox.max(axis=1)).astype(int) + 1, gm.shape)
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")).astype(np.float64)
    mm = np.tensordot(affine[:3, :3], idx, axes=1) + affine[:3, 3].reshape(3, 1, 1, 1)
    box_gm = gm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    soft = {}
    for side in CENTRES:
        hard = (ellipsoid_rho(mm, side) <= 1.0) & (box_gm > GM_THRESHOLD)
        soft[side] = ndimage.gaussian_filter(hard.astype(np.float32), max(psf_sigma_mm, 0.5))
    return RoiCrop(soft, lo, np.asarray(affine, dtype=np.float64))


def sample_roi(crop: RoiCrop, side: str, points: np.ndarray) -> np.ndarray:
    """Soft ROI indicator of one side at (3, N) template mm points (0 outside the box)."""
    inv = np.linalg.inv(crop.vox_to_mm)
    vox = inv[:3, :3] @ points + (inv[:3, 3] - crop.corner_vox).reshape(3, 1)
    return ndimage.map_coordinates(crop.soft[side], vox, order=1, mode="constant", cval=0.0)
