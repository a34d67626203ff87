"""Training losses: L_SN = 1 - SSIM + lambda * L1 on the foreground, and the LSGAN terms of SN-GAN.

All image arguments are magnitude images `(B, h, w)` already centre-cropped to the recon size.
The foreground mask `(B, h, w)` (bool or 0/1) restricts both terms to the anatomy, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7  # fastMRI's SSIMLoss window (uniform 7x7)
SSIM_K1, SSIM_K2 = 0.01, 0.03
L1_WEIGHT = 1e-3  # lambda of Eq. (1)


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, h, w) or (h, w), got shape {tuple(x.shape)}")
    return x


def data_range_of(target: torch.Tensor) -> torch.Tensor:
    """Per-sample dynamic range `(B,)` of the target, the SSIM constant scale (fastMRI uses max)."""
    target = _as_batch(target, "target")
    return target.flatten(1).amax(dim=1).clamp_min(torch.finfo(target.dtype).tiny)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | None = None,
             window: int = SSIM_WINDOW) -> torch.Tensor:
    """Local SSIM `(B, h-window+1, w-window+1)` with a uniform window, fastMRI's SSIMLoss definition.

    Differentiable in `pred`; `data_range` `(B,)` defaults to the target's per-sample maximum.
    """
    pred = _as_batch(pred, "pred")[:, None]
    target = _as_batch(target, "target")[:, None]
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if data_range is None:
        data_range = data_range_of(target[:, 0])
    dr = data_range.to(pred.dtype)[:, None, None, None]
    kernel = torch.full((1, 1, window, window), 1.0 / window**2, dtype=pred.dtype, device=pred.device)
    n = window * window
    cov_norm = n / (n - 1)  # unbiased local (co)variances, as fastMRI
    mu_x, mu_y = F.conv2d(pred, kernel), F.conv2d(target, kernel)
    var_x = cov_norm * (F.conv2d(pred * pred, kernel) - mu_x * mu_x)
    var_y = cov_norm * (F.conv2d(target * target, kernel) - mu_y * mu_y)
    cov = cov_norm * (F.conv2d(pred * target, kernel) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * dr) ** 2, (SSIM_K2 * dr) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s[:, 0]


def _masked_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    total = weight.sum()
    # an empty foreground (blank slice) falls back to the whole image rather than dividing by zero
    return torch.where(total > 0, (values * weight).sum() / total.clamp_min(1.0), values.mean())


def _crop_to_valid(fg: torch.Tensor, window: int) -> torch.Tensor:
    half = window // 2
    return fg[:, half: fg.shape[-2] - half, half: fg.shape[-1] - half]


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor | None = None,
              data_range: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean local SSIM, the mean taken over foreground window centres when a mask is given."""
    s = ssim_map(pred, target, data_range)
    fg = None if foreground is None else _crop_to_valid(_as_batch(foreground, "foreground"), SSIM_WINDOW)
    return 1.0 - _masked_mean(s, fg)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor | None = None,
            data_range: torch.Tensor | None = None) -> torch.Tensor:
    """Foreground mean |pred - target| divided by the target's range, so lambda is scale-free."""
    pred, target = _as_batch(pred, "pred"), _as_batch(target, "target")
    if data_range is None:
        data_range = data_range_of(target)
    err = (pred - target).abs() / data_range.to(pred.dtype)[:, None, None]
    return _masked_mean(err, None if foreground is None else _as_batch(foreground, "foreground"))


def sn_loss(pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor | None = None,
            l1_weight: float = L1_WEIGHT) -> torch.Tensor:
    """Eq. (1): L_SN = 1 - SSIM + lambda * L1, both on the foreground."""
    dr = data_range_of(target)
    return ssim_loss(pred, target, foreground, dr) + l1_weight * l1_loss(pred, target, foreground, dr)


def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN critic loss: 0.5 E[(D(real) - 1)^2] + 0.5 E[D(fake)^2]."""
    return 0.5 * ((d_real - 1.0) ** 2).mean() + 0.5 * (d_fake**2).mean()


def lsgan_generator_loss(d_fake: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """LSGAN generator loss: 0.5 E[(D(fake) - 1)^2]; with `weight` (one per image) each image's term is
    scaled by its weight before the mean over the batch."""
    if weight is None:
        return 0.5 * ((d_fake - 1.0) ** 2).mean()
    if weight.shape != d_fake.shape[:1]:
        raise ValueError(f"weight: expected one per image, shape ({d_fake.shape[0]},), got {tuple(weight.shape)}")
    per_image = ((d_fake - 1.0) ** 2).flatten(1).mean(1)
    return 0.5 * (weight.to(per_image.dtype) * per_image).mean()


def normalize_for_discriminator(image: torch.Tensor, foreground: torch.Tensor,
                                data_range: torch.Tensor) -> torch.Tensor:
    """`(B, 1, h, w)` foreground-masked magnitude divided by the target range: D sees m * x on one scale."""
    image = _as_batch(image, "image")
    fg = _as_batch(foreground, "foreground").to(image.dtype)
    return (fg * image / data_range.to(image.dtype)[:, None, None])[:, None]
