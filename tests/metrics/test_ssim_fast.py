import pytest
import torch
from monai.losses import SSIMLoss
from monai.metrics import SSIMMetric

from neuroldm.metrics.ssim_fast import gaussian_window, ssim_loss, ssim_map


@pytest.mark.parametrize("win", [11, 7])
def test_separable_ssim_equals_monai(win):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 20, 18, generator=g)
    y = x + 0.5 * torch.randn(x.shape, generator=g)
    ours = ssim_map(y, x, data_range=4.0, win_size=win).mean(dim=(1, 2, 3, 4))
    ref = SSIMMetric(spatial_dims=3, data_range=4.0, win_size=win)(y, x).flatten()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    loss_ref = SSIMLoss(spatial_dims=3, data_range=4.0, win_size=win)(y, x)
    torch.testing.assert_close(ssim_loss(y, x, 4.0, win_size=win), loss_ref, rtol=1e-5, atol=1e-6)


def test_identical_volumes_have_ssim_one_and_gradients_flow():
    x = torch.rand(1, 1, 12, 12, 12)
    y = x.clone().requires_grad_()
    loss = ssim_loss(y, x, 1.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    ssim_loss(y + 0.1 * torch.rand_like(y), x, 1.0).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert float(w.sum()) == pytest.approx(1.0) and torch.equal(w, w.flip(0)) and int(w.argmax()) == 5
