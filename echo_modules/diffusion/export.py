"""Writing synthetic videos: an EchoNet-Dynamic dataset (what ``echolab predict`` makes of a diffusion model) and
browser-playable previews for W&B.

    synthetic_dir/Videos/<FileName>.avi     MJPEG, grey repeated to 3 channels (the release's format)
    synthetic_dir/FileList.csv              FileName, EF (the requested EF), ESV, EDV (empty: not measured),
                                            FrameHeight, FrameWidth, FPS, NumberOfFrames, Split (TRAIN / VAL),
                                            RequestedEF, MeasuredEF (by the model's ef_scorer; empty without),
                                            SourceMap, SourceEF, Seed, Attempts
    synthetic_dir/synthesis_summary.json    videos written, privacy-filter rejections and drops, requested-vs-
                                            measured EF (mean absolute difference) when scored

The EchoNet-Dynamic DataModule reads the folder unchanged (no VolumeTracings.csv: the videos carry no tracings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.phantom.echonet_writer import FILELIST_COLUMNS, write_avi
from echo_modules.common.module import gather_lists, run_directory, write_csv

EXTRA_COLUMNS = ("RequestedEF", "MeasuredEF", "SourceMap", "SourceEF", "Seed", "Attempts")


def to_uint8(video: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """A normalised ``(C, T, H, W)`` video back to grey uint8 ``(T, H, W)`` on the data's 0-255 scale."""
    grey = video.float().mean(0) * std + mean
    return grey.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def write_browser_video(path_stem: Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Grey ``(T, H, W)`` uint8 -> H.264 MP4 (PyAV) that browsers and W&B play; an animated GIF without PyAV."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:]
    try:
        import av
    except ImportError:
        from PIL import Image

        path = path_stem.with_suffix(".gif")
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    path = path_stem.with_suffix(".mp4")
    pad_h, pad_w = height % 2, width % 2  # yuv420p needs even sizes
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width + pad_w, height + pad_h, "yuv420p"
        for frame in frames:
            rgb = np.repeat(np.pad(frame, ((0, pad_h), (0, pad_w)))[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def assign_synthetic_splits(names: list[str], val_fraction: float) -> dict[str, str]:
    """TRAIN/VAL per synthetic video: every ``1/val_fraction``-th name (sorted) is VAL, at least one if asked."""
    ordered = sorted(names)
    splits = dict.fromkeys(ordered, "TRAIN")
    if val_fraction > 0 and len(ordered) > 1:
        count = max(1, int(round(val_fraction * len(ordered))))
        for index in np.linspace(0, len(ordered) - 1, count).round().astype(int):
            splits[ordered[index]] = "VAL"
    return splits


def _text(value: float) -> float | str:
    return value if math.isfinite(value) else ""


class SyntheticEchoNetWriter(BasePredictionWriter):
    """Writes ``EchoDiffusion.predict_step`` outputs as an EchoNet-Dynamic dataset (each rank its own videos; rank 0
    the FileList.csv of all ranks). Added by the module itself (``configure_callbacks``)."""

    def __init__(self, out_dir: str | None = None, val_fraction: float = 0.1) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.out_dir = Path(out_dir) if out_dir else None
        self.val_fraction = val_fraction
        self.rows: list[dict[str, Any]] = []

    def _folder(self, trainer) -> Path:
        if self.out_dir is None:
            self.out_dir = run_directory(trainer) / "synthetic"
        return self.out_dir

    def on_predict_start(self, trainer, pl_module) -> None:
        self.rows = []
        self._folder(trainer)  # on every rank: run_directory is a collective under DDP

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        videos = self.out_dir / "Videos"
        videos.mkdir(parents=True, exist_ok=True)
        for item in prediction:
            name = f"synth_{item['source']}_{item['sample']:02d}"
            frames = item.pop("frames")  # written now, not kept in memory
            write_avi(videos / f"{name}.avi", frames, item["fps"])
            self.rows.append({**item, "name": name, "shape": frames.shape})

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        rows = gather_lists(self.rows)
        counts = torch.tensor([pl_module.privacy_counts[k] for k in ("generated", "rejected", "dropped")],
                              device=pl_module.device)  # fmt: skip
        if trainer.world_size > 1:
            counts = pl_module.all_gather(counts).sum(0)
        if not trainer.is_global_zero:
            return
        splits = assign_synthetic_splits([row["name"] for row in rows], self.val_fraction)
        table = []
        for row in sorted(rows, key=lambda r: r["name"]):
            frames, height, width = row["shape"]
            ef = row["requested_ef"]
            table.append([row["name"], ef if math.isfinite(ef) else "", "", "", height, width, row["fps"], frames,
                          splits[row["name"]], ef, _text(row["measured_ef"]), row["source"], row["source_ef"],
                          row["seed"], row["attempts"]])  # fmt: skip
        write_csv(self.out_dir / "FileList.csv", [*FILELIST_COLUMNS, *EXTRA_COLUMNS], table)
        generated, rejected, dropped = (int(v) for v in counts.tolist())
        privacy = pl_module.privacy
        summary = {
            "videos": len(table),
            "generated": generated,
            "rejected_by_privacy_filter": rejected,
            "dropped_after_max_attempts": dropped,
            "privacy_threshold": None if privacy is None else privacy.threshold,
        }
        scored = [
            (r["measured_ef"], r["requested_ef"]) for r in rows if math.isfinite(r["measured_ef"] - r["requested_ef"])
        ]
        if scored:
            summary["ef_mae_requested_vs_measured"] = float(np.mean([abs(m - q) for m, q in scored]))
        (self.out_dir / "synthesis_summary.json").write_text(json.dumps(summary, indent=2))
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"synthetic EchoNet-Dynamic dataset: {self.out_dir} ({summary})")
