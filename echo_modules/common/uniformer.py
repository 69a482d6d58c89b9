"""UniFormer for video (Li et al., ICLR 2022), the backbone of CoReEcho: convolution where attention would be wasted.

Four stages. Stages 1-2 use *local* blocks: a depthwise 3x3x3 convolution as dynamic position encoding, then a
"local MHRA" (1x1x1 - depthwise 5x5x5 - 1x1x1 convolutions, i.e. token affinity restricted to a neighbourhood and
learned as a kernel) and a convolutional MLP, all with BatchNorm. Stages 3-4 use *global* blocks: the same position
convolution, then full multi-head self-attention over all space-time tokens and an MLP, with LayerNorm. A stem
Conv3d k(3,4,4) s(2,4,4) halves time and quarters space; each later stage halves space with a k(1,2,2) convolution.
The pooled, BatchNorm-ed feature of the last stage (512-d for UniFormer-S) is the clip's representation.

Parameter names follow the public UniFormer release (``patch_embed1.proj``, ``blocks3.0.attn.qkv``, ``norm`` ...) so
its Kinetics-400 checkpoints load with ``pretrained=<path>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from lightning.pytorch.utilities import rank_zero_info
from timm.layers import DropPath, trunc_normal_
from torch import nn

from echo_modules.common.backbones import VideoEncoder


class PatchEmbed3d(nn.Module):
    """A strided Conv3d that turns a video (or a feature map) into a coarser grid of tokens, then LayerNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int],
        padding: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(video)
        channels_last = rearrange(tokens, "b c t h w -> b t h w c")
        return rearrange(self.norm(channels_last), "b t h w c -> b c t h w")


class ConvMlp(nn.Module):
    """Pointwise (1x1x1 convolution) MLP over a ``(B, C, T, H, W)`` map."""

    def __init__(self, channels: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TokenMlp(nn.Module):
    """MLP over ``(B, N, C)`` tokens."""

    def __init__(self, channels: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LocalBlock(nn.Module):
    """Stage 1-2 block: position conv, local MHRA (depthwise 5x5x5 between pointwise convs), conv MLP."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.BatchNorm3d(channels)
        self.conv1 = nn.Conv3d(channels, channels, 1)
        self.attn = nn.Conv3d(channels, channels, 5, padding=2, groups=channels)
        self.conv2 = nn.Conv3d(channels, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm3d(channels)
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (``scaled_dot_product_attention``: flash/memory-efficient kernels)."""

    def __init__(self, channels: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query, key, value = rearrange(self.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj_drop(self.proj(rearrange(attended, "b h n d -> b n (h d)")))


class GlobalBlock(nn.Module):
    """Stage 3-4 block: position conv, then a transformer block (global MHSA + MLP) over the space-time tokens."""

    def __init__(
        self, channels: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.attn = SelfAttention(channels, num_heads, dropout=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = TokenMlp(channels, int(channels * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        _, _, frames, height, width = x.shape
        tokens = rearrange(x, "b c t h w -> b (t h w) c")
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return rearrange(tokens, "b (t h w) c -> b c t h w", t=frames, h=height, w=width)


class UniFormer(VideoEncoder):
    """UniFormer video backbone: ``forward(video (B, C, T, H, W)) -> (B, dims[-1])``.

    Defaults are UniFormer-S (depths 3-4-8-3, dims 64-128-320-512, head_dim 64; 21M parameters). A CPU-sized
    variant for the phantom: ``depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], head_dim=16``.

    Args:
        depths / dims: blocks and channels per stage (stages 1-2 local, 3-4 global).
        head_dim: channels per attention head in the global stages.
        in_channels: input channels (1 for grey echo; 3 for Kinetics weights, or 1 with them summed, see below).
        mlp_ratio: MLP hidden width relative to the stage width.
        dropout / drop_path_rate: dropout after the stem, in MLPs and on attention outputs; stochastic depth rising
            linearly to ``drop_path_rate`` (CoReEcho's UniFormer-S: dropout 0.1, no stochastic depth).
        pretrained: path to a state dict (a UniFormer checkpoint, possibly wrapped in ``model``/``state_dict`` and
            with ``module.`` prefixes); the classifier ``head`` is dropped, and 3-channel stem weights are summed over
            channels when ``in_channels=1``.
        gradient_checkpointing: recompute each block in the backward pass (less memory, ~30% more compute).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 8, 3),
        dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        in_channels: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        drop_path_rate: float = 0.0,
        pretrained: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"UniFormer has 4 stages: got depths {list(depths)} and dims {list(dims)}")
        for dim in dims[2:]:
            if dim % head_dim:
                raise ValueError(f"global-stage width {dim} is not a multiple of head_dim {head_dim}")
        self.out_features = dims[-1]
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed1 = PatchEmbed3d(in_channels, dims[0], (3, 4, 4), (2, 4, 4), (1, 0, 0))
        self.pos_drop = nn.Dropout(dropout)
        self.patch_embed2 = PatchEmbed3d(dims[0], dims[1], (1, 2, 2), (1, 2, 2))
        self.patch_embed3 = PatchEmbed3d(dims[1], dims[2], (1, 2, 2), (1, 2, 2))
        self.patch_embed4 = PatchEmbed3d(dims[2], dims[3], (1, 2, 2), (1, 2, 2))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:stage]) for stage in range(4)]
        self.blocks1 = nn.ModuleList(
            LocalBlock(dims[0], mlp_ratio, dropout, rates[starts[0] + i]) for i in range(depths[0])
        )
        self.blocks2 = nn.ModuleList(
            LocalBlock(dims[1], mlp_ratio, dropout, rates[starts[1] + i]) for i in range(depths[1])
        )
        self.blocks3 = nn.ModuleList(
            GlobalBlock(dims[2], dims[2] // head_dim, mlp_ratio, dropout, rates[starts[2] + i])
            for i in range(depths[2])
        )
        self.blocks4 = nn.ModuleList(
            GlobalBlock(dims[3], dims[3] // head_dim, mlp_ratio, dropout, rates[starts[3] + i])
            for i in range(depths[3])
        )
        self.norm = nn.BatchNorm3d(dims[3])
        self.apply(_init_weights)
        if pretrained:
            self.load_pretrained(pretrained)

    def _stages(self):
        yield self.patch_embed1, self.blocks1
        yield self.patch_embed2, self.blocks2
        yield self.patch_embed3, self.blocks3
        yield self.patch_embed4, self.blocks4

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised feature map ``(B, dims[-1], T/2, H/32, W/32)``."""
        x = video
        for stage, (embed, blocks) in enumerate(self._stages()):
            x = embed(x)
            if stage == 0:
                x = self.pos_drop(x)
            for block in blocks:
                if self.gradient_checkpointing and self.training and x.requires_grad:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return self.norm(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return reduce(self.forward_features(video), "b c t h w -> b c", "mean")

    def load_pretrained(self, path: str | Path) -> None:
        """Load a UniFormer state dict from ``path`` (see the class docstring for what is adapted)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"UniFormer pretrained weights '{path}' not found: pass a path to a state dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("model", "state_dict", "model_state"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        own = self.state_dict()
        adapted = {}
        for name, tensor in state.items():
            for prefix in ("module.", "backbone.", "encoder."):
                name = name.removeprefix(prefix)
            if name.startswith("head.") or name not in own:
                continue
            if name == "patch_embed1.proj.weight" and tensor.shape[1] != own[name].shape[1] and own[name].shape[1] == 1:
                tensor = tensor.sum(dim=1, keepdim=True)  # grey input: the RGB filters summed
            if tensor.shape != own[name].shape:
                raise ValueError(
                    f"{path}: '{name}' has shape {tuple(tensor.shape)}, this UniFormer needs {tuple(own[name].shape)}"
                )
            adapted[name] = tensor
        if not adapted:
            raise ValueError(f"{path}: no parameter matches this UniFormer (is it a UniFormer video checkpoint?)")
        missing = [name for name in own if name not in adapted and not name.endswith("num_batches_tracked")]
        self.load_state_dict(adapted, strict=False)
        rank_zero_info(f"UniFormer: loaded {len(adapted)} tensors from {path}; {len(missing)} left at initialisation")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def uniformer_small(**kwargs) -> UniFormer:
    """UniFormer-S, the CoReEcho backbone."""
    return UniFormer(depths=(3, 4, 8, 3), dims=(64, 128, 320, 512), head_dim=64, **kwargs)


def uniformer_tiny(**kwargs) -> UniFormer:
    """A CPU-sized UniFormer (one block per stage, narrow) for the phantom and tests."""
    return UniFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), head_dim=16, **kwargs)
