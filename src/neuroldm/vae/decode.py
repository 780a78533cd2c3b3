"""Bounded-memory decoding and encoding of full-size volumes by overlapping latent windows.

Each window is a block of the latent grid (its *core*, ``roi`` latent voxels per axis) grown by ``context``
latent voxels on every side that is not the volume's edge. The grown block is decoded (or, for encoding, the
matching image block is encoded), the context part of the result is thrown away, and the cores are blended:

- neighbouring cores overlap by at least ``ceil(overlap·roi)`` latent voxels (window starts evenly spaced);
- across an overlap each window's weight rises from 0 to 1 as ``sin²(π/2 · d/r)`` of the distance d from its
  interior edge (r: the overlap width), so two neighbours' weights sum to 1 (sin² + cos² = 1), the blend is
  smooth and a window's least reliable voxels, at its edges, count least. Sides on the volume's edge get weight 1.
  The result is divided by the summed weights, which also covers windows that overlap more than their neighbours.

Memory is bounded by the largest decoded block, ``roi + 2·context`` latent voxels per axis.

Context: by default every window gets the network's receptive radius (`receptive_radius`: the summed reach of
its convolutions, 6 latent voxels for the presets' decoders), so zero padding at a block's edge cannot reach
the core. Measured on a random paper-arch decoder with whole-volume GroupNorm statistics: max error 1.6e-5 of
the output's std at 6 voxels of context, 1.7e-3 at 5, 3e-2 at 4.

GroupNorm: the autoencoder's GroupNorm layers normalise with the statistics of whatever block they see, so a
window normalised with its own statistics (``norm_stats="window"``, what MAISI's sliding-window decoding does)
differs from whole-volume decoding by far more than zero padding does (on the same random decoder: a max error
of tens of % of the output's std; see ``benchmarks/vae_memory.py``). ``norm_stats="global"`` (the default)
therefore first measures every GroupNorm's whole-volume statistics, one layer per pass in execution order: each
pass runs the windows only up to the next unmeasured layer, with the earlier layers already normalised by
whole-volume statistics, and sums that layer's input over the part of the volume each window owns (every voxel
once). Every layer is then local, and the final pass reproduces whole-volume decoding up to float rounding.
The price is one partial pass per GroupNorm layer (7 in the paper decoder) on top of the final pass.

When to use it: rarely. Measured at the paper grid (paper preset, 2 CPU threads, ``benchmarks/vae_memory.py``):
whole-volume decoding took 21 s and 1.9 GB peak RSS; 8 windows of (16, 20, 16) latent voxels with whole-volume
statistics 293 s and 1.35 GB (max error 2e-5 of the output's std); with per-window statistics 71 s and 1.2 GB,
but a max error of 0.29 std. Whole-volume decoding (``cfg.decode_roi = None``, the default) already fits the
4 GB goal; windows are for larger models or grids, or a small GPU.

Why not ``monai.inferers.SlidingWindowInferer``: it does support an output 4x larger than its input (it scales
the window coordinates by output/ROI size), but it upsamples its importance map with nearest-neighbour
interpolation (4³ blocks of equal weight), has no notion of decoding context that is thrown away, and every
window normalises with its own GroupNorm statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from itertools import pairwise, product

import torch
from torch import nn

from neuroldm.config import VAEConfig
from neuroldm.vae.network import check_grid, downsample_factor


def receptive_radius(fn: Callable, net: nn.Module, probe: torch.Tensor, coarse: int) -> int:
    """How far (in coarse = latent voxels, rounded up) an output voxel of `fn` can see, from its convolutions.

    Runs `fn` once on the small `probe` (whose coarse grid has `coarse` voxels per axis) with hooks on the
    ``nn.Conv3d`` layers of `net`, and adds up each convolution's reach in coarse units: ``(k // 2)·dilation``
    input voxels for a stride-1 convolution, ``(k - 1)·dilation`` for a strided one (MONAI pads those on one
    side), divided by the layer's resolution relative to the coarse grid. Windows with at least this much context
    are not affected by zero padding at their edges.
    """
    reach = 0.0

    def hook(conv: nn.Conv3d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal reach
        k, dil, stride = conv.kernel_size[0], conv.dilation[0], conv.stride[0]
        voxels = (k // 2) * dil if stride == 1 else (k - 1) * dil
        reach += voxels * coarse / inputs[0].shape[2]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv3d)]
    try:
        with torch.no_grad():
            fn(probe)
    finally:
        for h in handles:
            h.remove()
    return math.ceil(reach - 1e-9)


def window_starts(n: int, roi: int, overlap: float) -> list[int]:
    """Start indices of windows of size `roi` covering ``range(n)``, overlapping by at least ``ceil(overlap·roi)``.

    The starts are spread evenly from 0 to ``n - roi``, so every pair of neighbours overlaps by about as much.
    """
    if roi >= n:
        return [0]
    step = max(1, roi - math.ceil(overlap * roi))
    k = math.ceil((n - roi) / step) + 1
    return [round(i * (n - roi) / (k - 1)) for i in range(k)]


def _ramp(length: int, rise_start: int, rise_end: int, scale: int) -> torch.Tensor:
    """1D weights of one window core on the fine grid: sin² rises over the overlap with each neighbour.

    `rise_start` / `rise_end`: overlap widths (coarse voxels) with the previous / next window, 0 at the volume's edge.
    """
    w = torch.ones(length * scale, dtype=torch.float64)
    pos = torch.arange(length * scale, dtype=torch.float64) + 0.5  # voxel centres
    if rise_start > 0:
        r = rise_start * scale
        w = w * torch.where(pos < r, torch.sin(0.5 * math.pi * pos / r) ** 2, torch.ones_like(pos))
    if rise_end > 0:
        r = rise_end * scale
        d = length * scale - pos
        w = w * torch.where(d < r, torch.sin(0.5 * math.pi * d / r) ** 2, torch.ones_like(pos))
    return w


def _as_tuple(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _owned(starts: list[int], roi: int, n: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` among the windows at `starts`: each owns its core up to the middle of each overlap."""
    cuts = [0] + [(starts[i + 1] + starts[i] + roi) // 2 for i in range(len(starts) - 1)] + [n]
    return list(pairwise(cuts))


class _Stop(Exception):
    """Raised inside a forward pass once the GroupNorm being measured has seen its input."""


class _GlobalGroupNorm:
    """Makes every ``nn.GroupNorm`` of `net` normalise with whole-volume statistics during windowed passes.

    The statistics are measured one layer at a time, in execution order: a measuring pass runs every window up
    to the first GroupNorm whose statistics are still unknown (the ones before it already use whole-volume
    statistics), sums its input over the part of the volume the window owns (so every voxel counts once), and
    stops the window there. With the statistics of all layers known, each layer is local again, so a window with
    enough context reproduces the whole-volume activations exactly.
    """

    def __init__(self, net: nn.Module):
        self.norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.target: nn.Module | None = None
        self.sums: list = []
        self.owned: list[tuple[int, int]] = []  # per axis, coarse units, relative to the block
        self.block: list[int] = []  # block size per axis, coarse units
        self.exhausted = False

    def __enter__(self):
        for gn in self.norms:
            gn.forward = partial(self._forward, gn)  # instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc) -> None:
        for gn in self.norms:
            del gn.forward

    def done(self) -> bool:
        return self.exhausted or len(self.stats) == len(self.norms)

    def start_pass(self) -> None:
        self.target, self.sums = None, [0.0, 0.0, 0]

    def end_pass(self) -> None:
        if self.target is None:  # no unmeasured GroupNorm was reached (it is not on this path): finished
            self.exhausted = True
            return
        s, ss, n = self.sums
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0.0)  # biased, as GroupNorm
        self.stats[self.target] = (mean, var)

    def _forward(self, gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        b, g = x.shape[0], gn.num_groups
        if gn in self.stats:
            mean, var = self.stats[gn]
            xg = x.reshape(b, g, -1)
            y = ((xg - mean[..., None].to(x.dtype)) * torch.rsqrt(var[..., None].to(x.dtype) + gn.eps)).view_as(x)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return y * gn.weight.view(shape) + gn.bias.view(shape) if gn.affine else y
        if self.target is None:
            self.target = gn
        if gn is not self.target:  # cannot happen: a pass stops at its target
            raise RuntimeError("GroupNorm reached out of execution order")
        region = []
        for size, blk, (a, e) in zip(x.shape[2:], self.block, self.owned):
            scale = size // blk
            region.append(slice(a * scale, e * scale))
        xo = x[(..., *region)].reshape(b, g, -1).double()
        self.sums[0] = self.sums[0] + xo.sum(-1)
        self.sums[1] = self.sums[1] + (xo * xo).sum(-1)
        self.sums[2] += xo.shape[-1]
        raise _Stop


@torch.no_grad()
def _sliding(fn: Callable, net: nn.Module, x: torch.Tensor, grid: Sequence[int], roi: Sequence[int],
             overlap: float, context: int, in_scale: int, out_scale: int, norm_stats: str) -> tuple[torch.Tensor, ...]:
    """Run `fn` (whose GroupNorms live in `net`) on overlapping windows of `x`, defined on the coarse `grid`.

    A coarse voxel is `in_scale` voxels of `x` and `out_scale` voxels of `fn`'s output(s).
    """
    if norm_stats not in ("global", "window"):
        raise ValueError(f"norm_stats must be 'global' or 'window', got {norm_stats!r}")
    roi = [min(int(r), int(g)) for r, g in zip(roi, grid)]
    starts = [window_starts(g, r, overlap) for g, r in zip(grid, roi)]
    owned = [_owned(s, r, g) for s, r, g in zip(starts, roi, grid)]

    def windows():
        for idx in product(*(range(len(s)) for s in starts)):
            corner = [starts[a][i] for a, i in enumerate(idx)]
            lo = [max(0, s - context) for s in corner]
            hi = [min(g, s + r + context) for s, r, g in zip(corner, roi, grid)]
            src = x[(..., *(slice(a * in_scale, b * in_scale) for a, b in zip(lo, hi)))]
            yield idx, corner, lo, hi, src

    shared = _GlobalGroupNorm(net) if norm_stats == "global" else None
    with shared if shared is not None else nullcontext():
        while shared is not None and not shared.done():
            shared.start_pass()
            for idx, _, lo, hi, src in windows():
                shared.block = [h - a for h, a in zip(hi, lo)]
                shared.owned = [(owned[a][i][0] - lo[a], owned[a][i][1] - lo[a]) for a, i in enumerate(idx)]
                try:
                    fn(src)
                except _Stop:
                    pass
            shared.end_pass()

        outs: list[torch.Tensor] = []
        weight_sum = torch.zeros([int(g) * out_scale for g in grid], dtype=x.dtype, device=x.device)
        for idx, corner, lo, _, src in windows():
            result = _as_tuple(fn(src))
            core = tuple(slice((s - a) * out_scale, (s - a + r) * out_scale) for s, a, r in zip(corner, lo, roi))
            dest = tuple(slice(s * out_scale, (s + r) * out_scale) for s, r in zip(corner, roi))
            profiles = []
            for axis, (i, s, r) in enumerate(zip(idx, corner, roi)):
                st = starts[axis]
                before = st[i - 1] + r - s if i > 0 else 0
                after = s + r - st[i + 1] if i + 1 < len(st) else 0
                profiles.append(_ramp(r, before, after, out_scale))
            w = torch.einsum("i,j,k->ijk", *profiles).to(dtype=x.dtype, device=x.device)
            if not outs:
                outs = [torch.zeros((*t.shape[:2], *weight_sum.shape), dtype=t.dtype, device=x.device)
                        for t in result]
            for buf, t in zip(outs, result):
                buf[(..., *dest)] += t[(..., *core)] * w
            weight_sum[dest] += w
    return tuple(buf / weight_sum for buf in outs)


def sliding_window_decode(model: nn.Module, z: torch.Tensor, roi: Sequence[int], overlap: float = 0.25,
                          context: int | None = None, norm_stats: str = "global") -> torch.Tensor:
    """Decode a ``(B, C, d, h, w)`` latent to ``(B, 1, 4d, 4h, 4w)`` window by window, without gradients.

    `roi` is the latent core window ``(d, h, w)``; each decoded block is at most ``roi + 2·context`` latent voxels
    per axis, which is what bounds the memory. `context` defaults to the decoder's `receptive_radius` (6 latent
    voxels for the presets). `norm_stats`: "global" (whole-volume GroupNorm statistics: equal to whole-volume
    decoding up to float rounding) or "window" (each block's own: one pass, approximate); see the module docstring.
    """
    f = downsample_factor(model)
    if context is None:
        probe = torch.zeros(1, z.shape[1], 2, 2, 2, dtype=z.dtype, device=z.device)
        context = receptive_radius(model.decode, model.decoder, probe, coarse=2)
    return _sliding(model.decode, model.decoder, z, z.shape[2:], roi, overlap, context, in_scale=1, out_scale=f,
                    norm_stats=norm_stats)[0]


def sliding_window_encode(model: nn.Module, x: torch.Tensor, roi: Sequence[int], overlap: float = 0.25,
                          context: int | None = None, norm_stats: str = "global"
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mu, sigma)``, each ``(B, C, D/4, H/4, W/4)``, of a ``(B, 1, D, H, W)`` batch, window by window.

    `roi` and `context` are in latent voxels (`context` defaults to the encoder's `receptive_radius`, 7 for the
    presets), `norm_stats` as for `sliding_window_decode`; no gradients.
    """
    f = downsample_factor(model)
    check_grid(x.shape[2:], f)
    if context is None:
        probe = torch.zeros(1, x.shape[1], 2 * f, 2 * f, 2 * f, dtype=x.dtype, device=x.device)
        context = receptive_radius(model.encode, model.encoder, probe, coarse=2)
    grid = [s // f for s in x.shape[2:]]
    mu, sigma = _sliding(model.encode, model.encoder, x, grid, roi, overlap, context, in_scale=f, out_scale=1,
                         norm_stats=norm_stats)
    return mu, sigma


@torch.no_grad()
def decode_volume(model: nn.Module, z: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """``(B, 1, 4d, 4h, 4w)`` volumes of ``(B, C, d, h, w)`` latents: whole-volume decoding when
    ``cfg.decode_roi`` is None, otherwise exact sliding windows of that latent size with ``cfg.decode_overlap``."""
    if cfg.decode_roi is None:
        return model.decode(z)
    return sliding_window_decode(model, z, cfg.decode_roi, cfg.decode_overlap)


@torch.no_grad()
def encode_volume(model: nn.Module, x: torch.Tensor, cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mu, sigma)`` of a ``(B, 1, D, H, W)`` batch, whole or by windows of ``cfg.decode_roi``
    latent voxels (the same window bounds both directions)."""
    if cfg.decode_roi is None:
        check_grid(x.shape[2:], downsample_factor(model))
        return model.encode(x)
    return sliding_window_encode(model, x, cfg.decode_roi, cfg.decode_overlap)
