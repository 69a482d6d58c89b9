"""CoReEcho training throughput, and what the rank-contrastive loss costs next to the backbone.

Table 1 -- a full stage-1 training step on random clips (two views per video): encoder forward of every clip,
Rank-N-Contrast loss on the pooled features, the regressor's L1 on the detached features, backward, AdamW step.
Throughput is clips per second from the fastest of ``--repeats`` steps after one warm-up step (the minimum is the
least disturbed by other processes on a shared machine), for R(2+1)D-18 and UniFormer-S, in fp32 and under bf16
autocast where the device supports it.

Table 2 -- the loss alone (forward + backward) against the global batch size (videos x 2 views, 512-d embeddings):
EchoLab's vectorised loss (sort + logcumsumexp, chunked over anchors) next to a reference-style implementation that
loops over the positive column in Python (as the public Rank-N-Contrast/CoReEcho code does), and next to the time the
backbone needs for the same number of clips (extrapolated from Table 1's fp32 throughput). On CUDA the peak memory
of each loss is reported too.

    python benchmarks/coreecho_throughput.py                       # CPU defaults, ~2-3 minutes on 2 cores
    python benchmarks/coreecho_throughput.py --device cuda --batch 32 --frames 36 --loss-batches 16 64 256 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from echo_modules.common.backbones import R2Plus1D18  # noqa: E402
from echo_modules.common.uniformer import UniFormer, uniformer_small  # noqa: E402
from echo_modules.coreecho.heads import RegressionHead  # noqa: E402
from echo_modules.coreecho.losses import rank_n_contrast_loss  # noqa: E402

BACKBONES: dict[str, Callable[[], torch.nn.Module]] = {
    "r2plus1d18": R2Plus1D18,
    "uniformer_s": uniformer_small,
    "uniformer_tiny": lambda: UniFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), head_dim=16),
}


def reference_loop_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Rank-N-Contrast computed like the public code: one masked (N, N-1) pass per positive column, in Python."""
    count = len(embeddings)
    label_gaps = (labels[:, None] - labels[None, :]).abs()
    logits = -torch.cdist(embeddings, embeddings) / temperature
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=embeddings.device)
    logits = logits[off_diagonal].view(count, count - 1)
    label_gaps = label_gaps[off_diagonal].view(count, count - 1)
    exp_logits = logits.exp()
    loss = embeddings.new_zeros(())
    for column in range(count - 1):
        negatives = (label_gaps >= label_gaps[:, column : column + 1]).float()
        log_prob = logits[:, column] - torch.log((negatives * exp_logits).sum(-1))
        loss = loss - log_prob.sum() / (count * (count - 1))
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Fastest seconds of ``step`` over ``repeats`` calls after one warm-up call."""
    step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def training_step_time(
    name: str, device: torch.device, clips: int, frames: int, size: int, precision: str, repeats: int
) -> float:
    """Seconds of one stage-1 step on ``clips`` random clips (``clips / 2`` videos x 2 views)."""
    torch.manual_seed(0)
    encoder = BACKBONES[name]().to(device)
    regressor = RegressionHead(encoder.out_features).to(device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *regressor.parameters()], lr=1e-4, weight_decay=1e-4)
    video = torch.randn(clips // 2, 2, 3, frames, size, size, device=device)
    ef = torch.rand(clips // 2, device=device) * 60 + 20
    labels = ef.repeat_interleave(2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            features = encoder(rearrange(video, "b v c t h w -> (b v) c t h w"))
            contrastive = rank_n_contrast_loss(features, labels)
            regression = F.l1_loss(regressor(features.detach()).squeeze(-1).float(), labels)
        (contrastive + regression).backward()
        optimizer.step()

    return _timed(step, device, repeats)


def loss_cost(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    videos: int,
    dim: int,
    device: torch.device,
    repeats: int,
) -> tuple[float, float | None]:
    """(seconds of forward + backward, peak MiB on CUDA) for a batch of ``videos`` x 2 views."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2 * videos, dim, generator=generator).to(device).requires_grad_(True)
    labels = (torch.rand(videos, generator=generator) * 60 + 20).repeat(2).to(device)

    def step() -> None:
        embeddings.grad = None
        loss(embeddings, labels).backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    seconds = _timed(step, device, repeats)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=4, help="clips per training step (videos x 2 views; even)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=2, help="timed training steps per row (after one warm-up)")
    parser.add_argument("--loss-repeats", type=int, default=5, help="timed loss passes per row (after one warm-up)")
    parser.add_argument("--backbones", nargs="+", default=["r2plus1d18", "uniformer_s"], choices=sorted(BACKBONES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--loss-batches",
        nargs="+",
        type=int,
        default=[8, 16, 32, 64, 128, 256],
        help="global batch sizes in videos (x 2 views) for the loss table",
    )
    parser.add_argument("--reference-max", type=int, default=256, help="skip the Python-loop loss above this batch")
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.batch % 2:
        parser.error("--batch counts clips of two views each: give an even number >= 2")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"## CoReEcho stage-1 training step ({device}, {torch.get_num_threads()} threads, "
        f"{args.batch} clips of {args.frames}x{args.size}x{args.size}, 3 channels)\n"
    )
    print("| backbone | precision | step (s) | clips/s |")
    print("|---|---|---:|---:|")
    fp32_throughput: dict[str, float] = {}
    for name in args.backbones:
        for precision in args.precisions:
            if precision == "bf16" and not bf16_supported(device):
                print(f"| {name} | bf16 | not supported on {device} | |")
                continue
            seconds = training_step_time(name, device, args.batch, args.frames, args.size, precision, args.repeats)
            if precision == "fp32":
                fp32_throughput[name] = args.batch / seconds
            print(f"| {name} | {precision} | {seconds:.3f} | {args.batch / seconds:.2f} |", flush=True)

    print(f"\n## Rank-N-Contrast loss, forward + backward ({device}, {args.embedding_dim}-d, 2 views per video)\n")
    backbone_columns = [name for name in args.backbones if name in fp32_throughput]
    header = ["global batch (videos)", "embeddings", "EchoLab vectorised (ms)", "reference loop (ms)", "speed-up"]
    if device.type == "cuda":
        header += ["vectorised peak MiB", "reference peak MiB"]
    header += [f"{name} fp32 step for the batch (s, extrapolated)" for name in backbone_columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for videos in args.loss_batches:
        ours, ours_peak = loss_cost(rank_n_contrast_loss, videos, args.embedding_dim, device, args.loss_repeats)
        if videos <= args.reference_max:
            reference, reference_peak = loss_cost(
                reference_loop_loss, videos, args.embedding_dim, device, args.loss_repeats
            )
            cells = [f"{1e3 * reference:.1f}", f"{reference / ours:.1f}x"]
        else:
            reference_peak, cells = None, ["skipped", ""]
        row = [str(videos), str(2 * videos), f"{1e3 * ours:.1f}", *cells]
        if device.type == "cuda":
            row += [f"{ours_peak:.0f}", f"{reference_peak:.0f}" if reference_peak is not None else ""]
        row += [f"{2 * videos / fp32_throughput[name]:.1f}" for name in backbone_columns]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
