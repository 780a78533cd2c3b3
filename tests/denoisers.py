"""Models for the diffusion tests: the exact denoiser of a point mass, and a tiny DiT with seeded weights."""

import torch

from neuroldm.diffusion.dit import build_dit
from neuroldm.diffusion.process import training_scheduler

SHAPE = (2, 4, 4, 4)  # (C, d, h, w)
T = 50  # training timesteps: DDPM runs all of them, so few keep it fast; beta_end 0.2 ends near pure noise


def tiny_model() -> torch.nn.Module:
    """A tiny DiT whose every weight is seeded and non-zero (adaLN-Zero alone would make its output zero)."""
    torch.manual_seed(0)
    m = build_dit("tiny", SHAPE[1:], SHAPE[0], 2, patch=(2, 2, 2), window=None, class_dropout=0.1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


class Oracle(torch.nn.Module):
    """The exact denoiser of a point mass at `target`: its epsilon or v for any x_t."""

    def __init__(self, target, cfg):
        super().__init__()
        self.target, self.cfg = target, cfg
        self.ac = training_scheduler(cfg).alphas_cumprod

    def forward(self, x, t, y, force_drop=None):
        a = self.ac[t].view(-1, 1, 1, 1, 1).to(x.dtype)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        return eps if self.cfg.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.target

    def forward_with_cfg(self, x, t, y, guidance):
        return self(x, t, y)
