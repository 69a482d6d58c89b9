"""Sampling time per video and training-step throughput of EchoDiffusion's SPADE 3D UNet.

Sampling cost is (network calls) x (time per call): classifier-free guidance doubles the batch of every call, the
samplers' own arithmetic is negligible. The time per guided call is measured (median of --repeats), every sampler's
time per video extrapolated from its call count (DDPM-1000 is never run in full), and the few-step flow sampler is
also run end to end as a check of the extrapolation. Reference: EchoDiffusion (Reynaud et al., MICCAI 2023) reports
62 s per 16-frame video; the issue's goal is <= 2 s on a GPU.

The cascade column is the base stage at half the size (guided) plus the super-resolution stage
(:mod:`echo_modules.diffusion.superres`, same width, unguided) sampling the full size with flow Euler-``--sr-steps``.
Training steps: the base stage (fp32, fp32 + gradient checkpointing, bf16 autocast) and the SR stage (fp32, bf16).

    python benchmarks/diffusion_sampling.py                    # 16 x 112 x 112, the camus.yaml network, CPU
    python benchmarks/diffusion_sampling.py --device cuda      # on a GPU (bf16 autocast rows = bf16-mixed)
    python benchmarks/diffusion_sampling.py --repeats 1 --threads 1 --no-warmup --train-batch 1   # a slow CPU

Measured 2026-12-01 on the shared 2-core AMD EPYC box under load average ~11 (five other jobs), 1 thread, one repeat,
no warm-up (single timings under contention: treat differences under ~30 % as noise), 8.5 M-parameter UNet
(base_channels 32, mults 1-2-4), 16 frames, batch 1:

    one guided call (batch 2): 28.97 s at 112 px, 4.95 s at 56 px; one SR call 56 -> 112 px: 12.48 s
    sampler           steps  calls  112 px s/video   cascade 56->112 s/video (SR: flow Euler-8, 99.8 s)
    DDPM               1000   1000        28966.6          5045.5
    DDIM                 50     50         1448.3           347.1
    DPM-Solver++ 2M      20     20          579.3           198.7
    DPM-Solver++ 2M      10     10          289.7           149.3
    flow Euler            8      8          231.7           139.4
    flow Heun             8     15          434.5           174.0
    flow Euler           25     25          724.2           223.5
    flow Heun            25     49         1419.4           342.2
    training step, batch 1     16 x 56 x 56 (SR from 28)    16 x 112 x 112 (SR from 56)
    base fp32                        8.22 s                       56.8 s
    base fp32 + checkpointing        9.92 s                       38.8 s
    base bf16 autocast               4.88 s                       22.8 s
    SR fp32                          7.80 s                       35.0 s
    SR bf16 autocast                 4.77 s                       20.7 s

What carries over to a GPU are the call counts (DDPM 1000, DDIM 50, DPM-Solver++ n, Euler n, Heun 2n - 1; guidance
doubles the batch, not the calls) and the cascade's saving (a 56 px call costs ~1/6 of a 112 px one here); the
<= 2 s / video goal (EchoDiffusion: 62 s) is unmeasured until a GPU run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from echo_modules.diffusion import EchoDiffusion, SpadeUNet3D
from echo_modules.diffusion.samplers import network_calls
from echo_modules.diffusion.superres import SuperResDiffusion, SuperResUNet3D


def build(args) -> EchoDiffusion:
    network = SpadeUNet3D(base_channels=args.base_channels, channel_mults=(1, 2, 4), num_res_blocks=args.res_blocks,
                          spatial_attention_levels=[2], spade_hidden=32, frame_embed_dim=16, heads=4,
                          ef_conditioning=True)  # fmt: skip
    return EchoDiffusion(network, objective="flow", sampler="euler", ema_decay=None).to(args.device).eval()


def build_superres(args) -> SuperResDiffusion:
    """The cascade's SR stage at the same width (no map guidance, as configs/diffusion/*_sr.yaml: one call a step)."""
    network = SuperResUNet3D(base_channels=args.base_channels, channel_mults=(1, 2, 4), num_res_blocks=args.res_blocks,
                             spatial_attention_levels=[2], spade_hidden=32, frame_embed_dim=16, heads=4)  # fmt: skip
    return SuperResDiffusion(network, low_res_size=args.size // 2, objective="flow", sampler="euler",
                             guidance_scale=0.0, ema_decay=None).to(args.device).eval()  # fmt: skip


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="videos per sampling call")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--res-blocks", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--train-size", type=int, default=None, help="frame size of the training steps (default --size)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up calls (slow CPUs)")
    parser.add_argument("--sr-steps", type=int, default=8, help="flow Euler steps of the super-resolution stage")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warm = not args.no_warmup
    torch.manual_seed(0)
    model = build(args)
    network = model.network
    b, t, s = args.batch, args.frames, args.size
    x = torch.randn(2 * b, 1, t, s, s, device=args.device)
    seg = torch.zeros(2 * b, 4, s, s, device=args.device)
    time_in, ef = torch.full((2 * b,), 500.0, device=args.device), torch.full((2 * b,), 55.0, device=args.device)
    params = sum(p.numel() for p in network.parameters()) / 1e6
    print(f"SPADE 3D UNet {params:.1f} M parameters, {t} x {s} x {s} videos, batch {b}, device {args.device}")
    low = s // 2
    sr_model = build_superres(args)
    x_low, seg_low = x[:, :, :, :low, :low].contiguous(), seg[:, :, :low, :low].contiguous()
    with torch.no_grad():
        if warm:
            network(x, time_in, seg, ef)
        per_call = timed(lambda: network(x, time_in, seg, ef), args.repeats, args.device)
        if warm:
            network(x_low, time_in, seg_low, ef)
        per_call_low = timed(lambda: network(x_low, time_in, seg_low, ef), args.repeats, args.device)
        level = torch.full((b,), 0.1, device=args.device)
        sr_call = partial(sr_model.network, x[:b], time_in[:b], seg[:b], None, x[:b], level)
        if warm:
            sr_call()
        per_call_sr = timed(sr_call, args.repeats, args.device)
    print(f"one guided network call (batch {2 * b}): {per_call:.3f} s at {s} px, {per_call_low:.3f} s at {low} px")
    print(
        f"one SR-stage call {low} -> {s} px (batch {b}, unguided): {per_call_sr:.3f} s; the SR stage samples with "
        f"flow Euler-{args.sr_steps}: {args.sr_steps * per_call_sr / b:.2f} s / video\n"
    )
    rows = [("DDPM", "ddpm", 1000), ("DDIM", "ddim", 50), ("DPM-Solver++ 2M", "dpmsolver", 20),
            ("DPM-Solver++ 2M", "dpmsolver", 10), ("flow Euler", "euler", 8), ("flow Heun", "heun", 8),
            ("flow Euler", "euler", 25), ("flow Heun", "heun", 25)]  # fmt: skip
    sr_seconds = args.sr_steps * per_call_sr / b
    print(
        f"{'sampler':<18}{'steps':>6}{'calls':>7}{f'{s} px s/video':>16}{'vs 62 s':>9}"
        f"{f'cascade {low}->{s} s/video':>26}{'vs 62 s':>9}"
    )
    for name, sampler, steps in rows:
        calls = network_calls(sampler, steps)
        seconds = calls * per_call / b
        cascade = calls * per_call_low / b + sr_seconds
        print(
            f"{name:<18}{steps:>6}{calls:>7}{seconds:>16.2f}{62.0 / seconds:>8.2f}x{cascade:>26.2f}"
            f"{62.0 / cascade:>8.2f}x"
        )
    if 8 * per_call > 120:
        print("end-to-end check skipped: flow Euler-8 would take over 2 minutes here")
    else:
        ed_mask = torch.randint(0, 4, (b, s, s), device=args.device)
        generate = partial(model.generate, ed_mask, torch.full((b,), 40.0), t, list(range(b)), sampler="euler",
                           num_steps=8)  # fmt: skip
        measured = timed(generate, 1, args.device)
        print(f"measured end to end, flow Euler-8: {measured / b:.2f} s / video (extrapolated {8 * per_call / b:.2f})")

    ts = args.train_size or s
    sr_model.low_res_size = ts // 2
    print(
        f"\ntraining step (batch {args.train_batch}, forward + backward + AdamW, {t} x {ts} x {ts}; SR from {ts // 2}):"
    )
    batch = {"video": torch.randn(args.train_batch, 1, t, ts, ts, device=args.device),
             "ed_mask": torch.randint(0, 4, (args.train_batch, ts, ts), device=args.device),
             "ef": torch.full((args.train_batch,), 50.0, device=args.device)}  # fmt: skip

    def step(stage: EchoDiffusion, optimizer, dtype: torch.dtype | None, checkpointing: bool) -> None:
        stage.network.gradient_checkpointing = checkpointing
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            loss = stage.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    bf16_ok = args.device == "cuda" and torch.cuda.is_bf16_supported()
    bf16_ok = bf16_ok or (args.device == "cpu" and torch.backends.mkldnn.is_available())
    configs = [("base", model, "fp32", None, False), ("base", model, "fp32 + gradient checkpointing", None, True),
               ("SR", sr_model, "fp32", None, False)]  # fmt: skip
    if bf16_ok:
        configs[2:2] = [("base", model, "bf16 autocast", torch.bfloat16, False)]
        configs.append(("SR", sr_model, "bf16 autocast", torch.bfloat16, False))
    optimizers = {id(stage): torch.optim.AdamW(stage.parameters(), lr=1e-4) for stage in (model, sr_model)}
    for stage_name, stage, name, dtype, checkpointing in configs:
        stage.train()
        run = partial(step, stage, optimizers[id(stage)], dtype, checkpointing)
        if warm:
            run()
        seconds = timed(run, args.repeats, args.device)
        label = f"{stage_name} {name}"
        print(f"  {label:<36}{seconds:8.3f} s / step   {args.train_batch / seconds:7.2f} videos / s")
    if not bf16_ok:
        print("  bf16 autocast: not supported on this device")
    if args.device == "cpu":
        print("  (CPU bf16 autocast runs through oneDNN; its speed says little about bf16-mixed on a GPU)")


if __name__ == "__main__":
    main()
