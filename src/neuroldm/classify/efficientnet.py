"""A true 3D EfficientNetV2 (Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021).

Written here because MONAI ships only EfficientNet V1 (`monai.networks.nets.EfficientNetBN`, MBConv blocks
``efficientnet-b0`` … ``b8``/``l2``) and has no Fused-MBConv. The seed system used torchvision's 2D V2-L with its
115 coronal slices as input channels; here every convolution is 3D.

- **Fused-MBConv** (early stages): a full 3×3×3 convolution does the expansion (and the stride), then a 1×1×1
  projection; with expansion 1 it is a single 3×3×3 convolution.
- **MBConv** (later stages): 1×1×1 expansion, 3×3×3 depthwise convolution, squeeze-and-excitation (reduced to
  ``se_ratio`` × the block's *input* channels, as in the official code), 1×1×1 projection.
- **Stochastic depth** (Huang et al. 2016): each residual branch is dropped per sample with a rate that grows
  linearly from 0 at the first block to ``stochastic_depth`` at the last; kept branches are scaled by
  ``1 / (1 - rate)`` so eval mode (the identity) needs no rescaling.
- **Gradient checkpointing** (``grad_checkpointing``): in training, each block keeps only its input and recomputes
  its inside (the expanded activations, four to six times the block's width) in the backward pass. The recomputation
  draws the same stochastic-depth masks (the RNG state is replayed) and does not update the BatchNorm running
  statistics a second time (`_checkpoint_contexts`), so loss, gradients and running statistics are those of a
  network without it.

Presets: ``s`` is Table 4 of the paper. ``m`` and ``l`` are not tabulated in the paper; their stage tables are
those of the official implementation (``effnetv2_configs.py`` in google/automl, also used by torchvision).
``tiny`` keeps the V2 layout (three Fused-MBConv stages, then MBConv+SE, 32× downsampling) at a width and depth
a CPU trains in minutes. With 3D kernels every 3×3 convolution has 3× the weights of its 2D counterpart, so
the parameter counts are larger than the paper's 2D ones (see ``tests/classify/test_efficientnet.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: ``layers`` blocks of one kind, the first with ``stride``."""

    block: Literal["fused", "mbconv"]
    expand: int
    stride: int
    channels: int
    layers: int
    se_ratio: float = 0.0  # squeeze-excitation width as a fraction of the block's input channels; 0: none
    kernel: int = 3


@dataclass(frozen=True)
class Preset:
    stem: int
    stages: tuple[Stage, ...]
    head: int = 1280


F, M = "fused", "mbconv"
PRESETS: dict[str, Preset] = {
    # Table 4 of the paper (EfficientNetV2-S)
    "s": Preset(24, (Stage(F, 1, 1, 24, 2), Stage(F, 4, 2, 48, 4), Stage(F, 4, 2, 64, 4),
                     Stage(M, 4, 2, 128, 6, 0.25), Stage(M, 6, 1, 160, 9, 0.25), Stage(M, 6, 2, 256, 15, 0.25))),
    # google/automl efficientnetv2 'efficientnetv2-m' / 'efficientnetv2-l' block strings
    "m": Preset(24, (Stage(F, 1, 1, 24, 3), Stage(F, 4, 2, 48, 5), Stage(F, 4, 2, 80, 5),
                     Stage(M, 4, 2, 160, 7, 0.25), Stage(M, 6, 1, 176, 14, 0.25), Stage(M, 6, 2, 304, 18, 0.25),
                     Stage(M, 6, 1, 512, 5, 0.25))),
    "l": Preset(32, (Stage(F, 1, 1, 32, 4), Stage(F, 4, 2, 64, 7), Stage(F, 4, 2, 96, 7),
                     Stage(M, 4, 2, 192, 10, 0.25), Stage(M, 6, 1, 224, 19, 0.25), Stage(M, 6, 2, 384, 25, 0.25),
                     Stage(M, 6, 1, 640, 7, 0.25))),
    # CPU-sized, same layout
    "tiny": Preset(16, (Stage(F, 1, 1, 16, 1), Stage(F, 4, 2, 24, 1), Stage(F, 4, 2, 32, 1),
                        Stage(M, 4, 2, 64, 2, 0.25), Stage(M, 6, 1, 80, 1, 0.25), Stage(M, 6, 2, 128, 1, 0.25)),
                   head=256),
}


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm as in the paper; GroupNorm (up to 8 groups) for the batch sizes a 3D volume allows on a CPU."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}; use 'batch' or 'group'")


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, norm: str = "batch",
                  act: bool = True) -> nn.Sequential:
    layers = [nn.Conv3d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
              norm_layer(norm, cout)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class StochasticDepth(nn.Module):
    """Drop the whole residual branch of a sample with probability `rate` in training; identity in eval."""

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.reduce = nn.Conv3d(channels, reduced, 1)
        self.expand = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(nn.functional.silu(self.reduce(self.pool(x))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Fused-MBConv (``fused=True``) or MBConv with squeeze-excitation; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, kernel: int, se_ratio: float,
                 fused: bool, drop: float, norm: str):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if fused:
            if expand == 1:
                layers.append(conv_norm_act(cin, cout, kernel, stride, norm=norm))
            else:
                layers += [conv_norm_act(cin, mid, kernel, stride, norm=norm),
                           conv_norm_act(mid, cout, 1, norm=norm, act=False)]
        else:
            if expand != 1:
                layers.append(conv_norm_act(cin, mid, 1, norm=norm))
            layers.append(conv_norm_act(mid, mid, kernel, stride, groups=mid, norm=norm))
            if se_ratio > 0:
                layers.append(SqueezeExcite(mid, max(1, int(cin * se_ratio))))
            layers.append(conv_norm_act(mid, cout, 1, norm=norm, act=False))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = StochasticDepth(drop) if self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.drop(out) if self.residual else out


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module):
    """BatchNorm layers of `module` normalise with the batch's statistics as in training, and leave their running
    statistics and batch counter as they were: for the recomputation of a checkpointed block, whose first pass
    updated them. Momentum 0 makes the update ``1·running + 0·batch``, exactly the old value (the layers still
    receive their running statistics, so the recomputation saves the same tensors as the first pass did)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _checkpoint_contexts(module: nn.Module):
    """`torch.utils.checkpoint.checkpoint`'s ``context_fn``: nothing around the first pass, frozen BatchNorm
    statistics around the recomputation."""
    return contextlib.nullcontext(), _running_stats_frozen(module)


class EfficientNetV2(nn.Module):
    """``forward((B, C, D, H, W)) -> (B, num_classes)`` logits.

    Five stride-2 steps (stem and four stages) downsample by 32; any input size of at least 32 per axis works
    (global average pooling before the classifier).
    """

    def __init__(self, preset: str | Preset = "s", in_channels: int = 1, num_classes: int = 2,
                 dropout: float = 0.2, stochastic_depth: float = 0.2, norm: str = "batch",
                 grad_checkpointing: bool = False):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        cfg = PRESETS[preset] if isinstance(preset, str) else preset
        self.stem = conv_norm_act(in_channels, cfg.stem, 3, stride=2, norm=norm)
        total = sum(s.layers for s in cfg.stages)
        blocks, cin, k = [], cfg.stem, 0
        for stage in cfg.stages:
            for i in range(stage.layers):
                blocks.append(MBConv(cin, stage.channels, stage.expand, stage.stride if i == 0 else 1, stage.kernel,
                                     stage.se_ratio, stage.block == "fused", stochastic_depth * k / total, norm))
                cin, k = stage.channels, k + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_norm_act(cin, cfg.head, 1, norm=norm)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg.head, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # the official initialisation: He-normal (fan-out) convolutions, uniform(±1/sqrt(out)) classifier
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W) -> (B, head)`` pooled features."""
        x = self.stem(x)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False, context_fn=partial(_checkpoint_contexts, block))
        else:
            x = self.blocks(x)
        return self.pool(self.head(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
