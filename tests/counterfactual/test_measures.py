"""What one counterfactual changed: each measure against an independent reference or a case it must get right."""

import math

import numpy as np
import pytest
import torch

from neuroldm.classify.saliency import roi_enrichment
from neuroldm.counterfactual.measures import (lateralisation, lesion_label, measure, psnr_outside_roi,
                                              ssim_outside_roi)
from neuroldm.metrics.image import psnr, ssim

SHAPE = (24, 28, 24)


def _volume(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(SHAPE) - (np.array(SHAPE) / 2)[:, None, None, None]
    brain = ((x / 9) ** 2 + (y / 11) ** 2 + (z / 9) ** 2 < 1).astype(np.float32)
    return brain + rng.normal(0, 0.1, SHAPE).astype(np.float32)


def _roi() -> np.ndarray:
    roi = np.zeros(SHAPE, np.int64)
    roi[6:9, 12:16, 10:13] = 1  # left
    roi[15:18, 12:16, 10:13] = 2  # right
    return roi


def _t(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(v)[None, None]


def test_without_an_roi_ssim_and_psnr_are_monais_over_the_whole_volume():
    a, b = _volume(0), _volume(1)
    assert ssim_outside_roi(a, b, None) == pytest.approx(float(ssim(_t(a), _t(b))[0]), abs=1e-5)
    assert psnr_outside_roi(a, b, None) == pytest.approx(float(psnr(_t(a), _t(b))[0]), abs=1e-4)


def test_a_change_inside_the_roi_leaves_the_voxels_outside_it_alone():
    ref, roi = _volume(0), _roi()
    changed = ref + 2.0 * (roi > 0)
    assert psnr_outside_roi(changed, ref, roi) == math.inf
    # SSIM windows centred just outside the ROI still see it: outside is better than whole, not perfect
    assert ssim_outside_roi(changed, ref, roi) > ssim_outside_roi(changed, ref, None)
    assert ssim_outside_roi(ref, ref, roi) == pytest.approx(1.0, abs=1e-6)


def test_lateralisation_is_the_heavier_sides_share():
    roi = _roi()
    assert lateralisation(np.where(roi == 1, -1.0, 0.0), roi) == 1.0
    assert lateralisation(np.where(roi > 0, 0.5, 0.0), roi) == pytest.approx(0.5)
    assert math.isnan(lateralisation(np.zeros(SHAPE), roi))
    assert math.isnan(lateralisation(np.ones(SHAPE), np.where(roi == 2, 0, roi)))  # one side only


def test_the_lesion_side_is_the_recorded_one_else_the_smaller_hippocampus():
    roi = _roi()
    roi[15, 12:16, 10:13] = 0  # the right one is smaller
    assert lesion_label(roi) == (2, "smaller hippocampus")
    assert lesion_label(roi, "Left") == (1, "side column")
    assert lesion_label(np.where(roi == 2, 0, roi))[0] is None


def test_measure_reports_the_saliency_enrichment_and_the_lesion_side_change():
    ref, roi = _volume(0), _roi()
    cf = ref + 0.8 * (roi == 1) + 0.1 * (roi == 2) + np.random.default_rng(2).normal(0, 0.01, SHAPE)
    m = measure(cf, ref, roi, side="left")
    assert m["enrichment"] == roi_enrichment(cf - ref, roi)["enrichment"] and m["enrichment"] > 5
    assert m["lesion_change"] == pytest.approx(0.8, abs=0.01) and m["contralateral_change"] == pytest.approx(0.1,
                                                                                                             abs=0.01)
    assert m["lesion_side_from"] == "side column" and m["lateralisation"] == pytest.approx(0.89, abs=0.01)
    assert set(measure(cf, ref, None)) == {"ssim_outside_roi", "psnr_outside_roi", "mean_abs_difference"}
