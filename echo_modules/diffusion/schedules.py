"""Noise schedules and training targets of the diffusion synthesizer, as pure functions.

Discrete diffusion (DDPM, Ho et al. 2020): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (the paper's eq. 4)
with ``abar_t = prod_{s<=t} (1 - beta_s)``; the network predicts ``eps`` (eq. 5) or the velocity
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022). Flow matching / rectified flow (Lipman et al.
2023, Liu et al. 2023): ``x_t = (1 - t) x_0 + t eps`` on the straight path from data (t = 0) to noise (t = 1), whose
velocity ``d x_t / dt = eps - x_0`` is the target.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["linear", "cosine"]
Objective = Literal["epsilon", "v", "flow"]


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear variance schedule (Ho et al. 2020), float64 ``(T,)``."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021): ``abar(t) = cos^2((t/T + s) / (1 + s) * pi/2)``, betas capped."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(schedule: Schedule, num_timesteps: int = 1000) -> torch.Tensor:
    if schedule == "linear":
        return linear_betas(num_timesteps)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``."""
    return torch.cumprod(1 - betas, dim=0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcastable against ``like``, in its dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Draw from ``q(x_t | x_0)`` given ``abar_t`` per sample ``(B,)``."""
    a = _per_sample(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v-prediction target ``sqrt(abar) eps - sqrt(1 - abar) x_0`` (d x_t / d phi with abar = cos^2 phi)."""
    a = _per_sample(alpha_bar, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def x0_from_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, objective: Literal["epsilon", "v"]
) -> torch.Tensor:
    """The clean sample implied by an epsilon or v prediction at ``x_t``."""
    a = _per_sample(alpha_bar, x_t)
    if objective == "epsilon":
        return (x_t - (1 - a).sqrt() * prediction) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * prediction


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path ``x_t = (1 - t) x_0 + t eps`` for ``t`` ``(B,)`` in [0, 1]."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified-flow velocity ``d x_t / dt = eps - x_0`` (constant along the straight path)."""
    return noise - x0


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, frames_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over ``(B, C, T, H, W)``, counting only real frames (``frames_mask`` ``(B, T)``) when given:
    padded frames of short videos carry no signal to learn."""
    error = (prediction.float() - target.float()) ** 2
    if frames_mask is None:
        return error.mean()
    weight = frames_mask.to(error.dtype)[:, None, :, None, None].expand_as(error)
    return (error * weight).sum() / weight.sum().clamp(min=1)
