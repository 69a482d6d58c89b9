"""Samplers: DDPM, DDIM (deterministic at eta 0, invertible) and DPM-Solver++ 2M through the `diffusers` schedulers,
and Euler/Heun integration of a rectified flow.

The network stays ours: every sampler takes ``model_fn(x, t) -> prediction`` (guidance already applied by the
caller). For discrete diffusion ``t`` is the integer timestep ``(B,)`` in ``[0, T)`` and the prediction is epsilon or
v; for flow ``t`` is continuous ``(B,)`` in ``[0, 1]`` (1 = noise) and the prediction is the velocity ``eps - x_0``.
The flow integrators are written here rather than taken from diffusers' FlowMatch schedulers, whose timestep shift
and sigma conventions are tied to its pipelines; ours are the plain ODE steps, tested against the exact flow of a
Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DiffusionSampler = Literal["ddpm", "ddim", "dpmsolver"]
FlowSampler = Literal["euler", "heun"]
SAMPLERS = ("ddpm", "ddim", "dpmsolver", "euler", "heun")


def _progress(iterable: Iterable, enabled: bool, description: str) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False)


def make_scheduler(
    sampler: DiffusionSampler, betas: torch.Tensor, objective: Literal["epsilon", "v"], eta_zero: bool = True
):
    """A diffusers scheduler for our betas: DDPM (ancestral), DDIM or DPM-Solver++ (2nd-order multistep)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=len(betas),
        trained_betas=betas.double().cpu().numpy(),
        prediction_type="epsilon" if objective == "epsilon" else "v_prediction",
    )
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if sampler == "ddim":
        # "trailing" spacing starts at t = T-1 for any step count; set_alpha_to_one makes the last step land on x_0
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if sampler == "dpmsolver":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing", lower_order_final=True
        )
    raise ValueError(f"unknown diffusion sampler {sampler!r} (ddpm, ddim, dpmsolver)")


@torch.no_grad()
def sample_diffusion(
    model_fn: ModelFn,
    noise: torch.Tensor,
    betas: torch.Tensor,
    objective: Literal["epsilon", "v"],
    sampler: DiffusionSampler = "ddim",
    num_steps: int = 50,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``noise`` ``(B, ...)`` to a sample with ``num_steps`` steps of ``sampler``.

    ``eta`` is DDIM's stochasticity (0 = deterministic); DDPM draws its fresh noise from ``generator``.
    """
    scheduler = make_scheduler(sampler, betas, objective)
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise
    for timestep in _progress(scheduler.timesteps, progress, f"{sampler} sampling"):
        t = torch.full((len(x),), int(timestep), device=x.device, dtype=torch.long)
        prediction = model_fn(x, t).to(x.dtype)
        kwargs = {"eta": eta} if sampler == "ddim" else {}
        if sampler in ("ddpm", "ddim") and generator is not None:
            kwargs["generator"] = generator
        x = scheduler.step(prediction, timestep, x, **kwargs).prev_sample
    return x


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    betas: torch.Tensor,
    objective: Literal["epsilon", "v"],
    num_steps: int | None = None,
) -> torch.Tensor:
    """Run deterministic DDIM backwards, ``x_0 -> x_T`` (the noise that DDIM at eta 0 maps back onto ``x_0``).

    Each step re-uses the prediction at the lower noise level (the usual DDIM inversion); at the full ``T`` steps the
    round trip is exact up to the ODE discretisation (see tests).
    """
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler(
        num_train_timesteps=len(betas),
        trained_betas=betas.double().cpu().numpy(),
        prediction_type="epsilon" if objective == "epsilon" else "v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(num_steps or len(betas), device=x0.device)
    x = x0
    ratio = len(betas) // scheduler.num_inference_steps
    for timestep in scheduler.timesteps:
        # the inverse step from (t - ratio) to t evaluates the model at the level it starts from
        start = max(int(timestep) - ratio, 0)
        t = torch.full((len(x),), start, device=x.device, dtype=torch.long)
        x = scheduler.step(model_fn(x, t).to(x.dtype), timestep, x).prev_sample
    return x


@torch.no_grad()
def sample_flow(
    model_fn: ModelFn,
    noise: torch.Tensor,
    num_steps: int = 16,
    method: FlowSampler = "euler",
    progress: bool = False,
) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from t = 1 (noise) to t = 0 (data) on a uniform grid, Euler or Heun (2nd order;
    the last step is Euler, as t = 0 is never evaluated). Heun costs two network calls per step but the last."""
    if method not in ("euler", "heun"):
        raise ValueError(f"flow sampler must be 'euler' or 'heun', got {method!r}")
    grid = torch.linspace(1.0, 0.0, num_steps + 1, device=noise.device, dtype=torch.float64)
    x = noise
    for i in _progress(range(num_steps), progress, f"flow {method}"):
        t, t_next = grid[i], grid[i + 1]
        dt = float(t_next - t)  # negative
        velocity = model_fn(x, torch.full((len(x),), float(t), device=x.device)).to(x.dtype)
        proposal = x + dt * velocity
        if method == "heun" and float(t_next) > 0:
            corrected = model_fn(proposal, torch.full((len(x),), float(t_next), device=x.device)).to(x.dtype)
            proposal = x + dt * 0.5 * (velocity + corrected)
        x = proposal
    return x


def network_calls(sampler: str, num_steps: int) -> int:
    """Network evaluations per sample (without guidance; classifier-free guidance doubles them)."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps
