"""The Consistency Deformation Codebook (CDC): positional encoding plus vector quantisation of video features.

Step 1 of the paper's CDC: ``F~ = argmin_k ||(F + P) - Z_k||^2`` per token; step 2: the quantisation loss
``L_q = ||sg[xi(I)] - F~||^2 + lambda ||sg[F~] - xi(I)||^2`` (codebook term + commitment term). Tokens pass the
quantiser with the straight-through estimator, so the decoder's gradient reaches the encoder. Entries that stop being
chosen are restarted on recent features (as the public code does), so the whole codebook stays in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class FactorisedPositionalEncoding(nn.Module):
    """Learnable positional encoding ``P[c, t, h, w] = P_time[c, t] * P_space[c, h, w]`` (an outer product per
    channel, as the public code combines its temporal and spatial embeddings), resized when the token grid differs."""

    def __init__(self, dim: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        frames, height, width = grid
        self.time = nn.Parameter(torch.empty(dim, frames))
        self.space = nn.Parameter(torch.empty(dim, height, width))
        nn.init.xavier_uniform_(self.time)
        nn.init.xavier_uniform_(rearrange(self.space, "c h w -> c (h w)"))

    def forward(self, features: Tensor) -> Tensor:
        """``features`` ``(B, C, T, H, W)`` plus the encoding (interpolated to ``(T, H, W)`` when needed)."""
        encoding = torch.einsum("ct,chw->cthw", self.time, self.space)
        if encoding.shape[1:] != features.shape[2:]:
            encoding = F.interpolate(encoding[None], size=features.shape[2:], mode="trilinear", align_corners=False)[0]
        return features + encoding.to(features.dtype)


@dataclass
class Quantised:
    """What the quantiser returns for features ``(B, D, T, H, W)``."""

    quantised: Tensor  # straight-through quantised features F~ (values of codebook entries, gradient to the input)
    indices: Tensor  # (B, T, H, W) chosen entries
    loss: Tensor  # L_q
    perplexity: Tensor  # exp(entropy) of the entries used in this batch: how many are effectively in use
    used: Tensor  # how many distinct entries this batch chose


class VectorQuantiser(nn.Module):
    """Nearest-entry quantisation with the loss of CDC step 2 and dead-entry restarts.

    The codebook is a parameter trained by the first term of ``L_q``. A running (EMA) count of how often each entry is
    chosen, summed over DDP ranks, marks entries below ``restart_threshold`` as dead; :meth:`restart_dead_codes`
    (called after an optimiser step, never inside a forward pass that autograd still needs) moves them onto recent
    features broadcast from rank 0, so every rank keeps the same codebook.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        commitment: float = 0.25,
        usage_decay: float = 0.99,
        restart_threshold: float = 1.0,
        recent_features: int = 4096,
    ) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.dim = dim
        self.commitment = commitment
        self.usage_decay = usage_decay
        self.restart_threshold = restart_threshold
        self.recent_features = recent_features
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) / dim**0.5)
        self.register_buffer("usage", torch.ones(num_codes))
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # entries restarted so far (a diagnostic)
        self._recent: Tensor | None = None

    @torch.no_grad()
    def _sample_rows(self, flat: Tensor, count: int) -> Tensor:
        """``count`` rows of ``flat`` drawn at random (with small jitter when there are fewer rows), identical on all
        ranks (rank 0's draw is broadcast)."""
        repeats = -(-count // len(flat))
        rows = flat.repeat(repeats, 1)
        if repeats > 1:
            rows = rows + torch.randn_like(rows) * 0.01 * rows.std().clamp_min(1e-6)
        rows = rows[torch.randperm(len(rows), device=rows.device)[:count]].contiguous()
        if _distributed():
            dist.broadcast(rows, 0)
        return rows

    @torch.no_grad()
    def _track_usage(self, flat: Tensor, indices: Tensor) -> None:
        """Running usage per entry (summed over ranks: a collective, so every rank calls it, maybe with no rows) and
        a sample of recent features to restart dead entries on."""
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if _distributed():
            dist.all_reduce(counts)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        if len(flat):
            keep = min(len(flat), self.recent_features)
            self._recent = flat[torch.randperm(len(flat), device=flat.device)[:keep]].detach().clone()

    @torch.no_grad()
    def restart_dead_codes(self) -> Tensor:
        """Move entries whose usage fell below the threshold onto recent features; returns the restarted rows'
        indices (the caller resets their optimiser state: a restarted entry must not keep its old Adam moments)."""
        if self._recent is None:
            return torch.zeros(0, dtype=torch.long, device=self.usage.device)
        dead = self.usage < self.restart_threshold
        count = int(dead.sum())
        if count:
            self.codebook.data[dead] = self._sample_rows(self._recent, count).to(self.codebook.dtype)
            self.usage[dead] = 1.0  # a fresh entry gets a grace period before it can be restarted again
            self.restarts += count
        return dead.nonzero().flatten()

    def used_codes(self) -> int:
        """Entries whose running usage is at or above the restart threshold (alive)."""
        return int((self.usage >= self.restart_threshold).sum())

    def forward(self, features: Tensor, learn_from: Tensor | None = None, learn: bool = True) -> Quantised:
        """Quantise ``features`` ``(B, D, T, H, W)`` token by token (in float32, also under autocast).

        ``learn_from`` ``(B,)`` bool: the clips whose tokens train the codebook (its L_q term, usage counts and
        restarts); default all. The commitment term applies to every token. ``learn=False`` (the same on every
        rank): a pass that teaches the codebook nothing (e.g. the cycle passes on generated clips): no codebook term,
        and usage is not tracked, so the running usage decays once per learning pass and not on passes without rows.
        """
        batch, _, frames, height, width = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            flat = rearrange(features, "b d t h w -> (b t h w) d")
            learning = torch.ones(len(flat), dtype=torch.bool, device=flat.device)
            if not learn:
                learning = torch.zeros_like(learning)
            elif learn_from is not None:
                learning = learn_from.to(flat.device).bool().repeat_interleave(frames * height * width)
            if self.training and not bool(self.initialised):
                with torch.no_grad():  # start the codebook on real features (of every clip: all ranks take part)
                    self.codebook.data.copy_(self._sample_rows(flat.detach(), self.num_codes))
                    self.initialised.fill_(True)
            codebook = self.codebook.float()
            with torch.no_grad():
                distances = (
                    flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.square().sum(1)[None]
                )
                indices = distances.argmin(1)
            chosen = F.embedding(indices, codebook)
            # L_q: the codebook term moves entries to the features, the commitment term (lambda) the features to them
            codebook_term = (chosen - flat.detach()).square().mean(1)[learning].sum() / learning.sum().clamp_min(1)
            loss = codebook_term + self.commitment * F.mse_loss(flat, chosen.detach())
            straight_through = flat + (chosen - flat).detach()
            if self.training and learn:
                self._track_usage(flat.detach()[learning], indices[learning])
            probabilities = torch.bincount(indices, minlength=self.num_codes).float() / len(indices)
            perplexity = torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum())
            used = (probabilities > 0).sum()
        quantised = rearrange(straight_through, "(b t h w) d -> b d t h w", b=batch, t=frames, h=height, w=width)
        return Quantised(
            quantised=quantised,
            indices=indices.view(batch, frames, height, width),
            loss=loss,
            perplexity=perplexity,
            used=used,
        )


class ConsistencyDeformationCodebook(nn.Module):
    """CDC: add the positional encoding to the extracted features, then quantise them (Step 1 and Step 2)."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int, int],
        num_codes: int = 2048,
        commitment: float = 0.25,
        restart_threshold: float = 1.0,
        positional_encoding: bool = True,
        quantise: bool = True,
    ) -> None:
        """``positional_encoding`` / ``quantise`` False: the ablations without P (Table 5) and without the codebook
        (Table 4's "CDC off": features pass unquantised, ``L_q`` is zero)."""
        super().__init__()
        self.positional_encoding = FactorisedPositionalEncoding(dim, grid) if positional_encoding else None
        self.quantiser = VectorQuantiser(num_codes, dim, commitment=commitment, restart_threshold=restart_threshold)
        self.quantise = quantise

    def forward(
        self, features: Tensor, learn_from: Tensor | None = None, learn: bool = True
    ) -> tuple[Tensor, Quantised]:
        """Returns the positioned features ``F + P`` and their quantisation (``learn_from``, ``learn``: see the
        quantiser). Without positional encoding (the ablation) ``F + P`` is ``F``."""
        positioned = self.positional_encoding(features) if self.positional_encoding is not None else features
        if not self.quantise:
            zero = positioned.new_zeros((), dtype=torch.float32)
            indices = positioned.new_zeros((positioned.shape[0], *positioned.shape[2:]), dtype=torch.long)
            return positioned, Quantised(positioned.float(), indices, zero, zero, zero)
        return positioned, self.quantiser(positioned, learn_from, learn)
