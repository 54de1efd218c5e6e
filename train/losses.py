"""Depth losses, all masked to valid ground-truth pixels (finite and > 0), and a registry by name.

Every loss takes optional per-pixel weights (`--object-weight`): its means over pixels become
weighted means, so all-equal weights give the unweighted loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mde.errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
EPS = 1e-3


def weighted_mean(values: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of `values` over the pixels of `mask`, weighted by `weight` (same shape) when given; 0 where
    `mask` has no pixel. A product and a sum, not `values[mask]`: no shape hangs on the data, so a step on a GPU
    waits for no copy to the host (boolean indexing does, and so does `if mask.any()`)."""
    w = mask.to(values.dtype) if weight is None else torch.where(mask, weight, 0.0)
    total = w.sum()
    return (w * values).sum() / torch.where(total > 0, total, 1.0)


def valid_mask(target: torch.Tensor) -> torch.Tensor:
    """Pixels that count: finite ground truth > 0."""
    return torch.isfinite(target) & (target > 0)


def _error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|pred - target| on valid pixels, 0 elsewhere. The target is filled before the difference, not the difference
    after: a NaN or inf target would give NaN gradients through `where`'s unchosen side."""
    return torch.where(mask, (pred - torch.where(mask, target, pred.detach())).abs(), 0.0)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (metres) over valid pixels."""
    return weighted_mean(_error(pred, target, mask), mask, weight)


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse Huber (Laina et al. 2016): L1 below c, scaled L2 above; c = 0.2 * max |error| in the batch."""
    diff = _error(pred, target, mask)  # 0 off the mask: the max is the valid pixels'
    c = (0.2 * diff.max().detach()).clamp_min(1e-6)
    return weighted_mean(torch.where(diff <= c, diff, (diff**2 + c**2) / (2 * c)), mask, weight)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               weight: torch.Tensor | None = None, variance_focus: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, BTS form): 10 * sqrt(E[d^2] - lambda E[d]^2)."""
    d = torch.where(mask, torch.log(pred.clamp_min(EPS)) - torch.log(torch.where(mask, target, 1.0)), 0.0)
    mean_d = weighted_mean(d, mask, weight)
    return 10.0 * torch.sqrt(weighted_mean(d**2, mask, weight) - variance_focus * mean_d**2 + 1e-8)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float | torch.Tensor) -> torch.Tensor:
    """SSIM map (N x 1 x H x W, 11x11 Gaussian, sigma 1.5, 'same' padding by reflection)."""
    window = _gaussian_window(device=x.device).to(x.dtype)
    pad = window.shape[-1] // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def ssim_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """DenseDepth-style: (1 - SSIM) / 2 plus 0.1 * L1 (metres). Invalid pixels take the prediction on both sides,
    held constant: a window over a hole compares what it can, and no gradient reaches a pixel without ground truth
    (the prediction itself there trained the map where nothing is known)."""
    held = pred.detach()
    filled = torch.where(mask, target, held)
    deepest = torch.where(mask, target, 0.0).amax().detach()
    data_range = torch.where(deepest > 0, deepest, 1.0)  # a tensor: float() would wait for the device
    structure = ((1 - ssim_map(torch.where(mask, pred, held), filled, data_range)) / 2).clamp(0, 1)
    return weighted_mean(structure, mask, weight) + 0.1 * l1_loss(pred, target, mask, weight)



LOSSES: dict[str, LossFn] = {
    "l1": l1_loss,
    "berhu": berhu_loss,
    "silog": silog_loss,
    "ssim_l1": ssim_l1_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss registered as `name`; an unknown name lists the valid ones."""
    if name not in LOSSES:
        raise InputError(f"unknown --loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]


def masked_loss(name: str, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Apply loss `name` on valid pixels, weighted per pixel by `weight` (target's shape) when given.

    A batch with no valid pixel gives a zero (with gradient). Nothing here copies to the host: no shape or branch
    depends on the data.
    """
    mask = valid_mask(target)
    loss = get_loss(name)(pred.float(), target.float(), mask, None if weight is None else weight.float())
    return torch.where(mask.any(), loss, pred.sum() * 0.0)
