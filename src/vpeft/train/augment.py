"""Batch augmentation on uint8 tensors (the many-shot protocol, design.md §1 item 2).

Prepared images are stored once at a fixed size (e.g. 256 x 256), so an epoch decodes nothing:

* train: RandomResizedCrop to the model's input size (scale, ratio as torchvision) with random
  horizontal (and, per dataset, vertical) flips, done for the whole batch in one ``grid_sample``;
* eval:  CenterCrop to the model's input size: with images stored at 256 this is exactly
  Resize 256 + CenterCrop 224.

Both map a uint8 NHWC batch to a uint8 NHWC batch, so the loop's normaliser is unchanged. The
random draws come from torch's global CPU generator, which the loop seeds and checkpoints, so runs
are reproducible and resume bit-identically; the eval transform draws nothing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn import functional as F

BatchTransform = Callable[[torch.Tensor], torch.Tensor]
_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """RandomResizedCrop(size, scale, ratio) + random flips of a uint8 NHWC batch (bilinear)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal: bool = True
    vertical: bool = False

    def boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """[n, 4] crop boxes (top, left, h, w) in pixels, sampled as torchvision does."""
        area = height * width
        u = torch.rand(n, _ATTEMPTS, 4)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u[..., 1]
        aspect = torch.exp(log_r)
        w = torch.sqrt(target * aspect).round()
        h = torch.sqrt(target / aspect).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        # Fallback (no valid attempt): the largest centred box within the ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        rows = torch.arange(n)
        pick = first.clamp(min=0)
        bw = torch.where(first >= 0, w[rows, pick], torch.tensor(float(fw)))
        bh = torch.where(first >= 0, h[rows, pick], torch.tensor(float(fh)))
        top = torch.where(first >= 0, torch.floor(u[rows, pick, 2] * (height - bh + 1)),
                          torch.tensor(float((height - fh) // 2)))
        left = torch.where(first >= 0, torch.floor(u[rows, pick, 3] * (width - bw + 1)),
                           torch.tensor(float((width - fw) // 2)))
        return torch.stack([top, left, bh, bw], 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, height, width, _ = images.shape
        if n == 0:
            return images[:, : self.size, : self.size]
        top, left, bh, bw = self.boxes(n, height, width).unbind(1)
        flips = torch.rand(n, 2)
        sx = torch.where(self.horizontal & (flips[:, 0] < 0.5), -1.0, 1.0)
        sy = torch.where(self.vertical & (flips[:, 1] < 0.5), -1.0, 1.0)
        # An affine grid maps the output square onto the box (normalised coordinates, pixel
        # edges at -1 and 1); a negative scale mirrors the box.
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sx * bw / width
        theta[:, 0, 2] = (2 * left + bw) / width - 1
        theta[:, 1, 1] = sy * bh / height
        theta[:, 1, 2] = (2 * top + bh) / height - 1
        x = images.permute(0, 3, 1, 2).float()
        grid = F.affine_grid(theta.to(x.device), [n, 3, self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass(frozen=True)
class CenterCrop:
    """The central ``size`` x ``size`` window of a uint8 NHWC batch (no randomness)."""

    size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = images.shape
        if height < self.size or width < self.size:
            raise ValueError(f"cannot centre-crop {height}x{width} images to {self.size}; store "
                             f"them at least that large (study.data.stored_size)")
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return images[:, top:top + self.size, left:left + self.size]


def build_transforms(augment: Any, img_size: int, flips: Sequence[str] = ("horizontal",)
                     ) -> tuple[BatchTransform | None, BatchTransform | None]:
    """(train, eval) transforms from ``train.augment`` (None: no augmentation, the VTAB protocol)."""
    if not augment:
        return None, None
    scale = tuple(float(v) for v in augment.get("scale", (0.08, 1.0)))
    ratio = tuple(float(v) for v in augment.get("ratio", (3 / 4, 4 / 3)))
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"train.augment.scale must be [low, high] within (0, 1], got {list(scale)}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"train.augment.ratio must be [low, high] > 0, got {list(ratio)}")
    train = RandomResizedCropFlip(img_size, scale, ratio,  # type: ignore[arg-type]
                                  horizontal="horizontal" in flips, vertical="vertical" in flips)
    return train, CenterCrop(img_size)


def transforms_for(cfg: Any, task: str) -> tuple[BatchTransform | None, BatchTransform | None]:
    """The study's transforms for ``task``: flips come from the many-shot dataset when there is one."""
    augment = cfg.train.get("augment")
    if not augment:
        return None, None
    from vpeft.kinds import study_kind

    flips = study_kind(cfg).augment_flips(task, augment.get("flips", ("horizontal",)))
    return build_transforms(augment, int(cfg.model.img_size), flips)
