"""CardiacNet's networks as plain ``nn.Module``s: the deformation generator (3D conv encoder, CDC, decoder), the
Consistency Deformation Discriminator (global video + local frame PatchGANs) and the light heads on frozen features.

Shapes follow the public code scaled by ``widths``: the encoder halves height and width once per extra width
(no temporal downsampling), e.g. ``widths=[64, 128, 128, 256, 256]`` turns 16 x 112 x 112 into a 16 x 7 x 7 token
grid; a CPU test uses ``[8, 16, 32]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from echo_modules.cardiacnet.codebook import ConsistencyDeformationCodebook, Quantised


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups: per-sample statistics, so nothing needs syncing under DDP."""
    return nn.GroupNorm(math.gcd(channels, 32), channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, Conv3d) x 2 plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
            group_norm(channels), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Encoder3d(nn.Module):
    """xi(I): stem conv at full resolution, then per extra width a (1, 2, 2)-strided conv and a residual block, then a
    conv to ``latent_dim`` (the public encoder's layout)."""

    def __init__(self, in_channels: int, channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels[0], 3, padding=1)]
        for before, after in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv3d(before, after, 3, stride=(1, 2, 2), padding=1), ResBlock3d(after)]
        layers += [group_norm(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, video: Tensor) -> Tensor:
        return self.layers(video)


class Decoder3d(nn.Module):
    """Mirror of :class:`Encoder3d`: per level trilinear (1, 2, 2) upsampling, a conv and (below full resolution,
    where most of the compute would go) a residual block; linear output (no tanh: inputs are mean/std normalised,
    not squashed to [-1, 1])."""

    def __init__(self, out_channels: int, channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        widths = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv3d(latent_dim, widths[0], 3, padding=1), ResBlock3d(widths[0])]
        for level, (before, after) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers += [
                nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=False),
                nn.Conv3d(before, after, 3, padding=1),
            ]
            if level < len(widths) - 1:
                layers.append(ResBlock3d(after))
        layers += [group_norm(widths[-1]), nn.SiLU(), nn.Conv3d(widths[-1], out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        return self.layers(latent)


@dataclass
class GeneratorOutput:
    """A generator pass: the output video and the CDC internals the losses need."""

    video: Tensor  # (B, C, T, H, W) the deformed (or identity) video
    features: Tensor  # (B, D, t, h, w) extracted features plus positional encoding, F + P
    quantisation: Quantised  # F~ (straight-through), indices, L_q, perplexity


class DeformationGenerator(nn.Module):
    """phi: encoder xi, Consistency Deformation Codebook, decoder. CardiacNet trains two of them, normal->abnormal
    (phi_A) and abnormal->normal (phi_B); each reproduces videos that already belong to its target class."""

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 128, 256, 256),
        latent_dim: int = 256,
        num_codes: int = 2048,
        commitment: float = 0.25,
        restart_threshold: float = 1.0,
        position_grid: tuple[int, int, int] = (16, 7, 7),
        channels_last: bool = True,
        positional_encoding: bool = True,
        quantise: bool = True,
    ) -> None:
        """``position_grid``: the token grid (frames, height, width) the learnable positional encoding is stored at;
        clips whose grid differs get it interpolated. ``channels_last``: run the 3D convolutions in the
        channels-last-3d memory format (several times faster on CPU through oneDNN). ``positional_encoding`` /
        ``quantise``: the CDC ablations (see :class:`ConsistencyDeformationCodebook`)."""
        super().__init__()
        self.channels_last = channels_last
        self.downsampling = 2 ** (len(widths) - 1)
        self.encoder = Encoder3d(in_channels, widths, latent_dim)
        self.codebook = ConsistencyDeformationCodebook(
            latent_dim, position_grid, num_codes, commitment, restart_threshold, positional_encoding, quantise
        )
        self.decoder = Decoder3d(in_channels, widths, latent_dim)
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def _prepare(self, video: Tensor) -> Tensor:
        if video.shape[-1] % self.downsampling or video.shape[-2] % self.downsampling:
            raise ValueError(
                f"frames of {tuple(video.shape[-2:])} px: height and width must be divisible by 2^(len(widths) - 1) = "
                f"{self.downsampling} (set data.frame_size accordingly)"
            )
        return video.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else video

    def extract(self, video: Tensor) -> Tensor:
        """Positioned features ``F + P`` ``(B, D, t, h, w)`` of ``video`` ``(B, C, T, H, W)``, not quantised."""
        features = self.encoder(self._prepare(video))
        encoding = self.codebook.positional_encoding
        return encoding(features) if encoding is not None else features

    def encode(self, video: Tensor, learn_from: Tensor | None = None, learn: bool = True) -> tuple[Tensor, Quantised]:
        """Positioned features ``F + P`` and their quantisation for ``video`` ``(B, C, T, H, W)``; ``learn_from``
        ``(B,)`` marks the clips whose tokens may train the codebook (default all), ``learn=False`` none."""
        return self.codebook(self.encoder(self._prepare(video)), learn_from, learn)

    def forward(self, video: Tensor, learn_from: Tensor | None = None, learn: bool = True) -> GeneratorOutput:
        features, quantisation = self.encode(video, learn_from, learn)
        latent = quantisation.quantised.to(features.dtype)
        if self.channels_last:
            latent = latent.contiguous(memory_format=torch.channels_last_3d)
        output = self.decoder(latent)
        return GeneratorOutput(video=output, features=features, quantisation=quantisation)


def _patch_discriminator(
    dims: int, in_channels: int, width: int, num_layers: int, temporal_strides: int
) -> nn.Sequential:
    """PatchGAN (pix2pix/VQGAN style) in 2D or 3D: strided convs with LeakyReLU and GroupNorm, one logit per patch
    (2D: 4x4 kernels as pix2pix; 3D: 3x3x3, time strided only in the first ``temporal_strides`` layers)."""
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    kernel = 4 if dims == 2 else 3

    def stride(layer: int) -> int | tuple[int, int, int]:
        if dims == 2:
            return 2
        return (2 if layer < temporal_strides else 1, 2, 2)

    layers: list[nn.Module] = [conv(in_channels, width, kernel, stride=stride(0), padding=1), nn.LeakyReLU(0.2)]
    channels = width
    for layer in range(1, num_layers):
        wider = min(channels * 2, 8 * width)
        layers += [conv(channels, wider, kernel, stride=stride(layer), padding=1), group_norm(wider), nn.LeakyReLU(0.2)]
        channels = wider
    layers += [conv(channels, 1, 3, padding=1)]
    return nn.Sequential(*layers)


@dataclass
class DiscriminatorLogits:
    """Patch logits of the three terms of Eq. 2 (``None`` where a term is off)."""

    video: Tensor  # eta^T on the whole clip (global)
    frames: Tensor  # eta^S on individual frames X_n (local, spatial)
    patches: Tensor | None  # eta^T on the clip's non-overlapping spatial patches X_ij, each a small video (local)


class ConsistencyDeformationDiscriminator(nn.Module):
    """CDD (Eq. 2) for one class: a temporal 3D PatchGAN ``eta^T`` judges the whole clip (global) and, Eq. 2's third
    term, each non-overlapping ``patch`` x ``patch`` spatial patch followed over the clip's frames (local); a spatial
    2D PatchGAN ``eta^S`` judges individual frames (local). All return patch logits."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        num_layers: int = 3,
        temporal_strides: int = 2,
        frames: int = 4,
        channels_last: bool = True,
        patch: int = 0,
    ) -> None:
        """``frames``: frames per clip the local discriminator sees (drawn at random; 0 = every frame).
        ``channels_last``: channels-last memory formats for both discriminators (faster convolutions on CPU).
        ``patch``: side in pixels of the spatial patches ``eta^T`` also judges (Eq. 2's third term; 0 = off)."""
        super().__init__()
        self.frames = frames
        self.patch = patch
        self.channels_last = channels_last
        self.video = _patch_discriminator(3, in_channels, width, num_layers, temporal_strides)
        self.frame = _patch_discriminator(2, in_channels, width, num_layers, 0)
        if channels_last:
            self.video.to(memory_format=torch.channels_last_3d)
            self.frame.to(memory_format=torch.channels_last)

    def select_frames(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Frame indices the local discriminator judges (the same for real and fake clips of one step)."""
        count = video.shape[2]
        if not self.frames or self.frames >= count:
            return torch.arange(count, device=video.device)
        return torch.randperm(count, generator=generator)[: self.frames].sort().values.to(video.device)

    def patches(self, video: Tensor) -> Tensor:
        """``video`` ``(B, C, T, H, W)`` cut into non-overlapping spatial patches ``(B h w, C, T, p, p)`` (a border
        that does not fill a whole patch is dropped)."""
        p = self.patch
        height, width = video.shape[-2] // p * p, video.shape[-1] // p * p
        return rearrange(video[..., :height, :width], "b c t (h p) (w q) -> (b h w) c t p q", p=p, q=p)

    def forward(self, video: Tensor, frame_indices: Tensor | None = None) -> DiscriminatorLogits:
        """The logits of Eq. 2's three terms for ``video`` ``(B, C, T, H, W)``."""
        frames = video if frame_indices is None else video.index_select(2, frame_indices)
        frames = rearrange(frames, "b c t h w -> (b t) c h w")
        patches = self.patches(video) if self.patch else None
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
            frames = frames.contiguous(memory_format=torch.channels_last)
            patches = patches.contiguous(memory_format=torch.channels_last_3d) if patches is not None else None
        return DiscriminatorLogits(
            video=self.video(video),
            frames=self.frame(frames),
            patches=self.video(patches) if patches is not None else None,
        )


POOLINGS = ("mean", "max", "time_max", "time_min")


class FeatureHead(nn.Module):
    """A light head on generator features, as the public evaluation's classifier: Conv3d (stride 2), ReLU, global
    pooling, linear. One output: a disease logit, or (standardised) EF.

    ``pooling`` (concatenated): ``mean`` (the public head's global average); ``max`` (the strongest response anywhere:
    a local lesion such as a septal gap covers a few tokens and vanishes in a global average); ``time_max`` /
    ``time_min`` (each location's extremes over the clip, averaged over space: how far features swing where the
    walls move, which EF is about)."""

    def __init__(self, in_channels: int, hidden: int | None = None, pooling: Sequence[str] = ("mean",)) -> None:
        super().__init__()
        unknown = set(pooling) - set(POOLINGS)
        if unknown or not pooling:
            raise ValueError(f"pooling must be a non-empty subset of {POOLINGS}, got {list(pooling)}")
        hidden = hidden or 2 * in_channels
        self.pooling = tuple(pooling)
        self.conv = nn.Conv3d(in_channels, hidden, 3, stride=2, padding=1)
        self.linear = nn.Linear(len(self.pooling) * hidden, 1)

    def forward(self, features: Tensor) -> Tensor:
        activations = F.relu(self.conv(features))  # (B, hidden, t, h, w)
        pools = {
            "mean": lambda: activations.mean((2, 3, 4)),
            "max": lambda: activations.amax((2, 3, 4)),
            "time_max": lambda: activations.amax(2).mean((2, 3)),
            "time_min": lambda: activations.amin(2).mean((2, 3)),
        }
        return self.linear(torch.cat([pools[name]() for name in self.pooling], 1)).squeeze(-1)
