"""Schedules, objectives and samplers of the diffusion synthesizer, each against a naive reference.

The samplers are checked on data whose exact denoiser is known in closed form (a Gaussian), so "the sampler is
right" means "it turns noise into that Gaussian", not "it runs".
"""

from __future__ import annotations

import math

import pytest
import torch

from echo_modules.diffusion.samplers import ddim_invert, network_calls, sample_diffusion, sample_flow
from echo_modules.diffusion.schedules import (
    alphas_cumprod,
    cosine_betas,
    flow_interpolate,
    flow_target,
    linear_betas,
    make_betas,
    masked_mse,
    q_sample,
    velocity_target,
    x0_from_prediction,
)

MU, SIGMA = 0.7, 0.3  # the data distribution N(MU, SIGMA^2) per element


def gaussian_denoiser(betas: torch.Tensor, objective: str = "epsilon"):
    """The exact E[eps | x_t] (or v) for data ~ N(MU, SIGMA^2)."""
    alpha_bar = alphas_cumprod(betas)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a)
        if objective == "epsilon":
            return eps
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return model_fn


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact E[eps - x_0 | x_t] on the straight path for data ~ N(MU, SIGMA^2)."""
    tt = t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    var = (1 - tt) ** 2 * SIGMA**2 + tt**2
    centred = x - (1 - tt) * MU
    return tt * centred / var - (MU + (1 - tt) * SIGMA**2 * centred / var)


def test_schedules_match_a_naive_product_and_diffusers():
    from diffusers import DDPMScheduler

    for betas, name in ((linear_betas(1000), "linear"), (cosine_betas(1000), "squaredcos_cap_v2")):
        naive, product = [], 1.0
        for beta in betas.tolist():
            product *= 1 - beta
            naive.append(product)
        assert torch.allclose(alphas_cumprod(betas), torch.tensor(naive, dtype=torch.float64), rtol=1e-10)
        reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name).alphas_cumprod.double()
        assert torch.allclose(alphas_cumprod(betas), reference, atol=1e-5)
    cosine = alphas_cumprod(cosine_betas(1000))
    assert cosine[0] > 0.999 and cosine[-1] < 1e-4 and (cosine.diff() < 0).all()
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_has_the_forward_marginal(schedule):
    alpha_bar = alphas_cumprod(make_betas(schedule))
    x0 = torch.linspace(-2, 2, 5, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for t in (0, 250, 600, 999):
        a = alpha_bar[t]
        noise = torch.randn(40000, 5, generator=generator, dtype=torch.float64)
        x_t = q_sample(x0.expand(40000, 5), noise, a.expand(40000))
        assert torch.allclose(x_t.mean(0), a.sqrt() * x0, atol=4 * math.sqrt((1 - a) / 40000) + 1e-9)
        assert torch.allclose(x_t.var(0), (1 - a).expand(5), rtol=0.03, atol=1e-6)


def test_velocity_target_is_the_derivative_along_the_angle_and_conversions_invert():
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, generator=generator, dtype=torch.float64).unbind(0)[:2]
    phi = torch.tensor([0.3, 0.9, 1.2, 1.5], dtype=torch.float64)[:, None]
    h = 1e-6
    path = lambda p: torch.cos(p) * x0 + torch.sin(p) * noise  # noqa: E731  abar = cos^2(phi)
    finite_difference = (path(phi + h) - path(phi - h)) / (2 * h)
    alpha_bar = torch.cos(phi[:, 0]) ** 2
    assert torch.allclose(velocity_target(x0, noise, alpha_bar), finite_difference, atol=1e-8)
    x_t = q_sample(x0, noise, alpha_bar)
    assert torch.allclose(x0_from_prediction(velocity_target(x0, noise, alpha_bar), x_t, alpha_bar, "v"), x0)
    assert torch.allclose(x0_from_prediction(noise, x_t, alpha_bar, "epsilon"), x0)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([10, 300, 700, 990])
    ours = velocity_target(x0.float(), noise.float(), scheduler.alphas_cumprod[t])
    assert torch.allclose(ours, scheduler.get_velocity(x0.float(), noise.float(), t), atol=1e-6)


def test_flow_matching_target_is_the_straight_path_velocity():
    generator = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 3, 16, generator=generator, dtype=torch.float64).unbind(0)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    assert torch.equal(flow_interpolate(x0, noise, zeros), x0)
    assert torch.equal(flow_interpolate(x0, noise, ones), noise)
    target = flow_target(x0, noise)
    for t in (0.1, 0.5, 0.8):  # constant velocity: a straight line
        h = 1e-4
        derivative = (flow_interpolate(x0, noise, ones * (t + h)) - flow_interpolate(x0, noise, ones * (t - h))) / (
            2 * h
        )
        assert torch.allclose(derivative, target, atol=1e-8)
    # with the exact per-pair velocity, one Euler step from the noise lands on the data
    assert torch.allclose(sample_flow(lambda x, t: target, noise, num_steps=1), x0)
    assert network_calls("heun", 8) == 15 and network_calls("euler", 8) == 8


def test_masked_mse_ignores_padded_frames():
    prediction, target = torch.zeros(2, 1, 4, 3, 3), torch.ones(2, 1, 4, 3, 3)
    target[:, :, 2:] = 100.0  # padding with a huge error
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx(1.0)
    assert masked_mse(prediction, target).item() > 1000


@pytest.mark.parametrize(
    ("schedule", "objective", "sampler", "steps", "tolerance"),
    [
        ("linear", "epsilon", "ddpm", 1000, 0.015),
        ("cosine", "v", "ddpm", 250, 0.015),
        ("cosine", "epsilon", "ddim", 100, 0.015),
        ("cosine", "v", "dpmsolver", 20, 0.015),
    ],
)
def test_diffusion_samplers_turn_noise_into_the_data_distribution(schedule, objective, sampler, steps, tolerance):
    betas = make_betas(schedule)
    noise = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample_diffusion(gaussian_denoiser(betas, objective), noise, betas, objective, sampler, steps,
                           generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert abs(out.mean().item() - MU) < tolerance
    assert abs(out.std().item() - SIGMA) < tolerance
    # control: the same sampler with a denoiser for the wrong data does not reach it
    wrong = sample_diffusion(lambda x, t: torch.zeros_like(x), noise, betas, objective, sampler, steps,
                             generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert abs(wrong.mean().item() - MU) > 10 * tolerance


@pytest.mark.parametrize(("method", "steps", "tolerance"), [("euler", 100, 0.01), ("heun", 25, 0.01)])
def test_flow_integrators_reach_the_data_distribution(method, steps, tolerance):
    noise = torch.randn(2, 4000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = sample_flow(gaussian_velocity, noise, steps, method)
    assert abs(out.mean().item() - MU) < tolerance and abs(out.std().item() - SIGMA) < tolerance


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    noise = torch.randn(1, 4000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = sample_flow(gaussian_velocity, noise, 400, "heun")
    euler = (sample_flow(gaussian_velocity, noise, 8, "euler") - exact).abs().mean()
    heun = (sample_flow(gaussian_velocity, noise, 8, "heun") - exact).abs().mean()
    assert heun < 0.5 * euler


def naive_ddim(model_fn, noise, betas, num_steps):
    """DDIM at eta 0 written out (Song et al. 2021, eq. 12) on the trailing timestep grid."""
    alpha_bar = alphas_cumprod(betas)
    steps = torch.arange(len(betas), 0, -len(betas) / num_steps).round().long() - 1
    x = noise
    for i, t in enumerate(steps.tolist()):
        a = alpha_bar[t]
        a_prev = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0, dtype=torch.float64)
        eps = model_fn(x, torch.full((len(x),), t))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_is_deterministic_matches_the_naive_update_and_inverts_at_full_steps(schedule):
    betas = make_betas(schedule)
    model_fn = gaussian_denoiser(betas)
    noise = torch.randn(3, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    first = sample_diffusion(model_fn, noise, betas, "epsilon", "ddim", 20, generator=torch.Generator().manual_seed(1))
    second = sample_diffusion(model_fn, noise, betas, "epsilon", "ddim", 20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)  # eta 0: the generator is never drawn from
    assert torch.allclose(first, naive_ddim(model_fn, noise, betas, 20), atol=1e-5)  # diffusers keeps abar in fp32
    stochastic = sample_diffusion(model_fn, noise, betas, "epsilon", "ddim", 20, eta=1.0,
                                  generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert not torch.allclose(first, stochastic, atol=1e-3)
    # inversion: data -> noise -> data at the full T steps
    x0 = MU + SIGMA * torch.randn(3, 64, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    latent = ddim_invert(model_fn, x0, betas, "epsilon")
    assert abs(latent.std().item() - 1.0) < 0.15  # it is noise-like
    back = sample_diffusion(model_fn, latent, betas, "epsilon", "ddim", len(betas))
    assert (back - x0).abs().max() < 0.02
    assert (latent - x0).abs().mean() > 0.3  # and it was not the identity
