"""Per-slice FID, as NeuroLDM-3D defined it, with its faults fixed; plus the pooled (2.5D) FID per axis.

Definition (the seed's ``per_slice_fid_ignite.py``): for every slice position along each of the three axes, the
FID between the real and the synthetic slices at that position; the mean over positions per axis and over all
positions. Added here: the **pooled FID per axis** (all slices of an axis as one distribution), whose mean over
the three axes is MAISI's 2.5D FID protocol (``compute_fid_2-5d_ct.py``: one FID per plane over all its slices,
averaged over the planes) with Inception instead of RadImageNet features.

Fixes of the seed's faults:

- **One intensity mapping for every volume** (`to_network_input`). The seed z-scored and min-max scaled real
  volumes but only min-max scaled synthetic ones. Here one fixed window ``[lo, hi]`` — percentiles of the
  *reference real* volumes' voxels (`intensity_window`) — maps every volume, real or synthetic, to [0, 1], so an
  outlier voxel in one volume cannot rescale it. Then, as for a photo going into any FID tool: 8-bit quantisation,
  padding to a square (with the window's low end, i.e. background) so anatomy keeps its aspect ratio, bilinear
  resizing to the network's input size, grey repeated to RGB, ``x/128 − 1``.
- **Memory**: the seed held a 2048² float64 accumulator pair per position (~24 GB). Here each slice's features
  are computed once and stored (float32, 8 KB per slice; memory-mapped on disk above `IN_MEMORY_LIMIT`), every
  comparison (per class, overall, real-vs-real) is a selection of rows, and each position's FID is computed from
  its features alone (`neuroldm.metrics.frechet_distance`; float64 streaming moments for the pooled FID).
- **N is reported** for every FID (volumes per position, slices pooled per axis), since FID is biased upward at
  small N and only comparable at equal N.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.evaluate.inception import FeatureNetwork
from neuroldm.metrics.frechet import GaussianMoments, frechet_distance, frechet_distance_from_moments

AXES = ("sagittal", "coronal", "axial")  # axes 0, 1, 2 of an RAS volume
IN_MEMORY_LIMIT = 2 << 30  # bytes of slice features held in RAM; larger stores are memory-mapped files
WINDOW_VOXELS_PER_VOLUME = 200_000


def slice_positions(shape: tuple[int, ...], stride: int = 1) -> list[np.ndarray]:
    """Positions used per axis: every `stride`-th slice, the first at ``stride // 2`` so the sampling is centred
    (the middle slice alone when the stride exceeds the axis)."""
    return [np.arange(min(stride // 2, n // 2), n, stride) for n in shape]


def intensity_window(paths: list[str], percentiles: tuple[float, float], seed: int = 0) -> tuple[float, float]:
    """``(lo, hi)``: the `percentiles` of the voxels of `paths`, from a seeded subsample of each volume."""
    rng = np.random.default_rng(seed)
    samples = []
    for p in paths:
        v = load_prepared_volume(p).ravel()
        samples.append(v[rng.choice(v.size, size=min(v.size, WINDOW_VOXELS_PER_VOLUME), replace=False)])
    lo, hi = np.percentile(np.concatenate(samples), percentiles)
    if not hi > lo:
        raise ValueError(f"intensity window is empty: percentiles {percentiles} give [{lo}, {hi}]")
    return float(lo), float(hi)


def to_network_input(slices: torch.Tensor, window: tuple[float, float], size: int) -> torch.Tensor:
    """``(B, H, W)`` slices in prepared intensities → ``(B, 3, size, size)`` in [-1, 1) (module docstring)."""
    lo, hi = window
    u = ((slices.float() - lo) / (hi - lo)).clamp(0, 1)
    u = torch.round(u * 255)  # 8-bit levels 0..255, like a saved image
    h, w = u.shape[-2:]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    u = F.pad(u, (left, s - w - left, top, s - h - top), value=0.0)
    u = F.interpolate(u[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return (u / 128.0 - 1.0).expand(-1, 3, -1, -1)


@dataclass
class SliceFeatures:
    """Network features of the chosen slices of a set of volumes.

    ``features[k]`` is ``(N_volumes, len(positions[k]), F)`` float32 for axis k; ``ids`` names the volumes.
    """

    ids: list[str]
    positions: list[np.ndarray]
    features: list[np.ndarray]
    _tmp: object = field(default=None, repr=False)

    def volume_features(self) -> np.ndarray:
        """``(N, F)``: each volume's slice features averaged over positions, then over the three axes."""
        return np.mean([f.mean(1, dtype=np.float64) for f in self.features], axis=0)


def _store(shape: tuple[int, ...], tmp: tempfile.TemporaryDirectory | None, name: str) -> np.ndarray:
    if int(np.prod(shape)) * 4 <= IN_MEMORY_LIMIT or tmp is None:
        return np.zeros(shape, np.float32)
    return np.lib.format.open_memmap(Path(tmp.name) / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)


def extract_slice_features(paths: list, ids: list[str], net: FeatureNetwork, window: tuple[float, float],
                           positions: list[np.ndarray], *, batch_size: int = 32, device: str = "cpu",
                           progress: bool = True, desc: str = "slice features",
                           load: Callable[[object], np.ndarray] = load_prepared_volume) -> SliceFeatures:
    """Features of every chosen slice of every volume in `paths` (each volume read once, by `load`: a prepared
    NIfTI by default; `neuroldm.evaluate.ladder` passes decoders and blurs)."""
    n = len(paths)
    total = sum(len(p) for p in positions) * n * net.dim * 4
    tmp = tempfile.TemporaryDirectory(prefix="neuroldm-features-") if total > IN_MEMORY_LIMIT else None
    feats = [_store((n, len(p), net.dim), tmp, f"axis{k}") for k, p in enumerate(positions)]
    net.to(device)
    bar = tqdm(total=n * sum(len(p) for p in positions), desc=desc, unit="slice", disable=not progress)
    for i, path in enumerate(paths):
        vol = torch.from_numpy(np.ascontiguousarray(load(path), np.float32))
        for k, pos in enumerate(positions):
            slices = vol.movedim(k, 0)[torch.as_tensor(pos)]  # (P, ., .)
            for s in range(0, len(pos), batch_size):
                x = to_network_input(slices[s:s + batch_size], window, net.size).to(device)
                feats[k][i, s:s + len(x)] = net(x).cpu().numpy()
                bar.update(len(x))
    bar.close()
    return SliceFeatures(ids=list(ids), positions=positions, features=feats, _tmp=tmp)


def _pooled_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of all slices of one axis, ``(N, P, F)`` each; from float64 moments streamed position by position."""
    if max(a.shape[0] * a.shape[1], b.shape[0] * b.shape[1]) <= a.shape[2]:
        return frechet_distance(a.reshape(-1, a.shape[2]), b.reshape(-1, b.shape[2]))
    ma, mb = GaussianMoments(a.shape[2]), GaussianMoments(b.shape[2])
    for p in range(a.shape[1]):
        ma.update(a[:, p])
        mb.update(b[:, p])
    return frechet_distance_from_moments(ma.mean, ma.cov, mb.mean, mb.cov)


def per_slice_fid(a: SliceFeatures, ia: np.ndarray, b: SliceFeatures, ib: np.ndarray, metric: str = "fid") -> dict:
    """Per-position, per-axis mean, overall mean and pooled FIDs between volumes `ia` of `a` and `ib` of `b`.

    Both must hold the same slice positions. Returns ``{"metric", "n_a", "n_b", "axes": {axis: {"positions",
    "fid", "mean", "pooled", "n_slices_a", "n_slices_b"}}, "mean", "fid_2_5d"}``: ``mean`` is over all positions
    of all axes (the seed's overall number), ``fid_2_5d`` the mean of the three pooled FIDs.
    """
    ia, ib = np.asarray(ia, int), np.asarray(ib, int)
    if len(ia) < 2 or len(ib) < 2:
        raise ValueError(f"per-slice FID needs at least 2 volumes per set, got {len(ia)} and {len(ib)}")
    axes, every = {}, []
    for k, name in enumerate(AXES):
        if not np.array_equal(a.positions[k], b.positions[k]):
            raise ValueError(f"the two feature sets hold different {name} slice positions")
        fa, fb = a.features[k][ia], b.features[k][ib]  # fancy indexing copies: (n, P, F)
        fids = [frechet_distance(fa[:, p], fb[:, p]) for p in range(fa.shape[1])]
        every += fids
        axes[name] = {"positions": a.positions[k].tolist(), "fid": fids, "mean": float(np.mean(fids)),
                      "pooled": _pooled_fid(fa, fb), "n_slices_a": int(fa.shape[0] * fa.shape[1]),
                      "n_slices_b": int(fb.shape[0] * fb.shape[1])}
    return {"metric": metric, "n_a": len(ia), "n_b": len(ib), "axes": axes, "mean": float(np.mean(every)),
            "fid_2_5d": float(np.mean([axes[n]["pooled"] for n in AXES]))}
