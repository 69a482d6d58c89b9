"""2D U-Nets for LV / MYO / LA segmentation (plain nn.Modules).

``UNet2D``: the classic encoder-decoder with skip connections (``depth`` levels, ``base_channels * 2**i`` channels,
BatchNorm + ReLU). ``TimmUNet2D``: any timm backbone's ``features_only`` pyramid as the encoder under the same decoder
(``pretrained: true`` loads its weights; tests use random init).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Decoder(nn.Module):
    """Upsample, concatenate the skip, double conv; from the deepest feature map to the input resolution."""

    def __init__(self, feature_channels: list[int], num_classes: int) -> None:
        super().__init__()
        deepest, *skips = reversed(feature_channels)
        self.stages = nn.ModuleList()
        channels = deepest
        for skip in skips:
            self.stages.append(_double_conv(channels + skip, skip))
            channels = skip
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class UNet2D(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, num_classes, H, W)`` logits; H and W divisible by ``2**(depth - 1)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base_channels: int = 32, depth: int = 5) -> None:
        super().__init__()
        channels = [base_channels * 2**i for i in range(depth)]
        self.encoders = nn.ModuleList(
            _double_conv(a, b) for a, b in zip([in_channels] + channels[:-1], channels, strict=True)
        )
        self.decoder = _Decoder(channels, num_classes)

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], images
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.forward_features(images), images.shape[-2:])


class TimmUNet2D(nn.Module):
    """A timm backbone (``features_only``) as the U-Net encoder, e.g. ``resnet18`` or ``efficientnet_b0``."""

    def __init__(
        self, encoder_name: str = "resnet18", in_channels: int = 1, num_classes: int = 4, pretrained: bool = False
    ) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model(encoder_name, features_only=True, pretrained=pretrained, in_chans=in_channels)
        self.decoder = _Decoder(list(self.encoder.feature_info.channels()), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images), images.shape[-2:])
