"""Video encoders: ``forward(video (B, C, T, H, W)) -> (B, out_features)``, reusable by any method."""

from __future__ import annotations

import torch
from einops import reduce
from torch import nn


class VideoEncoder(nn.Module):
    """Interface of EchoLab video backbones: a pooled feature vector of ``out_features`` per clip."""

    out_features: int

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class R2Plus1D18(VideoEncoder):
    """torchvision R(2+1)D-18 (the EchoNet-Dynamic backbone) without its classifier: 512-d features.

    ``pretrained=True`` loads torchvision's Kinetics-400 weights (downloaded by torchvision, so it needs internet once).
    """

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        from torchvision.models.video import R2Plus1D_18_Weights, r2plus1d_18

        weights = R2Plus1D_18_Weights.KINETICS400_V1 if pretrained else None
        try:
            self.network = r2plus1d_18(weights=weights)
        except OSError as error:  # URLError is an OSError: no internet and no cached weights
            raise RuntimeError(
                "R2Plus1D18(pretrained=True) could not fetch torchvision's Kinetics-400 weights "
                f"({error}); put them in the torch hub cache (TORCH_HOME) or set pretrained: false"
            ) from error
        self.out_features = self.network.fc.in_features
        self.network.fc = nn.Identity()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.network(video)


def _conv_block(in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyVideoEncoder(VideoEncoder):
    """A small 3D CNN for CPU runs (the phantom, tests, the demo).

    Frames are reduced spatially while time is kept; a temporal convolution follows the per-frame features, which are
    then summarised over time by mean, max and min and mixed by a small MLP. EF is a ratio of the largest and smallest
    cavity of a cycle: average pooling alone would blur it away, and a ratio needs a non-linearity after pooling.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 4, out_features: int = 128) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for level in range(depth):
            out_channels = width * 2 ** min(level, 2)
            layers.append(_conv_block(channels, out_channels, stride=(1, 2, 2)))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.temporal = nn.Sequential(
            nn.Conv1d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
        )
        self.mix = nn.Sequential(nn.Linear(3 * channels, out_features), nn.ReLU(inplace=True))
        self.out_features = out_features

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        per_frame = self.temporal(reduce(self.features(video), "b c t h w -> b c t", "mean"))
        return self.mix(torch.cat([per_frame.mean(-1), per_frame.amax(-1), per_frame.amin(-1)], dim=1))
