"""Conditional fidelity with a toy classifier that reads the class-1 blob."""

import numpy as np
import pytest
import torch
from evaluation_phantoms import brain

from neuroldm.evaluate.fidelity import conditional_fidelity
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic
from neuroldm.metrics.interval import Interval


def toy_predict(x: torch.Tensor) -> torch.Tensor:
    """P(TLE) high when the left blob region is dark (as `brain` makes class 1)."""
    score = x[:, 0, 4:8, 9:14, 8:12].mean(dim=(1, 2, 3))
    p1 = torch.sigmoid(-4 * score)
    return torch.stack([1 - p1, p1], 1)


def test_accuracy_per_requested_class(tmp_path):
    vols = [(brain(s, 0), 0) for s in range(4)] + [(brain(10 + s, 1), 1) for s in range(3)]
    vols.append((brain(20, 0), 1))  # requested TLE but looks HC: a miss
    paths = []
    for i, (v, _) in enumerate(vols):
        paths.append(str(tmp_path / f"v{i}.nii"))
        save_nifti_atomic(v, np.eye(4), paths[-1], what="test volume", frame=ALIGNED_ANAT)
    res = conditional_fidelity(toy_predict, paths, [y for _, y in vols], ["HC", "TLE"], batch_size=3)
    assert (res["per_class"]["HC"]["value"], res["per_class"]["HC"]["n"]) == (1.0, 4)
    assert (res["per_class"]["TLE"]["value"], res["per_class"]["TLE"]["n"]) == (0.75, 4)
    overall = Interval.from_dict(res)
    assert overall.value == pytest.approx(7 / 8) and overall.n == 8
    assert overall.low < 7 / 8 < overall.high and overall.method == "wilson"


def test_wrong_prediction_shape_is_refused(tmp_path):
    save_nifti_atomic(brain(0, 0), np.eye(4), tmp_path / "v.nii", what="test volume", frame=ALIGNED_ANAT)
    with pytest.raises(ValueError, match="predict returned shape"):
        conditional_fidelity(lambda x: torch.ones(len(x), 3) / 3, [str(tmp_path / "v.nii")], [0], ["HC", "TLE"])
