"""Metrics of synthetic echo videos: per-frame SSIM against the real video of the same map, mask consistency (Dice
between the ED map and a segmentation of the generated first frame), LV-area change (the phantom-measurable effect of
EF), and Frechet distances (FID over frames with user-supplied Inception weights; FVD-style over videos with a
pluggable extractor, a small built-in one for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from datamodules.errors import ConfigError

LV_CAVITY, MYOCARDIUM, LEFT_ATRIUM = 1, 2, 3
Segmenter = Callable[[torch.Tensor], torch.Tensor]  # frames (B, C, H, W) -> labels (B, H, W)


def per_frame_ssim(generated: torch.Tensor, real: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Mean SSIM over the frames of each pair of videos ``(B, C, T, H, W)`` -> ``(B,)`` (the paper's SSIM: generated
    frames against the frames of the real video with the same map). ``data_range`` defaults to the real videos' span.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    if data_range is None:
        data_range = float(real.max() - real.min()) or 1.0
    b = generated.shape[0]
    frames_gen = rearrange(generated.float(), "b c t h w -> (b t) c h w")
    frames_real = rearrange(real.float(), "b c t h w -> (b t) c h w")
    kernel = min(7, frames_real.shape[-1] // 2 * 2 - 1)
    values = ssim(frames_gen, frames_real, data_range=data_range, kernel_size=kernel, reduction="none")
    return rearrange(values, "(b t) -> b t", b=b).mean(1)


def dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of two boolean masks per sample ``(B, H, W)`` -> ``(B,)`` (1 where both are empty)."""
    prediction, target = prediction.flatten(1).float(), target.flatten(1).float()
    overlap = (prediction * target).sum(1)
    total = prediction.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1e-8), torch.ones_like(total))


class MyocardiumThreshold(nn.Module):
    """A model-free segmenter of the phantom's myocardium: pixels brighter than ``threshold`` are label 2.

    Echo muscle is bright and blood dark; on the phantom the tissue around the heart is as dark as blood, so the
    bright wall is the structure a threshold finds reliably. Any segmenter ``(B, C, H, W) -> (B, H, W)`` with CAMUS
    labels (e.g. a trained Segmenter2D) can take its place in :func:`mask_consistency`.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    @classmethod
    def fit(cls, videos: torch.Tensor, ed_masks: torch.Tensor) -> MyocardiumThreshold:
        """Threshold halfway between the mean LV-blood and myocardium intensity of real first frames
        ``(B, C, T, H, W)`` with their ED maps."""
        first = videos[:, :, 0].float().mean(1)
        blood = first[ed_masks == LV_CAVITY].mean()
        muscle = first[ed_masks == MYOCARDIUM].mean()
        return cls(float((blood + muscle) / 2))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames.float().mean(1) > self.threshold).long() * MYOCARDIUM


class TinyFrameSegmenter(nn.Module):
    """A small 2D conv segmenter ``(B, C, H, W) -> (B, H, W)`` labels, fitted in seconds on real frames and their
    maps (:meth:`fit`): a stand-in for a trained Segmenter2D on the phantom, where the speckled myocardium is too
    close in intensity to the surrounding tissue for a threshold to outline it."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.SiLU(),
            nn.Conv2d(width, width, 5, padding=4, dilation=2), nn.SiLU(),
            nn.Conv2d(width, width, 5, padding=8, dilation=4), nn.SiLU(),
            nn.Conv2d(width, num_classes, 1),
        )  # fmt: skip

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        return self.layers(frames.float())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.logits(frames).argmax(1)

    @classmethod
    def fit(cls, frames: torch.Tensor, masks: torch.Tensor, steps: int = 300, seed: int = 0) -> TinyFrameSegmenter:
        """Cross-entropy on ``frames`` ``(N, C, H, W)`` with ``masks`` ``(N, H, W)``, random shifts of up to 2 px."""
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(frames.shape[1], int(masks.max()) + 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
            x, y = torch.roll(frames, (dy, dx), (2, 3)), torch.roll(masks, (dy, dx), (1, 2))
            loss = F.cross_entropy(model.logits(x), y.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.eval().requires_grad_(False)


def mask_consistency(
    generated: torch.Tensor, ed_masks: torch.Tensor, segmenter: Segmenter, label: int = MYOCARDIUM
) -> torch.Tensor:
    """Dice ``(B,)`` of structure ``label`` between the ED map and the segmentation of the first generated frame."""
    segmentation = segmenter(generated[:, :, 0])
    return dice(segmentation == label, ed_masks == label)


def lv_area_change(videos: torch.Tensor, ed_masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fractional shrinking of the dark (blood) area inside the ED LV cavity, first frame to the smallest later frame,
    ``(B,)``: as the LV contracts the myocardium moves into the ED cavity, so a higher EF shrinks it more."""
    cavity = (ed_masks == LV_CAVITY)[:, None]  # (B, 1, H, W)
    dark = videos.float().mean(1) < threshold  # (B, T, H, W)
    area = (dark & cavity).flatten(2).sum(-1).float()  # (B, T)
    return 1 - area[:, 1:].amin(1) / area[:, 0].clamp(min=1)


# ---------------------------------------------------------------------------------------------------- Frechet


class TinyVideoFeatures(nn.Module):
    """A small fixed (seeded random) 3D conv feature extractor ``(B, C, T, H, W) -> (B, num_features)``: the FVD maths
    with no downloaded I3D, for tests and quick checks. Random convolutional features are a weak but monotone distance
    (identical sets give 0, shifted sets more); report I3D-based FVD only with real weights."""

    def __init__(self, in_channels: int = 1, num_features: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        widths = [in_channels, 16, 32, num_features]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (cin * 27) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.features(videos.float()).mean(dim=(2, 3, 4))


class FrechetVideoDistance(nn.Module):
    """Frechet distance between real and generated videos in a feature space (FVD when the extractor is I3D).

    Uses torchmetrics' FrechetInceptionDistance with a custom ``feature`` module, so the maths is torchmetrics'.
    """

    def __init__(self, extractor: nn.Module | None = None) -> None:
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        extractor = extractor if extractor is not None else TinyVideoFeatures()
        self.fid = FrechetInceptionDistance(feature=_Flattening(extractor), normalize=True)

    def update(self, videos: torch.Tensor, real: bool) -> None:
        self.fid.update(videos, real=real)

    def compute(self) -> torch.Tensor:
        return self.fid.compute()


class _Flattening(nn.Module):
    """torchmetrics checks inputs by ``num_features``; pass videos straight to the extractor."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.num_features

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.extractor(videos)


def frame_fid(weights_path: str | None, feature: int = 2048):
    """torchmetrics FID over frames with Inception weights from ``weights_path`` (FID's pt_inception-2015-12-05
    weights; nothing is downloaded). Frames go in as ``(N, 3, H, W)`` floats in [0, 1] (grey repeated to 3 channels).
    """
    if not weights_path or not Path(weights_path).is_file():
        raise ConfigError(
            f"FID needs the Inception weights file (pt_inception-2015-12-05) at a local path; got {weights_path!r}"
        )
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=feature, normalize=True, feature_extractor_weights_path=str(weights_path))


def videos_to_fid_frames(videos: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``(B, C, T, H, W)`` normalised videos -> ``(B*T, 3, H, W)`` in [0, 1] for frame FID."""
    frames = rearrange(videos.float(), "b c t h w -> (b t) c h w")
    frames = ((frames - low) / max(high - low, 1e-8)).clamp(0, 1)
    return frames.mean(1, keepdim=True).expand(-1, 3, -1, -1)
