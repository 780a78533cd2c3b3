"""Random smooth fields, random affines and the output grid of the demo cohort (see `neuroldm.demo.cohort`).

Smooth fields are cubic B-splines on a coarse control grid, evaluated on the (regular) output grid as three small
matrix products, one per axis. That costs far less than interpolating a coarse volume at every voxel and gives
the field's exact derivatives the same way, which the warp needs to prove its Jacobian positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular isotropic grid: voxel (i, j, k) is at ``origin + spacing * (i, j, k)`` mm (RAS axes)."""

    shape: tuple[int, int, int]
    spacing: float
    origin: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([self.spacing] * 3 + [1.0])
        a[:3, 3] = self.origin
        return a

    def axes_mm(self) -> list[np.ndarray]:
        return [self.origin[d] + self.spacing * np.arange(n) for d, n in enumerate(self.shape)]

    def points(self, dtype=np.float32) -> np.ndarray:
        """(3, X, Y, Z) world coordinates of every voxel."""
        return np.stack(np.meshgrid(*[a.astype(dtype) for a in self.axes_mm()], indexing="ij"))


def grid_around(lo_mm: np.ndarray, hi_mm: np.ndarray, spacing: float, margin_mm: float) -> Grid:
    """The isotropic grid covering the box [lo, hi] mm plus a margin, centred on the box."""
    extent = np.asarray(hi_mm, float) - np.asarray(lo_mm, float) + 2 * margin_mm
    shape = np.ceil(extent / spacing).astype(int) + 1
    centre = (np.asarray(lo_mm, float) + np.asarray(hi_mm, float)) / 2
    origin = centre - spacing * (shape - 1) / 2
    return Grid(tuple(int(n) for n in shape), float(spacing), origin)


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel."""
    a = np.abs(t)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _bspline3_deriv(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    d = np.where(a < 1, -2 * a + 1.5 * a**2, np.where(a < 2, -0.5 * (2 - a) ** 2, 0.0))
    return np.sign(t) * d


@dataclass(frozen=True)
class SplineBasis:
    """Per-axis B-spline weights (n_voxels, n_knots) and their derivatives (per mm) for one grid and knot spacing."""

    values: tuple[np.ndarray, ...]
    derivs: tuple[np.ndarray, ...]

    @property
    def n_knots(self) -> tuple[int, ...]:
        return tuple(v.shape[1] for v in self.values)


def spline_basis(grid: Grid, knot_mm: float) -> SplineBasis:
    """Knots every `knot_mm`, one beyond each end so the field has no boundary artefact inside the grid."""
    values, derivs = [], []
    for ax in grid.axes_mm():
        n = int(np.ceil((ax[-1] - ax[0]) / knot_mm)) + 3
        knots = ax[0] - knot_mm + knot_mm * np.arange(n)
        t = (ax[:, None] - knots[None, :]) / knot_mm
        values.append(_bspline3(t).astype(np.float32))
        derivs.append((_bspline3_deriv(t) / knot_mm).astype(np.float32))
    return SplineBasis(tuple(values), tuple(derivs))


def evaluate_spline(coef: np.ndarray, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> np.ndarray:
    """Field on the grid from (kx, ky, kz) coefficients: separable, so three matrix products."""
    out = np.tensordot(bx, coef, axes=(1, 0))  # (X, ky, kz)
    out = np.tensordot(out, by, axes=(1, 1))  # (X, kz, Y)
    out = np.tensordot(out, bz, axes=(1, 1))  # (X, Y, Z)
    return out


def random_coefficients(rng: np.random.Generator, basis: SplineBasis, components: int) -> np.ndarray:
    return rng.standard_normal((components,) + basis.n_knots).astype(np.float32)


def displacement(coef: np.ndarray, basis: SplineBasis) -> np.ndarray:
    """(3, X, Y, Z) displacement (mm) from (3, kx, ky, kz) coefficients."""
    bx, by, bz = basis.values
    return np.stack([evaluate_spline(c, bx, by, bz) for c in coef])


def displacement_jacobian_det(coef: np.ndarray, basis: SplineBasis) -> np.ndarray:
    """Exact det(I + grad u) of the spline displacement on every voxel."""
    v, d = basis.values, basis.derivs
    grad = np.empty((3, 3) + tuple(b.shape[0] for b in v), dtype=np.float32)
    for i in range(3):
        for j in range(3):
            b = [d[k] if k == j else v[k] for k in range(3)]
            grad[i, j] = evaluate_spline(coef[i], *b)
        grad[i, i] += 1.0
    return det3(grad)


def det3(m: np.ndarray) -> np.ndarray:
    """Determinant of (3, 3, ...) matrices, written out: far faster than `np.linalg.det` on millions of 3x3s."""
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
            - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))


def smooth_random_field(rng: np.random.Generator, grid: Grid, knot_mm: float) -> np.ndarray:
    """A smooth random scalar field on the grid, scaled to max |value| = 1."""
    basis = spline_basis(grid, knot_mm)
    field = evaluate_spline(random_coefficients(rng, basis, 1)[0], *basis.values)
    return field / max(float(np.abs(field).max()), 1e-12)


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, rotation_deg: float, scale: float, translation_mm: float,
                  centre_mm: np.ndarray) -> np.ndarray:
    """4x4 affine (subject mm -> template mm): rotation, anisotropic scale, translation, about `centre_mm`.

    Uniform draws within +- the configured ranges; the scale is strictly positive, so the determinant is too.
    """
    rot = rotation_matrix(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)))
    zoom = 1.0 + rng.uniform(-scale, scale, 3)
    shift = rng.uniform(-translation_mm, translation_mm, 3)
    m = rot @ np.diag(zoom)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = centre_mm + shift - m @ centre_mm
    return out


def jacobian_determinant(coords_mm: np.ndarray, spacing: float) -> np.ndarray:
    """Finite-difference Jacobian determinant of a (3, X, Y, Z) map sampled on a grid of `spacing` mm."""
    grad = np.stack([np.stack(np.gradient(c.astype(np.float64), spacing), axis=0) for c in coords_mm])
    return det3(grad)
