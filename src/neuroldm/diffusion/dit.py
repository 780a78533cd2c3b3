"""Class-conditional 3D Diffusion Transformer (DiT) with window attention, over VAE latents ``(B, C, D, H, W)``.

Written here because MONAI 1.6 has no DiT. It follows DiT (Peebles & Xie 2023): patchify, fixed sin-cos
positions, adaLN-Zero blocks conditioned on timestep + class (+ covariates, `diffusion.conditions`: their
embeddings are summed into the conditioning vector as the class's is), a zero-initialised final layer that
unpatchifies;
in 3D, with per-axis patch sizes, padding for axes that are not a multiple of the patch (34 at the paper size)
and cropping on output, and attention within 3D windows (`neuroldm.diffusion.attention`), shifted every other
block, optionally interleaved with global blocks (as DiT-3D does), so window attention is used, not just offered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from neuroldm.diffusion.attention import Attention
from neuroldm.diffusion.layers import CovariateEmbedder, LabelEmbedder, PatchEmbed3D, TimestepEmbedder, sincos_3d


@dataclass(frozen=True)
class DiTSize:
    depth: int
    hidden: int
    heads: int
    patch: int


# DiT's table (models.py): S 12/384/6, B 12/768/12, L 24/1024/16, XL 28/1152/16; "/p" is the patch size
DIT_MODELS: dict[str, DiTSize] = {
    f"DiT-{name}/{p}": DiTSize(depth, hidden, heads, p)
    for name, (depth, hidden, heads) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                         "XL": (28, 1152, 16)}.items()
    for p in (2, 4, 8)
}
DIT_MODELS["demo"] = DiTSize(depth=6, hidden=128, heads=4, patch=2)  # trains on 2 CPU cores in minutes
DIT_MODELS["tiny"] = DiTSize(depth=2, hidden=48, heads=2, patch=1)  # smoke tests


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: the conditioning vector sets shift, scale and gate of both sub-layers."""

    def __init__(self, hidden: int, heads: int, grid: Sequence[int], window: Sequence[int] | None, shift: bool,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, grid, window, shift)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(hidden * mlp_ratio), hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: Sequence[int], out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, math.prod(patch) * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT3D(nn.Module):
    """3D DiT. ``forward(x (B, C, D, H, W), t (B,), y (B,) long, covariates (B, K)) -> (B, C, D, H, W)``, the
    epsilon or v prediction; `covariates` (`neuroldm.diffusion.conditions.encode`, NaN = null) only when built with
    `conditions` (``(name, levels)`` per condition, levels 0 for a continuous one).

    Without conditions the network is the class-conditional DiT of before, parameter for parameter and draw for
    draw of the random generator. With them, training drops the class label with probability `class_dropout` and
    drops the covariates of those rows with it, so the fully unconditional model that guidance needs is trained as
    often as before; on the other rows each covariate is dropped independently with the same probability, so any
    of them can be left null at sampling (`CovariateEmbedder`).

    Attention layout per block: `window` (tokens per axis) None means every block is global; otherwise block i
    uses windows, shifted when i is odd (if `shift_windows`), except that every `global_every`-th block
    (i % global_every == global_every - 1) is global.
    """

    def __init__(self, input_size: Sequence[int], in_channels: int, num_classes: int, *, depth: int, hidden: int,
                 heads: int, patch: Sequence[int], window: Sequence[int] | None = None, shift_windows: bool = True,
                 global_every: int = 0, mlp_ratio: float = 4.0, class_dropout: float = 0.1,
                 grad_checkpointing: bool = False, conditions: Sequence[tuple[str, int]] = ()):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.out_channels = in_channels  # the prediction (epsilon or v) only: variances are fixed by the schedule
        self.input_size = tuple(int(s) for s in input_size)
        self.patch = tuple(int(p) for p in patch)
        self.grad_checkpointing = grad_checkpointing
        self.x_embedder = PatchEmbed3D(in_channels, hidden, self.patch, self.input_size)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden, class_dropout)
        self.conditions = [(str(n), int(k)) for n, k in conditions]
        # no module at all without conditions: the parameters and the random draws stay those of before
        self.c_embedder = CovariateEmbedder([k for _, k in self.conditions], hidden, class_dropout) \
            if self.conditions else None
        grid = self.x_embedder.grid
        self.register_buffer("pos_embed", torch.from_numpy(sincos_3d(hidden, grid)).float()[None], persistent=False)
        self.layout = [self._block_layout(i, window, shift_windows, global_every) for i in range(depth)]
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, grid, win, shift, mlp_ratio)
                                     for win, shift in self.layout])
        self.final_layer = FinalLayer(hidden, self.patch, self.out_channels)
        self.initialize_weights()

    @staticmethod
    def _block_layout(i: int, window, shift_windows: bool, global_every: int):
        if window is None or (global_every and i % global_every == global_every - 1):
            return None, False
        return tuple(window), bool(shift_windows and i % 2 == 1)

    def initialize_weights(self) -> None:
        """DiT's init: Xavier linears, zero biases; adaLN modulations and the output layer start at zero."""
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for emb in self.c_embedder.embedders if self.c_embedder is not None else ():
            nn.init.normal_(emb.weight if isinstance(emb, nn.Embedding) else emb["null"].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, p_d·p_h·p_w·C)`` -> ``(B, C, D, H, W)``, cropping the patch padding."""
        b = x.shape[0]
        (gd, gh, gw), (pd, ph, pw), c = self.x_embedder.grid, self.patch, self.out_channels
        x = x.reshape(b, gd, gh, gw, pd, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(b, c, gd * pd, gh * ph, gw * pw)
        d, h, w = self.input_size
        return x[:, :, :d, :h, :w]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, force_drop: torch.Tensor | None = None,
                covariates: torch.Tensor | None = None) -> torch.Tensor:
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.condition(y, force_drop, covariates)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))

    def condition(self, y: torch.Tensor, force_drop: torch.Tensor | None,
                  covariates: torch.Tensor | None) -> torch.Tensor:
        """The class embedding (+ the covariates' sum) ``(B, hidden)``; `force_drop` nulls class and covariates."""
        if self.c_embedder is None:
            if covariates is not None and covariates.shape[-1]:
                raise ValueError("this model was trained without conditions; it takes no covariates")
            return self.y_embedder(y, force_drop)
        if covariates is None:  # nothing given: every condition null
            covariates = torch.full((y.shape[0], len(self.conditions)), float("nan"), device=y.device)
        if covariates.shape != (y.shape[0], len(self.conditions)):
            raise ValueError(f"expected covariates of shape {(y.shape[0], len(self.conditions))} for conditions "
                             f"{[n for n, _ in self.conditions]}, got {tuple(covariates.shape)}")
        if force_drop is None and self.training and self.y_embedder.dropout > 0:
            force_drop = self.y_embedder.training_drop(y)  # the label's draw, shared with the covariates
        return self.y_embedder(y, force_drop) + self.c_embedder(covariates, force_drop)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: float,
                         covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier-free guidance on **all** output channels: ``uncond + g·(cond − uncond)``; g = 1 is plain.

        The conditional branch takes the class and every given covariate; the unconditional one nulls all of them,
        so guidance pushes towards the whole request (class and demographics) at once, the model that the class
        dropout trains as often as before (one guidance scale; per-condition scales are not offered).
        """
        if guidance == 1.0:
            return self(x, t, y, covariates=covariates)
        cov2 = None if covariates is None else torch.cat([covariates, covariates])
        both = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]),
                    force_drop=torch.cat([torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)]),
                    covariates=cov2)
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)


def build_dit(model: str, input_size: Sequence[int], in_channels: int, num_classes: int, *,
              patch: Sequence[int] | None = None, window: Sequence[int] | None = None, shift_windows: bool = True,
              global_every: int = 0, class_dropout: float = 0.1, grad_checkpointing: bool = False,
              conditions: Sequence[tuple[str, int]] = (), **overrides) -> DiT3D:
    """A `DIT_MODELS` size (e.g. ``"DiT-S/4"``); `patch` overrides the size's cubic patch per axis."""
    if model not in DIT_MODELS:
        raise ValueError(f"unknown DiT model '{model}'; choose from {', '.join(DIT_MODELS)}")
    size = DIT_MODELS[model]
    kw = {"depth": size.depth, "hidden": size.hidden, "heads": size.heads, **overrides}
    return DiT3D(input_size, in_channels, num_classes, patch=tuple(patch) if patch else (size.patch,) * 3,
                 window=window, shift_windows=shift_windows, global_every=global_every,
                 class_dropout=class_dropout, grad_checkpointing=grad_checkpointing, conditions=conditions, **kw)
