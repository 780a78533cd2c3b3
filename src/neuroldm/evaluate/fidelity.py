"""Conditional fidelity: does a classifier trained on real data see the requested class in each synthetic volume?

The classifier enters as a callable ``predict(volumes) -> probabilities``: ``(B, 1, D, H, W)`` float tensor in,
``(B, n_classes)`` out (rows sum to 1). ``neuroldm.classify.predict`` provides one from a trained run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.metrics.interval import wilson_interval

Predict = Callable[[torch.Tensor], torch.Tensor]


def conditional_fidelity(predict: Predict, paths: list[str], labels: list[int], classes: list[str],
                         batch_size: int = 4) -> dict:
    """Accuracy of `predict` against the requested labels, with the mean probability given to the requested class.

    Returns the overall accuracy as a Wilson 95 % interval (`neuroldm.metrics.interval.Interval`; Wilson 1927)
    ``{"value", "low", "high", "n", "method", "level", "mean_p_requested", "per_class"}``, and in ``per_class``
    the same per requested class (without ``per_class``).
    """
    probs = []
    for s in range(0, len(paths), batch_size):
        x = torch.stack([torch.from_numpy(load_prepared_volume(p))[None] for p in paths[s:s + batch_size]])
        with torch.no_grad():
            p = predict(x)
        if p.shape != (len(x), len(classes)):
            raise ValueError(f"predict returned shape {tuple(p.shape)}, expected {(len(x), len(classes))}")
        probs.append(p.detach().float().cpu().numpy())
    prob = np.concatenate(probs)
    y = np.asarray(labels, int)
    hit = prob.argmax(1) == y
    per_class = {}
    for c, name in enumerate(classes):
        m = y == c
        if m.any():
            per_class[name] = wilson_interval(int(hit[m].sum()), int(m.sum())).to_dict(
                mean_p_requested=float(prob[m, c].mean()))
    return wilson_interval(int(hit.sum()), len(y)).to_dict(
        mean_p_requested=float(prob[np.arange(len(y)), y].mean()), per_class=per_class)
