"""Loading throughput of the NIfTI datasets: CAMUS half-sequences and CardiacNet normal/abnormal pairs.

Phantom datasets are written once at the start, in the real layouts (the same files for every row):

CAMUS (sequences/s): one training item = a half-sequence clip resized to 112 px with its ED and ES label maps.
1. ``CamusDataModule`` (task ``sequence``) with its decoded cache (the default): ``prepare_data`` decodes every
   half-sequence and ``_gt`` file once into uint8 ``.npy``; items read their clip frames from a memory map. The one-time
   cache build (``prepare_data`` + ``setup``, which also computes mean/std) is reported separately.
2. The same module with ``decode_cache=False``: each item decodes its NIfTI files again.
3. Plain nibabel per item, the way CAMUS loaders are usually written: ``nib.load(...).get_fdata()`` of the half-sequence
   and both ``_gt`` files, transpose, resize, normalise, random clip.
4. SimpleITK per item (``sitk.ReadImage`` + ``GetArrayFromImage``), only when SimpleITK is installed (it is optional).

CardiacNet (pairs/s): one training item = one normal and one abnormal 16-frame clip, each video cropped to the
non-zero box of its first frame and resized to 112 px.
5. ``CardiacNetDataModule(paired=True)`` with its cropped-and-resized decoded cache.
6. A per-item reader after xmed-lab/CardiacNet: ``nib.load(...).get_fdata()`` (float64) of the whole video, bounding
   box of frame 1, crop, resize, clip; twice per item.

DataModule rows include ``on_after_batch_transfer`` (where uint8 clips are normalised and expanded to ``--channels``
channels as a view, on the device in training), so every row times the batches a model receives. ``--channels 3``
(Kinetics backbones) shows what the uint8 hand-off saves: before it, CAMUS normalised in the dataset and copied the
grey clip into three channels per item.

Loaders run with ``--workers`` workers for ``--batches`` timed batches after one untimed warm-up batch; approaches are
interleaved over ``--repeats`` rounds and the table shows the median rate (min-max). The simulator is slow at real
frame sizes (CAMUS ~780x550, CardiacNet ~720p), so the phantom files are written small and enlarged ``--upscale``
times (default 4: CAMUS 640x512, CardiacNet about 620x680), which puts the per-item readers' decode cost near the
real one.

    python benchmarks/dataset_loading.py [--patients 24] [--videos 16] [--workers 0] [--batches 4] [--repeats 3]
                                         [--upscale 4] [--channels 1] [--only all|camus]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(ROOT))

from datamodules.camus import CamusDataModule  # noqa: E402
from datamodules.cardiacnet import CardiacNetDataModule  # noqa: E402
from datamodules.nifti import content_box, crop_and_resize  # noqa: E402
from datamodules.phantom.camus_writer import write_camus_dataset  # noqa: E402
from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset  # noqa: E402

FRAME_SIZE, CLIP_LENGTH = 112, 16


# ---------------------------------------------------------------------------------------------------- per-item readers


def _resize(frames: np.ndarray, interpolation: int) -> np.ndarray:
    return np.stack([cv2.resize(f, (FRAME_SIZE, FRAME_SIZE), interpolation=interpolation) for f in frames])


def _clip(frames: np.ndarray, period: int, rng: np.random.Generator) -> np.ndarray:
    """A random clip of CLIP_LENGTH frames every ``period``, the last frame repeated when the video is short."""
    span = (CLIP_LENGTH - 1) * period + 1
    start = int(rng.integers(0, max(len(frames) - span, 0) + 1))
    return frames[np.minimum(start + period * np.arange(CLIP_LENGTH), len(frames) - 1)]


class PerItemCamus(Dataset):
    """Half-sequence + ED/ES ground truth decoded per item with ``read`` (nibabel or SimpleITK), upright (T, H, W)."""

    def __init__(
        self, folders: list[tuple[Path, str]], read: Callable[[Path], np.ndarray], mean: float, std: float
    ) -> None:
        self.folders, self.read, self.mean, self.std = folders, read, mean, std

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        folder, stem = self.folders[index]
        frames = self.read(folder / f"{stem}_half_sequence.nii.gz").astype(np.float32)
        masks = [self.read(folder / f"{stem}_{instant}_gt.nii.gz")[0].astype(np.uint8) for instant in ("ED", "ES")]
        clip = (_clip(_resize(frames, cv2.INTER_AREA), 1, np.random.default_rng(index)) - self.mean) / self.std
        return {
            "video": torch.from_numpy(clip)[None],
            "masks": torch.from_numpy(_resize(np.stack(masks), cv2.INTER_NEAREST)),
        }


def read_nibabel(path: Path) -> np.ndarray:
    import nibabel as nib

    array = nib.load(str(path)).get_fdata()
    return np.transpose(array[:, :, None] if array.ndim == 2 else array, (2, 1, 0))


def read_simpleitk(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array[None] if array.ndim == 2 else array


class PerItemCardiacNetPairs(Dataset):
    """xmed-lab/CardiacNet style: each item decodes a normal and an abnormal video whole, crops, resizes, clips."""

    def __init__(self, normal: list[Path], abnormal: list[Path]) -> None:
        self.normal, self.abnormal = normal, abnormal

    def __len__(self) -> int:
        return max(len(self.normal), len(self.abnormal))

    def _clip(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        video = read_nibabel(path)  # float64, as get_fdata gives it
        video = crop_and_resize(video.astype(np.float32), content_box(video[0]), FRAME_SIZE)
        return torch.from_numpy(_clip(video, 2, rng) / 127.5 - 1.0)[None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(index)
        return {
            "normal_video": self._clip(self.normal[index % len(self.normal)], rng),
            "abnormal_video": self._clip(self.abnormal[index % len(self.abnormal)], rng),
        }


def upscale_niftis(root: Path, factor: int) -> None:
    """Rewrite every NIfTI under ``root`` ``factor`` times larger in x and y (labels by nearest neighbour), so the
    phantom files approach the size of the releases' (the simulator is slow at such sizes)."""
    import nibabel as nib

    for path in sorted(root.rglob("*.nii.gz")):
        image = nib.load(str(path))
        array = np.asarray(image.dataobj)
        labels = path.name.endswith(("_gt.nii.gz", "_label.nii.gz", "_abnormal.nii.gz"))
        interpolation = cv2.INTER_NEAREST if labels else cv2.INTER_LINEAR
        planes = [array] if array.ndim == 2 else [np.ascontiguousarray(array[:, :, t]) for t in range(array.shape[2])]
        planes = [cv2.resize(plane, None, fx=factor, fy=factor, interpolation=interpolation) for plane in planes]
        bigger = planes[0] if array.ndim == 2 else np.stack(planes, axis=2)
        nib.save(nib.Nifti1Image(bigger, image.affine), str(path))


# ---------------------------------------------------------------------------------------------------- timing


def time_loader(make_loader: Callable[[], DataLoader | tuple[DataLoader, Callable]], batches: int, key: str) -> float:
    """Items per second over ``batches`` batches after one untimed warm-up batch, cycling epochs as needed.

    ``make_loader`` may also return ``(loader, finish)``: ``finish(batch)`` is timed with each batch (a DataModule's
    ``on_after_batch_transfer``, which normalises uint8 clips where the model runs), so every row measures the
    batches a model receives."""
    made = make_loader()
    loader, finish = made if isinstance(made, tuple) else (made, lambda batch: batch)
    items, timed, start, epoch = 0, -1, 0.0, 0
    try:
        while timed < batches:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            for batch in loader:
                batch = finish(batch)
                if timed == -1:
                    start = time.perf_counter()
                else:
                    items += len(batch[key])
                timed += 1
                if timed == batches:
                    break
            epoch += 1
        return items / (time.perf_counter() - start)
    finally:
        del loader
        gc.collect()


def module_loader(module) -> tuple[DataLoader, Callable]:
    """A DataModule's training loader and the device-side step its batches go through before the model."""
    return module.train_dataloader(), lambda batch: module.on_after_batch_transfer(batch, 0)


def plain_loader(dataset: Dataset, args: argparse.Namespace) -> DataLoader:
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=24, help="CAMUS phantom patients (2 views each)")
    parser.add_argument("--videos", type=int, default=16, help="CardiacNet phantom videos")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--upscale", type=int, default=4, help="enlarge the phantom files toward real frame sizes")
    parser.add_argument("--channels", type=int, default=1, help="channels of the DataModules' clips (3 for Kinetics)")
    parser.add_argument("--only", choices=["all", "camus"], default="all", help="run only the CAMUS rows")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="echolab-bench-"))
    try:
        started = time.perf_counter()
        camus = write_camus_dataset(work / "CAMUS", args.patients, seed=0, size=128)
        cardiacnet = write_cardiacnet_dataset(
            work / "CardiacNet", args.videos, seed=0, subset="PAH", size_range=(112, 144), num_frames_range=(24, 48)
        )
        if args.upscale > 1:
            upscale_niftis(work, args.upscale)
        print(f"wrote the phantom datasets in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        build: dict[str, float] = {}

        def camus_module(decode_cache: bool) -> CamusDataModule:
            started = time.perf_counter()
            module = CamusDataModule(
                str(camus),
                clip_length=CLIP_LENGTH,
                period=1,
                frame_size=FRAME_SIZE,
                channels=args.channels,
                batch_size=args.batch_size,
                num_workers=args.workers,
                decode_cache=decode_cache,
                cache_dir=str(work / f"cache-camus-{decode_cache}"),
                seed=0,
            )
            module.prepare_data()
            module.setup("fit")
            build.setdefault(f"camus-{decode_cache}", time.perf_counter() - started)
            return module

        def cardiacnet_module() -> CardiacNetDataModule:
            started = time.perf_counter()
            module = CardiacNetDataModule(
                str(cardiacnet),
                clip_length=CLIP_LENGTH,
                period=2,
                frame_size=FRAME_SIZE,
                channels=args.channels,
                batch_size=args.batch_size,
                num_workers=args.workers,
                paired=True,
                cache_dir=str(work / "cache-cardiacnet"),
                seed=0,
            )
            module.prepare_data()
            module.setup("fit")
            build.setdefault("cardiacnet", time.perf_counter() - started)
            return module

        reference = camus_module(True)
        folders = [(r.path.parent, r.filename) for r in reference.records["TRAIN"]]
        mean, std = reference.norm_mean, reference.norm_std
        subset = cardiacnet / "CardiacNet-PAH"
        normal, abnormal = (
            sorted((subset / "Non-PAH").glob("*_image.nii.gz")),
            sorted((subset / "PAH").glob("*_image.nii.gz")),
        )

        approaches: dict[str, tuple[str, Callable[[], DataLoader], str]] = {
            "camus-cache": (
                "CAMUS: CamusDataModule, decoded cache",
                lambda: module_loader(camus_module(True)),
                "video",
            ),
            "camus-nocache": (
                "CAMUS: CamusDataModule, decode_cache=False",
                lambda: module_loader(camus_module(False)),
                "video",
            ),
            "camus-nibabel": (
                "CAMUS: nibabel get_fdata per item",
                lambda: plain_loader(PerItemCamus(folders, read_nibabel, mean, std), args),
                "video",
            ),
        }
        try:
            import SimpleITK  # noqa: F401

            approaches["camus-sitk"] = (
                "CAMUS: SimpleITK per item",
                lambda: plain_loader(PerItemCamus(folders, read_simpleitk, mean, std), args),
                "video",
            )
        except ImportError:
            pass
        if args.only == "all":
            approaches["cardiacnet-cache"] = (
                "CardiacNet pairs: CardiacNetDataModule(paired=True), cropped cache",
                lambda: module_loader(cardiacnet_module()),
                "normal_video",
            )
            approaches["cardiacnet-nibabel"] = (
                "CardiacNet pairs: per-item nibabel, crop, resize (reference style)",
                lambda: plain_loader(PerItemCardiacNetPairs(normal, abnormal), args),
                "normal_video",
            )

        rates: dict[str, list[float]] = {name: [] for name in approaches}
        for _ in range(args.repeats):
            for name, (_, make_loader, key) in approaches.items():
                rates[name].append(time_loader(make_loader, args.batches, key))

        import nibabel as nib

        camus_shape = nib.load(str(reference.records["TRAIN"][0].path)).shape
        cardiacnet_shape = nib.load(str(normal[0])).shape
        print(
            f"\n{args.workers} workers, {args.channels} channels, batch {args.batch_size}, {args.batches} timed batches x {args.repeats} rounds, "
            f"{FRAME_SIZE}px clips of {CLIP_LENGTH} frames; CAMUS {len(folders)} training half-sequences of "
            f"{camus_shape[1]}x{camus_shape[0]} px, CardiacNet {len(normal)} normal / {len(abnormal)} abnormal "
            f"videos of ~{cardiacnet_shape[1]}x{cardiacnet_shape[0]} px (H x W)\n"
        )
        print("| approach | items/s (median, min-max) | speed-up | one-time cache build |")
        print("|---|---|---|---|")
        baselines = {
            family: median(rates[f"{family}-nibabel"])
            for family in ("camus", "cardiacnet")
            if f"{family}-nibabel" in rates
        }
        unit = {"camus": "sequences/s", "cardiacnet": "pairs/s"}
        for name, (title, _, _) in approaches.items():
            family = name.split("-")[0]
            value = median(rates[name])
            built = {"camus-cache": "camus-True", "camus-nocache": "camus-False", "cardiacnet-cache": "cardiacnet"}.get(
                name
            )
            cost = f"{build[built]:.1f} s" if built in build else "-"
            print(
                f"| {title} | {value:.1f} {unit[family]} ({min(rates[name]):.1f}-{max(rates[name]):.1f}) | "
                f"{value / baselines[family]:.1f}x | {cost} |"
            )
        if "camus-sitk" not in approaches:
            print("| CAMUS: SimpleITK per item | not installed (optional) | - | - |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
