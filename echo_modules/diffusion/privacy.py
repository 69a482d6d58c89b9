"""Privacy filter for synthetic datasets (after EchoNet-Synthetic / EchoFlow): drop a synthetic video whose nearest
training video is more similar than real patients are to each other.

Similarity is the Pearson correlation of video signatures (by default the clip average-pooled to 4 time bins of a
16 x 16 grid: anatomy, speckle and motion, a re-identification signature that needs no trained network;
EchoNet-Synthetic's first-frame Siamese encoder, or any ``(B, C, T, H, W) -> (B, D)`` function, can be passed in).
The threshold is a percentile (95th, as EchoNet-Synthetic) of the real-vs-real nearest-neighbour similarities of the
training set, so a synthetic video is rejected when it is closer to some training patient than 95 % of training
patients are to their own nearest other patient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def video_signature(videos: torch.Tensor, grid: int = 16, time_bins: int = 4) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, time_bins*grid*grid)`` zero-mean unit-norm pooled intensities (dot = Pearson)."""
    grey = videos.float().mean(1, keepdim=True)
    pooled = F.adaptive_avg_pool3d(grey, (min(time_bins, grey.shape[2]), grid, grid)).flatten(1)
    pooled = pooled - pooled.mean(1, keepdim=True)
    return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-8)


class PrivacyFilter:
    """Nearest-training-neighbour similarity against a threshold from real-vs-real similarities."""

    def __init__(self, train_features: torch.Tensor, percentile: float = 95.0, feature_fn: FeatureFn | None = None):
        if len(train_features) < 2:
            raise ValueError("the privacy filter needs at least two training videos to calibrate its threshold")
        self.train_features = train_features.float()
        self.feature_fn = feature_fn or video_signature
        similarity = self.train_features @ self.train_features.T
        similarity.fill_diagonal_(-float("inf"))
        self.real_nearest = similarity.amax(1)
        self.threshold = float(torch.quantile(self.real_nearest, percentile / 100.0))

    @classmethod
    def from_videos(cls, videos: torch.Tensor, percentile: float = 95.0, feature_fn: FeatureFn | None = None):
        feature_fn = feature_fn or video_signature
        return cls(feature_fn(videos), percentile, feature_fn)

    def nearest_similarity(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per video: the highest similarity to any training video and that video's index."""
        features = self.feature_fn(videos).to(self.train_features.device)
        values, indices = (features @ self.train_features.T).max(1)
        return values, indices

    def accept(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: True where the video is no closer to a training video than the threshold."""
        return self.nearest_similarity(videos)[0] <= self.threshold
