"""Window attention against a reference that attends window by window over the real tokens only."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from neuroldm.diffusion.attention import Attention, window_layout


def reference(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Loop over windows; each query attends to the real tokens of its window (no padding at all)."""
    b, n, c = x.shape
    gd, gh, gw = attn.grid
    before = window_layout(attn.grid, attn.window, attn.shift)[0]
    coords = list(itertools.product(range(gd), range(gh), range(gw)))
    # window id of a token: floor((coord + shift) / window) per axis
    wid = [tuple((p + s) // w for p, s, w in zip(co, before, attn.window)) for co in coords]
    out = torch.zeros_like(x)
    h = attn.heads
    for w in set(wid):
        idx = torch.tensor([i for i, v in enumerate(wid) if v == w])
        q, k, v = attn.qkv(x[:, idx]).reshape(b, len(idx), 3, h, c // h).permute(2, 0, 3, 1, 4)
        y = F.softmax(q @ k.transpose(-1, -2) / (c // h) ** 0.5, dim=-1) @ v
        out[:, idx] = attn.proj(y.transpose(1, 2).reshape(b, len(idx), c))
    return out


@pytest.mark.parametrize("grid,window,shift", [((4, 6, 4), (2, 3, 2), False),   # whole windows, no padding
                                               ((5, 7, 3), (2, 3, 2), False),   # padding at the end
                                               ((5, 7, 3), (2, 3, 2), True),    # shifted: padding at both ends
                                               ((3, 4, 5), (4, 4, 4), True)])   # window cut to the grid
def test_window_attention_equals_per_window_reference(grid, window, shift):
    torch.manual_seed(0)
    attn = Attention(16, 2, grid, window, shift).eval()
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 16)
    torch.testing.assert_close(attn(x), reference(attn, x), rtol=1e-4, atol=1e-5)


def test_window_covering_the_grid_is_global_attention():
    torch.manual_seed(0)
    grid = (3, 5, 4)
    glob, win = Attention(16, 4, grid), Attention(16, 4, grid, window=grid)
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 60, 16)
    torch.testing.assert_close(win(x), glob(x), rtol=1e-5, atol=1e-6)


def test_a_token_only_reaches_its_own_window():
    torch.manual_seed(0)
    grid = (4, 4, 4)
    attn = Attention(8, 1, grid, window=(2, 2, 2)).eval()
    x = torch.randn(1, 64, 8)
    y = x.clone()
    y[0, 0] += 10.0  # token (0, 0, 0): its window is [0, 2)^3
    changed = (attn(y) - attn(x)).abs().sum(-1)[0] > 1e-6
    expect = torch.tensor([d < 2 and h < 2 and w < 2 for d, h, w in itertools.product(range(4), repeat=3)])
    assert torch.equal(changed, expect)


def test_padding_mask_only_when_needed_and_no_window_is_all_padding():
    assert Attention(8, 1, (4, 4, 4), window=(2, 2, 2)).key_mask is None
    masked = Attention(8, 1, (7, 17, 7), window=(4, 4, 4), shift=True)
    assert masked.key_mask is not None and bool(masked.key_mask.any(dim=1).all())
    assert masked.keys_per_query == 64 and Attention(8, 1, (7, 17, 7)).keys_per_query == 833
