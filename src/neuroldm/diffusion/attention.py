"""Multi-head self-attention over a 3D token grid: global, or within 3D windows (optionally shifted).

Window attention (Swin, Liu et al. 2021; DiT-3D, Mo et al. 2023) splits the ``(D, H, W)`` token grid into
``wd×wh×ww`` windows and attends within each, so the cost grows with the number of tokens instead of its square.
Shifted windows move the partition by half a window so information crosses window borders from block to block.

Padding: a grid that is not a whole number of windows (17 tokens along H at the paper size) is padded with zero
tokens, and the padding is **masked out of attention** (keys only; padded queries are computed and dropped).
A shift pads half a window at the start of each axis instead of rolling the grid cyclically, so no window mixes
tokens from opposite borders and Swin's extra cyclic mask is not needed. Every window keeps at least one real
token per axis (the padding before and after is less than a window), so no softmax row is fully masked.

Attention itself is `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU;
the mask-free path is taken whenever a layout needs no padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def window_layout(grid: Sequence[int], window: Sequence[int], shift: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padding ``(before, after)`` per axis for partitioning `grid` into `window`-sized windows.

    A window no larger than the grid is cut to the grid (a 4-token window on a 3-token axis becomes 3).
    """
    before, after = [], []
    for g, w in zip(grid, window):
        w = min(w, g)
        b = w // 2 if shift else 0
        before.append(b)
        after.append((-(g + b)) % w)
    return tuple(before), tuple(after)


class Attention(nn.Module):
    """Multi-head self-attention on tokens ``(B, N, C)`` laid out on `grid` (row-major, W fastest).

    `window` None is global attention; otherwise attention within windows of that many tokens per axis,
    shifted by half a window when `shift`.
    """

    def __init__(self, dim: int, heads: int, grid: Sequence[int], window: Sequence[int] | None = None,
                 shift: bool = False, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.grid = heads, tuple(int(g) for g in grid)
        self.window = tuple(min(int(w), g) for w, g in zip(window, self.grid)) if window else None
        self.shift = bool(shift and self.window and any(w > 1 for w in self.window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if self.window is not None:
            self._before, self._after = window_layout(self.grid, self.window, self.shift)
            padded = [g + b + a for g, b, a in zip(self.grid, self._before, self._after)]
            valid = F.pad(torch.ones(1, 1, *self.grid), _pad_arg(self._before, self._after))
            self._padded = padded
            mask = self._partition(valid.permute(0, 2, 3, 4, 1), padded)[..., 0] > 0  # (windows, tokens)
            self.register_buffer("key_mask", None if bool(mask.all()) else mask, persistent=False)

    @property
    def keys_per_query(self) -> int:
        """Keys each query attends to, padding included: what sets the attention cost per token."""
        n = self.window if self.window is not None else self.grid
        return n[0] * n[1] * n[2]

    def _partition(self, x: torch.Tensor, padded: Sequence[int]) -> torch.Tensor:
        """``(B, D', H', W', C)`` -> ``(B·windows, window tokens, C)``."""
        b, c = x.shape[0], x.shape[-1]
        (nd, nh, nw), (wd, wh, ww) = (p // w for p, w in zip(padded, self.window)), self.window
        x = x.reshape(b, nd, wd, nh, wh, nw, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b * nd * nh * nw, wd * wh * ww, c)

    def _merge(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Inverse of `_partition`: ``(B·windows, window tokens, C)`` -> ``(B, D', H', W', C)``."""
        (nd, nh, nw), (wd, wh, ww) = (p // w for p, w in zip(self._padded, self.window)), self.window
        x = x.reshape(b, nd, nh, nw, wd, wh, ww, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(b, nd * wd, nh * wh, nw * ww, -1)

    def _attend(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention within each row of `x` ``(N, T, C)``; `key_mask` ``(N, T)`` is True for keys to use."""
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return self._attend(x, None)
        b, _, c = x.shape
        grid = x.reshape(b, *self.grid, c)
        if any(self._before) or any(self._after):
            grid = F.pad(grid.permute(0, 4, 1, 2, 3), _pad_arg(self._before, self._after)).permute(0, 2, 3, 4, 1)
        # windows are ordered sample-major, so the per-window mask repeats once per sample
        mask = None if self.key_mask is None else self.key_mask.repeat(b, 1)
        out = self._merge(self._attend(self._partition(grid, self._padded), mask), b)
        (bd, bh, bw), (gd, gh, gw) = self._before, self.grid
        return out[:, bd:bd + gd, bh:bh + gh, bw:bw + gw].reshape(b, -1, c)


def _pad_arg(before: Sequence[int], after: Sequence[int]) -> tuple[int, ...]:
    """`F.pad` argument for the last three axes of a channels-first tensor (W first)."""
    return (before[2], after[2], before[1], after[1], before[0], after[0])
