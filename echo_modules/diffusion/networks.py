"""The SPADE-conditioned 3D denoising UNet (Nguyen Van Phi et al., ICASSP 2024, Fig. 2), a plain nn.Module.

Encoder: residual 3D conv blocks (GroupNorm, time embedding as scale/shift), each followed by spatial attention
(over the pixels of a frame, at the coarse levels where it is affordable) then temporal attention (over the frames
of a pixel). Decoder and middle: the same blocks with SPADE in place of GroupNorm (eq. 6):
``f' = gamma(x, k) * Norm(f) + delta(x, k)`` from the one-hot ED map ``x`` duplicated over time and a cosine
embedding ``k`` of frame time. An all-zero map is the null condition of classifier-free guidance. Optional EF
conditioning adds an embedding of the requested EF to the time embedding (NaN EF = the learned null EF) and gives
SPADE the EF beside the map and frame time, so the EF can shape where the walls go frame by frame (how far the LV
contracts is a spatial effect that a global embedding alone learns slowly).
Downsampling is spatial only: clips are short (8-24 frames) and every frame is generated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

EF_CODE_DIM = 4  # standardised EF, sin and cos of it, known-EF flag


def cosine_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding ``(N,) -> (N, dim)`` (cos half first)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device) / half)
    angles = values.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class SpadeCondition(NamedTuple):
    """SPADE's condition in factorised form: ``static`` ``(B, S, H, W)`` holds the channels that are the same in
    every frame (the one-hot map, the EF on the cavity), ``temporal`` ``(B, D, T)`` those that are the same at every
    pixel (frame time, the EF code, EF x frame time); ``static_index`` / ``temporal_index`` are their positions among
    the ``S + D`` channels of the dense condition (:meth:`dense`), i.e. of SPADE's first convolution's input.

    SPADE's shared convolution is linear, so its output is the convolution of the static channels, computed once per
    video and broadcast over time, plus that of the temporal channels, which for a spatially constant input is the
    per-frame code times the kernel sums over the taps that fall inside the frame (zero padding): the same numbers
    as the convolution of the dense ``(B, S + D, T, H, W)`` tensor, at a fraction of its cost."""

    static: torch.Tensor
    temporal: torch.Tensor
    static_index: tuple[int, ...]
    temporal_index: tuple[int, ...]

    def dense(self) -> torch.Tensor:
        """The ``(B, S + D, T, H, W)`` tensor: every channel at every frame and pixel."""
        b, _, h, w = self.static.shape
        t = self.temporal.shape[2]
        parts = {i: self.static[:, k : k + 1, None].expand(-1, -1, t, -1, -1) for k, i in enumerate(self.static_index)}
        for k, i in enumerate(self.temporal_index):
            parts[i] = self.temporal[:, k : k + 1, :, None, None].expand(-1, -1, -1, h, w)
        return torch.cat([parts[i] for i in sorted(parts)], dim=1)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: parameter-free GroupNorm modulated per pixel and frame by the condition
    (a dense ``(B, K, T, H, W)`` tensor, or a :class:`SpadeCondition`: the same maths, factorised)."""

    def __init__(self, channels: int, condition_channels: int, hidden: int = 32, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels, affine=False)
        self.shared = nn.Sequential(nn.Conv3d(condition_channels, hidden, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU())
        self.gamma = nn.Conv3d(hidden, channels, (1, 3, 3), padding=(0, 1, 1))
        self.beta = nn.Conv3d(hidden, channels, (1, 3, 3), padding=(0, 1, 1))

    def _shared(self, condition: SpadeCondition, size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """The shared convolution (before its SiLU) of the factorised condition at ``size`` ``(T, H, W)``."""
        conv = self.shared[0]
        weight = conv.weight[:, :, 0].to(dtype)  # (hidden, K, 3, 3)
        static = F.interpolate(condition.static, size=tuple(size[1:]), mode="nearest").to(dtype)
        out = F.conv2d(static, weight[:, list(condition.static_index)], conv.bias.to(dtype), padding=1)
        temporal_weight = weight[:, list(condition.temporal_index)]  # (hidden, D, 3, 3)
        hidden, d = temporal_weight.shape[:2]
        ones = torch.ones(1, 1, *size[1:], device=static.device, dtype=dtype)
        # per (hidden, D) kernel: the sum of its taps that land inside the frame, at each pixel
        tap_sums = F.conv2d(ones, temporal_weight.reshape(hidden * d, 1, 3, 3), padding=1)
        tap_sums = rearrange(tap_sums, "1 (o d) h w -> o d h w", o=hidden)
        moving = torch.einsum("bdt,odhw->bothw", condition.temporal.to(dtype), tap_sums)
        return out[:, :, None] + moving

    def forward(self, features: torch.Tensor, condition: torch.Tensor | SpadeCondition) -> torch.Tensor:
        if isinstance(condition, SpadeCondition):
            hidden = self.shared[1](self._shared(condition, features.shape[2:], features.dtype))
        else:
            condition = F.interpolate(condition, size=features.shape[2:], mode="nearest")
            hidden = self.shared(condition.to(features.dtype))
        # gamma and beta read the same input: one convolution with both kernels
        weight = torch.cat([self.gamma.weight, self.beta.weight]).to(hidden.dtype)
        bias = torch.cat([self.gamma.bias, self.beta.bias]).to(hidden.dtype)
        gamma, beta = F.conv3d(hidden, weight, bias, padding=(0, 1, 1)).chunk(2, dim=1)
        return self.norm(features) * (1 + gamma) + beta


class ResBlock3D(nn.Module):
    """Two 3D convolutions with a time-embedding scale/shift; GroupNorm, or SPADE when ``condition_channels``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        condition_channels: int | None = None,
        temporal_kernel: int = 3,
        groups: int = 8,
        dropout: float = 0.0,
        spade_hidden: int = 32,
    ) -> None:
        super().__init__()
        kernel, padding = (temporal_kernel, 3, 3), (temporal_kernel // 2, 1, 1)
        self.spade = condition_channels is not None
        if self.spade:
            self.norm1 = SPADE(in_channels, condition_channels, spade_hidden, groups)
            self.norm2 = SPADE(out_channels, condition_channels, spade_hidden, groups)
        else:
            self.norm1 = nn.GroupNorm(_groups(in_channels, groups), in_channels)
            self.norm2 = nn.GroupNorm(_groups(out_channels, groups), out_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, padding=padding)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel, padding=padding)
        self.embed = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_channels))
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def _norm(self, norm: nn.Module, x: torch.Tensor, condition: SpadeCondition | None) -> torch.Tensor:
        return norm(x, condition) if self.spade else norm(x)

    def forward(
        self, x: torch.Tensor, embedding: torch.Tensor, condition: SpadeCondition | None = None
    ) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, condition)))
        scale, shift = rearrange(self.embed(embedding), "b (two c) -> two b c 1 1 1", two=2)
        h = self._norm(self.norm2, h, condition) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over token sequences, with a zero-initialised output (a residual that starts as
    the identity); subclasses choose which axis the tokens run along."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(n, length, channels)`` tokens -> the attended tokens, projected out."""
        q, k, v = rearrange(self.qkv(tokens), "n l (three heads d) -> three n heads l d", three=3, heads=self.heads)
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "n heads l d -> n l (heads d)")
        return self.out(attended)


class SpatialAttention(_Attention):
    """Self-attention over the pixels of each frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        return x + rearrange(self.attend(tokens), "(b t) (h w) c -> b c t h w", b=b, t=t, h=h, w=w)


class TemporalAttention(_Attention):
    """Self-attention over the frames at each pixel, with a cosine embedding of frame position (order matters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b h w) t c")
        tokens = tokens + cosine_embedding(torch.arange(t, device=x.device), c).to(tokens.dtype)[None]
        return x + rearrange(self.attend(tokens), "(b h w) t c -> b c t h w", b=b, h=h, w=w)


class _Stage(nn.Module):
    """ResBlock -> spatial attention (optional) -> temporal attention (optional)."""

    def __init__(self, block: ResBlock3D, channels: int, spatial: bool, temporal: bool, heads: int, groups: int):
        super().__init__()
        self.block = block
        self.spatial = SpatialAttention(channels, heads, groups) if spatial else nn.Identity()
        self.temporal = TemporalAttention(channels, heads, groups) if temporal else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, condition: SpadeCondition | None) -> torch.Tensor:
        return self.temporal(self.spatial(self.block(x, embedding, condition)))


class SpadeUNet3D(nn.Module):
    """Denoiser ``(x_t (B, C, T, H, W), time (B,), one-hot ED map (B, K, H, W), EF (B,) or None) -> (B, C, T, H, W)``.

    Args:
        in_channels: video channels (1 for grey echo).
        base_channels / channel_mults: width per resolution level (the public code: 32 and (1, 2, 4)).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more, for the skip).
        num_classes: channels of the one-hot map (CAMUS: 4 = background, LV, myocardium, LA).
        spatial_attention_levels: levels (0 = full resolution) with spatial attention; full-resolution attention
            over 112 x 112 pixels is what makes video UNets slow, so the default uses it at the coarsest level only.
        temporal_attention: temporal attention after every block (of the levels in ``temporal_attention_levels``).
        temporal_attention_levels: levels with temporal attention (None: every level). At full resolution it attends
            over the frames of every pixel (the most sequences; at 32 px a third of a training step's attention time);
            ``[levels - 1]`` keeps it where motion is coarse and the sequences few.
        frame_embed_dim: channels of the cosine frame-time embedding given to SPADE beside the map.
        spade_hidden: channels of SPADE's shared convolution (at full resolution it dominates the cost).
        ef_conditioning: condition on a requested EF (see :meth:`ef_code`): in the time embedding of every block, in
            SPADE, and at the input.
        ef_center / ef_scale: the EF is standardised as ``(EF - ef_center) / ef_scale`` (EchoNet-Dynamic: ~55, ~12-15).
        temporal_kernel: temporal extent of the 3D convolutions (1 = per-frame 2D convolutions).
        gradient_checkpointing: recompute each block's activations in the backward pass (24+ frames at 112 px).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        num_classes: int = 4,
        spatial_attention_levels: Sequence[int] | None = None,
        temporal_attention: bool = True,
        temporal_attention_levels: Sequence[int] | None = None,
        heads: int = 4,
        frame_embed_dim: int = 16,
        ef_conditioning: bool = False,
        ef_center: float = 55.0,
        ef_scale: float = 15.0,
        temporal_kernel: int = 3,
        groups: int = 8,
        dropout: float = 0.0,
        spade_hidden: int = 32,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.frame_embed_dim = frame_embed_dim
        self.ef_conditioning = ef_conditioning
        self.gradient_checkpointing = gradient_checkpointing
        levels = len(channel_mults)
        attention = set(spatial_attention_levels if spatial_attention_levels is not None else [levels - 1])
        temporal_levels = set(temporal_attention_levels if temporal_attention_levels is not None else range(levels))
        embed_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.ef_center, self.ef_scale = float(ef_center), float(ef_scale)
        if ef_conditioning:
            self.ef_mlp = nn.Sequential(nn.Linear(EF_CODE_DIM, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
            self.null_ef = nn.Parameter(torch.zeros(embed_dim))
        # SPADE's EF channels: the EF code, the EF on the LV cavity, and the EF times each frame-time channel
        ef_channels = EF_CODE_DIM + 1 + frame_embed_dim if ef_conditioning else 0
        condition_channels = num_classes + frame_embed_dim + ef_channels
        widths = [base_channels * m for m in channel_mults]

        def stage(cin: int, cout: int, level: int, spade: bool) -> _Stage:
            block = ResBlock3D(cin, cout, embed_dim, condition_channels if spade else None, temporal_kernel, groups,
                               dropout, spade_hidden)  # fmt: skip
            temporal = temporal_attention and min(level, levels - 1) in temporal_levels  # the middle: the coarsest
            return _Stage(block, cout, level in attention, temporal, heads, groups)

        # with EF conditioning the encoder sees the EF too: the stem also reads the EF painted on the LV cavity
        stem_channels = in_channels + (1 if ef_conditioning else 0)
        self.stem = nn.Conv3d(stem_channels, base_channels, (1, 3, 3), padding=(0, 1, 1))
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths = [base_channels]
        channels = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(channels, width, level, spade=False))
                channels = width
                skip_widths.append(channels)
            self.down.append(blocks)
            if level < levels - 1:
                self.downsample.append(nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
                skip_widths.append(channels)
        self.middle = nn.ModuleList(
            [stage(channels, channels, levels - 1, spade=True), stage(channels, channels, levels, spade=True)]
        )
        self.middle[1].spatial = nn.Identity()
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(stage(channels + skip_widths.pop(), widths[level], level, spade=True))
                channels = widths[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1)))
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(channels, groups), channels), nn.SiLU(), nn.Conv3d(channels, in_channels, 1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def ef_code(self, ef: torch.Tensor) -> torch.Tensor:
        """``(B,)`` EF in percent (NaN = no EF) -> ``(B, EF_CODE_DIM)``: the standardised EF ``z``, two smooth Fourier
        features of it and a known-EF flag; all zero for the null EF. A scalar that moves linearly with the EF (rather
        than a high-frequency embedding of the raw percent) is what lets a small network tie the contraction to the
        EF and interpolate between the EFs it was trained on."""
        ef = ef.float()
        known = torch.isfinite(ef)
        z = (torch.nan_to_num(ef, nan=self.ef_center) - self.ef_center) / self.ef_scale
        code = torch.stack([z, torch.sin(z), torch.cos(z) - 1, torch.ones_like(z)], dim=1)
        return code * known[:, None]

    def _ef_or_null(self, ef: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), math.nan, device=device) if ef is None else ef

    def condition(self, seg_map: torch.Tensor, num_frames: int, ef: torch.Tensor | None = None) -> SpadeCondition:
        """SPADE's input: the one-hot map duplicated over time beside the cosine frame-time embedding; with EF
        conditioning also the EF code, the standardised EF on the LV cavity (label 1) and the EF times each frame-time
        channel (how far the walls have moved at frame t scales with the EF: a product SPADE's one conv cannot form);
        the EF channels are all zero for the null EF. Channels in that order (``.dense()``), kept factorised into the
        per-frame-constant and per-pixel-constant ones (:class:`SpadeCondition`)."""
        b, k = seg_map.shape[:2]
        frames = torch.arange(num_frames, device=seg_map.device, dtype=torch.float32)
        frame_time = cosine_embedding(frames, self.frame_embed_dim, max_period=100.0).T  # (E, T)
        e = self.frame_embed_dim
        static, temporal = [seg_map.float()], [frame_time[None].expand(b, -1, -1)]
        static_index, temporal_index = list(range(k)), list(range(k, k + e))
        if self.ef_conditioning:
            code = self.ef_code(self._ef_or_null(ef, b, seg_map.device))  # (B, D)
            z = code[:, 0]
            temporal.append(code[:, :, None].expand(-1, -1, num_frames))
            static.append(self.ef_on_cavity(seg_map, z))
            temporal.append(z[:, None, None] * frame_time[None])  # (B, E, T)
            d = code.shape[1]
            temporal_index += list(range(k + e, k + e + d)) + list(range(k + e + d + 1, k + 2 * e + d + 1))
            static_index.append(k + e + d)
        return SpadeCondition(torch.cat(static, 1), torch.cat(temporal, 1), tuple(static_index), tuple(temporal_index))

    def ef_on_cavity(self, seg_map: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)``: the standardised EF where the ED map is LV cavity (label 1), zero elsewhere."""
        return seg_map[:, 1:2].float() * z[:, None, None, None]

    def embedding(self, time: torch.Tensor, ef: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time_mlp(cosine_embedding(time, self.base_channels))
        if self.ef_conditioning:
            ef = self._ef_or_null(ef, len(time), time.device).float()
            ef_embedding = self.ef_mlp(self.ef_code(ef))
            known = torch.isfinite(ef)[:, None]
            embedding = embedding + torch.where(known, ef_embedding, self.null_ef.to(ef_embedding.dtype))
        return embedding

    def _run(self, stage: _Stage, x: torch.Tensor, embedding: torch.Tensor, condition: SpadeCondition | None):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, embedding, condition, use_reentrant=False)
        return stage(x, embedding, condition)

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, seg_map: torch.Tensor, ef: torch.Tensor | None = None
    ) -> torch.Tensor:
        embedding = self.embedding(time, ef)
        condition = self.condition(seg_map, x.shape[2], ef)
        if self.ef_conditioning:
            z = self.ef_code(self._ef_or_null(ef, len(x), x.device))[:, 0]
            x = torch.cat([x, self.ef_on_cavity(seg_map, z)[:, :, None].expand(-1, -1, x.shape[2], -1, -1).to(x)], 1)
        h = self.stem(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for stage in blocks:
                h = self._run(stage, h, embedding, None)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for stage in self.middle:
            h = self._run(stage, h, embedding, condition)
        for index, blocks in enumerate(self.up):
            for stage in blocks:
                h = self._run(stage, torch.cat([h, skips.pop()], dim=1), embedding, condition)
            if index < len(self.upsample):
                h = self.upsample[index](F.interpolate(h, scale_factor=(1, 2, 2), mode="nearest"))
        return self.out(h)
