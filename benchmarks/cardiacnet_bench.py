"""CardiacNet: what the optimal-transport term costs, and training-step throughput in fp32 vs bf16 autocast.

Table 1 -- Eq. 5 between two banks of ``n`` descriptors x 256 dimensions (forward + backward, median of repeats):
the sorted per-dimension path (exact Eq. 5, EchoLab's default) against POT with its torch backend: ``ot.emd2`` solved
per dimension (the same exact Eq. 5; when that is slow it is timed on a few dimensions and scaled to all of them, and
the table says so), ``ot.emd2`` on whole vectors (one matching shared by all dimensions; skipped above
``--emd-max``), entropic OT through ``ot.solve`` (whole vectors, envelope gradients; skipped above
``--sinkhorn-max``) and ``ot.sliced_wasserstein_distance``. The last column is the largest relative difference
between the sorted path and POT's per-dimension exact costs on the dimensions solved.
The training step runs the same code between a batch of a few clips and a bank.

Table 2 -- a full CardiacNet training step (both generators, cycle passes, banks, OT, heads, the discriminator step)
through a real Lightning Trainer on random clips, in fp32 and in bf16-mixed precision. Clips per second count the
clips that enter the generators (2 x pairs per step). On CPU bf16 is emulated by many kernels and usually slower.

    python benchmarks/cardiacnet_bench.py                     # CPU defaults, ~2-3 minutes on 2 cores
    python benchmarks/cardiacnet_bench.py --device cuda --bank-sizes 256 1024 4096 16384 --emd-max 4096 \
        --step-size 112 --step-frames 16 --step-widths 64 128 128 256 256 --step-latent 256 --step-pairs 4
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from statistics import median

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from echo_modules.cardiacnet.optimal_transport import pot_ot_cost, sorted_ot_cost  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int) -> float:
    """Median seconds of ``function()`` (forward + backward) after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


def forward_backward(cost_function, source: torch.Tensor, target: torch.Tensor):
    def run() -> torch.Tensor:
        source.grad = None
        cost = cost_function(source, target)
        cost.backward()
        return cost.detach()

    return run


def per_dimension_emd(source: torch.Tensor, target: torch.Tensor, dims: int) -> torch.Tensor:
    """Exact Eq. 5 with POT: one ``ot.emd2`` 1-D problem per dimension (the first ``dims`` dimensions), averaged."""
    costs = [pot_ot_cost(source[:, i : i + 1], target[:, i : i + 1], "emd") for i in range(dims)]
    return torch.stack(costs).mean()


def ot_table(
    device: torch.device, sizes: list[int], dims: int, emd_max: int, sinkhorn_max: int, budget: float, repeats: int
) -> str:
    rows = [
        "| bank rows n | sorted (exact Eq. 5) | POT emd2 per dim (exact Eq. 5) | speed-up | POT emd2 whole vectors "
        "| POT entropic (ot.solve) | POT sliced (128 proj.) | max rel. diff sorted vs POT |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        generator = torch.Generator().manual_seed(n)
        source = torch.randn(n, dims, generator=generator).to(device).requires_grad_(True)
        target = (1.3 * torch.randn(n, dims, generator=generator) + 0.5).to(device)
        sorted_time = timed(forward_backward(sorted_ot_cost, source, target), device, repeats)
        # POT per dimension: time one dimension first, then as many as fit the budget, and scale to all dimensions
        one = timed(forward_backward(lambda s, t: per_dimension_emd(s, t, 1), source, target), device, 1)
        solved = int(max(1, min(dims, budget // max(one, 1e-9))))
        pot_time = timed(
            forward_backward(lambda s, t, solved=solved: per_dimension_emd(s, t, solved), source, target), device, 1
        )
        pot_all = pot_time * dims / solved
        note = "" if solved == dims else f" (from {solved} dims)"
        with torch.no_grad():
            exact = np.array(
                [pot_ot_cost(source[:, i : i + 1], target[:, i : i + 1], "emd").item() for i in range(min(solved, 8))]
            )
            fast = np.array(
                [sorted_ot_cost(source[:, i : i + 1], target[:, i : i + 1]).item() for i in range(min(solved, 8))]
            )
        difference = float(np.max(np.abs(fast - exact) / np.abs(exact)))
        joint = (
            f"{timed(forward_backward(lambda s, t: pot_ot_cost(s, t, 'emd'), source, target), device, 1) * 1e3:.0f} ms"
            if n <= emd_max else f"skipped (n > {emd_max})"
        )  # fmt: skip
        sinkhorn = (
            f"{timed(forward_backward(lambda s, t: pot_ot_cost(s, t, 'sinkhorn'), source, target), device, 1) * 1e3:.0f} ms"
            if n <= sinkhorn_max else f"skipped (n > {sinkhorn_max})"
        )  # fmt: skip
        sliced = timed(
            forward_backward(lambda s, t: pot_ot_cost(s, t, "sliced", seed=0), source, target), device, repeats
        )
        rows.append(
            f"| {n} | {sorted_time * 1e3:.2f} ms | {pot_all * 1e3:.0f} ms{note} | {pot_all / sorted_time:.0f}x | {joint} "
            f"| {sinkhorn} | {sliced * 1e3:.1f} ms | {difference:.1e} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


class _StepTimer:
    """A Lightning callback recording the wall time of each training batch."""

    def __new__(cls, device: torch.device):
        import lightning as L

        class StepTimer(L.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                _sync(device)
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                _sync(device)
                self.times.append(time.perf_counter() - self._start)

        return StepTimer()


def step_throughput(device: torch.device, precision: str, args: argparse.Namespace) -> float:
    """Clips per second of full CardiacNet training steps (median after two warm-up steps)."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    from echo_modules.cardiacnet import CardiacNet

    size, frames, pairs = args.step_size, args.step_frames, args.step_pairs

    class RandomPairs(Dataset):
        def __len__(self) -> int:
            return pairs * (args.steps + 2)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            generator = torch.Generator().manual_seed(index)
            clip = lambda: torch.randn(1, frames, size, size, generator=generator)  # noqa: E731
            return {"normal_video": clip(), "abnormal_video": clip(), "normal_label": torch.tensor(0),
                    "abnormal_label": torch.tensor(1)}  # fmt: skip

    tokens = size // 2 ** (len(args.step_widths) - 1)
    model = CardiacNet(
        widths=args.step_widths, latent_dim=args.step_latent,
        codebook={"num_codes": args.step_codes, "position_grid": (frames, tokens, tokens)},
        discriminator={"width": max(8, args.step_widths[0]), "layers": 3 if size >= 64 else 2},
        memory_bank={"size": 256, "min_fill": pairs}, mask_ratio=0.35,
    )  # fmt: skip
    timer = _StepTimer(device)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(RandomPairs(), batch_size=pairs))
    return 2 * pairs / median(timer.times[2:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bank-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--emd-max", type=int, default=1024, help="largest n for POT's whole-vector emd2 (O(n^3))")
    parser.add_argument("--sinkhorn-max", type=int, default=4096, help="largest n for POT entropic OT")
    parser.add_argument("--pot-budget", type=float, default=4.0, help="seconds for POT's per-dimension emd2 per size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-size", type=int, default=32, help="frame size of the training-step benchmark")
    parser.add_argument("--step-frames", type=int, default=8)
    parser.add_argument("--step-pairs", type=int, default=2, help="normal/abnormal pairs per step")
    parser.add_argument("--step-widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--step-latent", type=int, default=32)
    parser.add_argument("--step-codes", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after 2 warm-up steps)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()

    print(f"## Eq. 5 optimal transport, {args.dims} dims, forward + backward ({device})\n")
    print(ot_table(device, args.bank_sizes, args.dims, args.emd_max, args.sinkhorn_max, args.pot_budget, args.repeats))

    print(f"\n## CardiacNet training step ({device}; {args.step_pairs} pairs of 1 x {args.step_frames} x "
          f"{args.step_size} x {args.step_size} clips, widths {args.step_widths})\n")  # fmt: skip
    rows = ["| precision | clips / s | relative |", "|---|---:|---:|"]
    baseline = None
    for precision in ("32-true", "bf16-mixed"):
        throughput = step_throughput(device, precision, args)
        baseline = baseline or throughput
        rows.append(f"| {precision} | {throughput:.2f} | {throughput / baseline:.2f}x |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
