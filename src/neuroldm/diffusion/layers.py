"""Embeddings of the 3D DiT: patches, fixed 3D sin-cos positions, timesteps, class labels and covariates.

Follows DiT (Peebles & Xie 2023, ``models.py``) in 3D: the position embedding splits the channels in three and
gives each axis its own 1D sin-cos code, the timestep goes through a 256-d sinusoid and an MLP, and the class
table has one extra row, the null class, used for classifier-free guidance. Covariates (`diffusion.conditions`)
have their own embedders, each with a null entry (`CovariateEmbedder`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``(len(positions), dim)`` sin-cos code (first half sin, second half cos), frequencies 1/10000^(2i/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(positions.astype(np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d(dim: int, grid: Sequence[int]) -> np.ndarray:
    """Fixed position embedding of a token grid ``(D, H, W)``: ``(D·H·W, dim)``, row-major (W fastest).

    The channels are split in three even parts, one per axis (D, H, W in that order); when `dim` is not a
    multiple of 6 the first axis takes the remainder.
    """
    part = (dim // 3) // 2 * 2
    first = dim - 2 * part
    if first <= 0 or first % 2:
        raise ValueError(f"hidden size {dim} cannot be split into three even sin-cos parts")
    d, h, w = (np.arange(n, dtype=np.float64) for n in grid)
    dd, hh, ww = np.meshgrid(d, h, w, indexing="ij")
    return np.concatenate([sincos_1d(first, dd), sincos_1d(part, hh), sincos_1d(part, ww)], axis=1)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches to tokens, with zero padding when an axis is not a multiple of the patch size.

    ``forward(x) -> (tokens (B, N, hidden), token grid (D', H', W'))``; `pad` is the padding at the end of each
    axis, so the final layer can crop the output back to the input size.
    """

    def __init__(self, in_channels: int, hidden: int, patch: Sequence[int], input_size: Sequence[int]):
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.input_size = tuple(int(s) for s in input_size)
        self.pad = tuple((-s) % p for s, p in zip(self.input_size, self.patch))
        self.grid = tuple((s + q) // p for s, q, p in zip(self.input_size, self.pad, self.patch))
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=self.patch, stride=self.patch)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected latents of spatial size {self.input_size}, got {tuple(x.shape[2:])}")
        if any(self.pad):
            # F.pad takes (W_before, W_after, H_before, H_after, D_before, D_after)
            x = F.pad(x, (0, self.pad[2], 0, self.pad[1], 0, self.pad[0]))
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar diffusion timesteps to vectors: 256-d sinusoid ([cos, sin], max period 10000), then an MLP."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(emb, (0, dim % 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels to vectors; index `num_classes` is the null class (no condition).

    In training, each label is replaced by the null class with probability `dropout` (classifier-free guidance
    training); `force_drop` (a bool mask) drops chosen labels, for tests and for guidance at sampling time.
    """

    def __init__(self, num_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.table = nn.Embedding(num_classes + int(dropout > 0), hidden)

    @property
    def null_class(self) -> int:
        if self.dropout <= 0:
            raise ValueError("this model was trained without label dropout, so it has no null class for guidance")
        return self.num_classes

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop is not None:
            labels = torch.where(force_drop, torch.full_like(labels, self.null_class), labels)
        elif self.training and self.dropout > 0:
            labels = torch.where(self.training_drop(labels), torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)

    def training_drop(self, labels: torch.Tensor) -> torch.Tensor:
        """The training dropout's draw: which of `labels` become the null class."""
        return torch.rand(labels.shape[0], device=labels.device) < self.dropout


class CovariateEmbedder(nn.Module):
    """Covariates ``(B, K)`` (`neuroldm.diffusion.conditions.encode`: NaN = null) to one vector ``(B, hidden)``, the
    sum of one embedding per condition, each with a learned null embedding.

    A continuous value in [0, 1] goes through fixed Fourier features ``sin/cos(2^k·π·x)``, k < `frequencies`
    (Tancik et al. 2020), and a two-layer MLP, as the timestep does: a scalar fed straight into a linear layer can
    only move the conditioning vector along one line, so the effect of age would be linear; the features let a
    small MLP bend it (e.g. atrophy speeding up late in life) while the lowest frequency keeps neighbouring ages
    close. The highest frequency resolves 1/2^frequencies of the range (2 years over 0-100 at 6). A categorical
    value indexes a table with one extra row, the null level, as the class table does.

    In training each condition is replaced by null with probability `dropout`, independently of the others, so
    any of them can be left unspecified at sampling; `force_drop` (a bool mask ``(B,)``) nulls every condition of
    the chosen rows (the class label's dropout and classifier-free guidance's unconditional branch).
    """

    def __init__(self, kinds: Sequence[int], hidden: int, dropout: float, frequencies: int = 6):
        """`kinds`: per condition, 0 for continuous or its number of levels (categorical)."""
        super().__init__()
        self.kinds, self.dropout = [int(k) for k in kinds], dropout
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32),
                             persistent=False)
        self.embedders = nn.ModuleList()
        for levels in self.kinds:
            if levels:
                self.embedders.append(nn.Embedding(levels + 1, hidden))
            else:
                self.embedders.append(nn.ModuleDict({
                    "mlp": nn.Sequential(nn.Linear(2 * frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden)),
                    "null": nn.Embedding(1, hidden)}))

    def forward(self, values: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        null = torch.isnan(values)
        if force_drop is not None:
            null = null | force_drop[:, None]
        if self.training and self.dropout > 0:
            null = null | (torch.rand(values.shape, device=values.device) < self.dropout)
        out = 0
        for k, (levels, emb) in enumerate(zip(self.kinds, self.embedders)):
            drop, v = null[:, k], values[:, k]
            if levels:
                idx = torch.where(drop, torch.full_like(v, levels), torch.nan_to_num(v)).long()
                out = out + emb(idx)
            else:
                x = torch.nan_to_num(v).float()[:, None] * self.freqs[None]
                feats = torch.cat([torch.sin(x), torch.cos(x)], dim=-1).to(emb["null"].weight.dtype)
                out = out + torch.where(drop[:, None], emb["null"].weight[0].expand(v.shape[0], -1), emb["mlp"](feats))
        return out
