"""The AR-VAE's encoder and decoder over one-hot segmentation maps (plain nn.Modules, usable without Lightning).

Painchaud et al.: ``num_blocks`` blocks of (stride-2 conv + conv), ``base_channels * 2**i`` channels, BatchNorm and
ELU, a linear map to the latent mean and log-variance; the decoder mirrors it with transposed convolutions.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _block(in_channels: int, out_channels: int, down: bool) -> nn.Sequential:
    first = (
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        if down
        else nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    )
    return nn.Sequential(
        first,
        nn.BatchNorm2d(out_channels),
        nn.ELU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ELU(inplace=True),
    )


class SegmentationEncoder(nn.Module):
    """One-hot ``(B, K, S, S)`` -> latent mean and log-variance ``(B, D)`` each."""

    def __init__(self, num_classes: int, image_size: int, latent_dim: int, base_channels: int, num_blocks: int):
        super().__init__()
        channels = [num_classes] + [base_channels * 2**i for i in range(num_blocks)]
        self.blocks = nn.Sequential(*(_block(a, b, down=True) for a, b in zip(channels[:-1], channels[1:])))
        self.bottom = image_size // 2**num_blocks
        self.head = nn.Linear(channels[-1] * self.bottom**2, 2 * latent_dim)

    def forward(self, one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = rearrange(self.blocks(one_hot), "b c h w -> b (c h w)")
        mean, log_var = self.head(features).chunk(2, dim=1)
        return mean, log_var


class SegmentationDecoder(nn.Module):
    """Latent ``(B, D)`` -> class logits ``(B, K, S, S)``."""

    def __init__(self, num_classes: int, image_size: int, latent_dim: int, base_channels: int, num_blocks: int):
        super().__init__()
        channels = [base_channels * 2**i for i in reversed(range(num_blocks))]
        self.bottom = image_size // 2**num_blocks
        self.top_channels = channels[0]
        self.head = nn.Linear(latent_dim, channels[0] * self.bottom**2)
        self.blocks = nn.Sequential(
            *(_block(a, b, down=False) for a, b in zip(channels, channels[1:] + [channels[-1]]))
        )
        self.classifier = nn.Conv2d(channels[-1], num_classes, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        features = rearrange(self.head(latent), "b (c h w) -> b c h w", c=self.top_channels, h=self.bottom)
        return self.classifier(self.blocks(features))
