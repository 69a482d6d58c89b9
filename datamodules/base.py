"""The parts every video DataModule shares: records, the clip dataset, the resumable sampler, collation, loaders.

A dataset-specific DataModule only scans its on-disk layout into :class:`VideoRecord`s (``scan_records``); this base
validates and caches the videos, computes normalisation statistics from the training split once, and builds loaders
that are exact under DDP (evaluation sees every video once) and resumable mid-epoch (training).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.cache import (
    DecodedVideoCache,
    ResizedVideoCache,
    VideoInfo,
    default_cache_dir,
    fill_cache,
    read_frames,
)
from datamodules.errors import ConfigError, DataError
from datamodules.splits import SPLITS
from datamodules.tracings import mask_from_tracing
from datamodules.transforms import RESIZE_MODES, ResizeMode, apply_to_clip, resize_clip, resize_masks
from datamodules.video import (
    BACKENDS,
    clip_frame_indices,
    evaluation_clip_starts,
    random_clip_start,
    resolve_backend,
)


@dataclass
class VideoRecord:
    """One video and its annotations, independent of the dataset's layout."""

    path: Path
    filename: str
    split: str
    ef: float = math.nan
    label: int = -1
    fps: float = math.nan
    ed_index: int = -1
    es_index: int = -1
    ed_tracing: np.ndarray | None = None  # EchoNet-style (21, 4) tracing rows X1, Y1, X2, Y2
    es_tracing: np.ndarray | None = None
    num_frames: int = 0
    height: int = 0
    width: int = 0
    expected_frames: int = 0  # the frame count the dataset's index declares (0: it declares none)
    abnormal_region: np.ndarray | None = None  # (H, W) bool where a known abnormality lives (phantom ground truth)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_tracings(self) -> bool:
        return self.ed_tracing is not None and self.es_tracing is not None and self.ed_index >= 0 and self.es_index >= 0


def normalise_clips(
    video: torch.Tensor, frames_mask: torch.Tensor, mean: float, std: float, channels: int
) -> torch.Tensor:
    """uint8 grey clips ``(..., 1, T, H, W)`` -> normalised float ``(..., channels, T, H, W)``.

    Padded frames (``frames_mask`` False, shape ``(..., T)``) become zero *after* normalisation, i.e. the mean
    intensity, rather than black. Runs wherever the tensor is: on the accelerator for training batches.
    """
    normalised = (video.float() - mean) / std
    normalised = normalised * frames_mask.unsqueeze(-2)[..., None, None].to(normalised.dtype)
    # a broadcast view: repeating grey into 3 channels costs no memory (convolutions read it as they are)
    return normalised.expand(*normalised.shape[:-4], channels, *normalised.shape[-3:])


class VideoClipDataset(Dataset):
    """Clips of videos as dicts of tensors in the EchoLab batch format.

    Training items hold ``num_views`` random clips (``video``: ``(C, T, H, W)``, or ``(V, C, T, H, W)`` for several
    views); evaluation items hold every (or ``num_eval_clips`` evenly spaced) clip: ``(N, C, T, H, W)``. Training
    randomness is a pure function of ``(seed, epoch, index)``: the sampler passes ``(index, epoch)`` keys, so a
    resumed run draws exactly the clips the uninterrupted run would have drawn, with any number of workers.

    Datasets customise items through hooks, not by overriding ``__getitem__`` (which would turn off the uint8
    hand-off, see ``defer_normalisation``): :meth:`clip_starts` (where clips begin), :meth:`_frames` / :meth:`_masks`
    (pixels and key-frame masks), :meth:`frame_masks` (per-frame label maps, augmented with the clip and returned as
    ``masks``) and :meth:`extra_fields` (dataset-specific keys).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        cache: DecodedVideoCache,
        *,
        clip_length: int,
        period: int,
        frame_size: int,
        channels: int,
        mean: float,
        std: float,
        train: bool,
        num_eval_clips: int | None = None,
        num_views: int = 1,
        transform: A.BaseCompose | None = None,
        seed: int = 0,
        read_from_cache: bool = True,
        resize: ResizeMode = "stretch",
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.clip_length = clip_length
        self.period = period
        self.frame_size = frame_size
        self.channels = channels
        self.mean = mean
        self.std = std
        self.train = train
        self.num_eval_clips = num_eval_clips
        self.num_views = num_views
        self.transform = transform
        self.seed = seed
        self.read_from_cache = read_from_cache
        self.resize = resize
        # loaders built by VideoDataModule set this: items then carry uint8 grey clips (12x fewer bytes to collate
        # and move between processes) and VideoDataModule.on_after_batch_transfer normalises them on the device
        self.defer_normalisation = False

    def __len__(self) -> int:
        return len(self.records)

    def _frames(self, record: VideoRecord, indices: np.ndarray) -> np.ndarray:
        if self.read_from_cache:
            return np.asarray(self.cache.frames(record.path)[indices])
        unique, inverse = np.unique(indices, return_inverse=True)
        return read_frames(record.path, unique, self.cache.backend)[inverse]

    def _masks(self, record: VideoRecord) -> np.ndarray:
        """(3, H, W) uint8: ED mask, ES mask (label 1 = LV cavity) and the abnormal region (zeros when unknown)."""
        masks = np.zeros((3, record.height, record.width), np.uint8)
        if record.has_tracings:
            for slot, tracing in enumerate((record.ed_tracing, record.es_tracing)):
                masks[slot] = mask_from_tracing(tracing, record.height, record.width)
        if record.abnormal_region is not None:
            region = np.asarray(record.abnormal_region, np.uint8)
            masks[2] = region if region.shape == masks.shape[1:] else resize_masks(region[None], masks.shape[1])[0]
        return masks

    def clip_starts(self, record: VideoRecord, rng: np.random.Generator | None) -> list[int]:
        """First frames of the item's clips: ``num_views`` random starts in training (``rng`` is the item's generator,
        a pure function of seed, epoch and index), every or ``num_eval_clips`` evenly spaced starts at evaluation
        (``rng`` None)."""
        if rng is not None:
            return [
                random_clip_start(record.num_frames, self.clip_length, self.period, rng) for _ in range(self.num_views)
            ]
        return list(evaluation_clip_starts(record.num_frames, self.clip_length, self.period, self.num_eval_clips))

    def frame_masks(self, record: VideoRecord, indices: np.ndarray, real: np.ndarray) -> np.ndarray | None:
        """Label maps ``(len(indices), H, W)`` of the clip frames ``indices`` (``real`` False on padding), augmented
        with the frames and returned as ``masks`` ``(N, T, H, W)``; None (here) when the dataset has none."""
        return None

    def extra_fields(self, record: VideoRecord) -> dict[str, Any]:
        """Dataset-specific item fields, added to (or replacing) the base's."""
        return {}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        starts = self.clip_starts(record, rng)
        augment_seeds = [int(rng.integers(2**31 - 1)) for _ in starts] if rng is not None else [None] * len(starts)
        clip_indices, real = zip(
            *(clip_frame_indices(s, self.clip_length, self.period, record.num_frames) for s in starts), strict=True
        )
        indices = np.concatenate(clip_indices)
        frames = resize_clip(self._frames(record, indices), self.frame_size, self.resize)
        key_masks = resize_masks(self._masks(record), self.frame_size, self.resize)  # ED, ES, abnormal region
        sequence = self.frame_masks(record, indices, np.concatenate(real))
        if sequence is not None:
            sequence = resize_masks(sequence, self.frame_size, self.resize)

        clips, clip_masks, out_masks = [], [], key_masks
        for number, seed in enumerate(augment_seeds):
            window = slice(number * self.clip_length, (number + 1) * self.clip_length)
            clip = frames[window]  # (T, H, W)
            masks = key_masks if sequence is None else np.concatenate([key_masks, sequence[window]])
            if self.train and self.transform is not None:
                clip, masks = apply_to_clip(self.transform, clip, masks, seed=seed)
            if number == 0:
                out_masks = masks[:3]
            clips.append(clip)
            clip_masks.append(masks[3:])
        video = torch.from_numpy(np.stack(clips))[:, None]  # (N, 1, T, H, W) uint8
        frames_mask = torch.from_numpy(np.stack(real))  # (N, T)
        if not self.defer_normalisation:
            video = normalise_clips(video, frames_mask, self.mean, self.std, self.channels)
        item: dict[str, Any] = {
            "video": video,
            "frames_mask": frames_mask,
            "ef": torch.tensor(record.ef, dtype=torch.float32),
            "label": torch.tensor(record.label, dtype=torch.long),
            "filename": record.filename,
            "fps": torch.tensor(record.fps, dtype=torch.float32),
            "ed_index": torch.tensor(record.ed_index, dtype=torch.long),
            "es_index": torch.tensor(record.es_index, dtype=torch.long),
            "ed_mask": torch.from_numpy(np.asarray(out_masks[0], np.int64)),
            "es_mask": torch.from_numpy(np.asarray(out_masks[1], np.int64)),
            "has_masks": torch.tensor(record.has_tracings),
            "abnormal_region": torch.from_numpy(np.asarray(out_masks[2]).astype(bool)),
            "has_abnormal_region": torch.tensor(record.abnormal_region is not None),
        }
        if sequence is not None:
            item["masks"] = torch.from_numpy(np.stack(clip_masks).astype(np.int64))  # (N, T, H, W)
        item.update(self.extra_fields(record))
        if self.train and self.num_views == 1:
            item["video"], item["frames_mask"] = video[0], frames_mask[0]
            if "masks" in item:
                item["masks"] = item["masks"][0]
        return item


class PairedClipDataset(Dataset):
    """Training items that pair a normal (label 0) clip with an abnormal (label 1) clip.

    An epoch walks the larger class once; each of its items gets a partner from the other class drawn as a pure
    function of ``(seed, epoch, index)``. Keys are the clip dataset's, prefixed ``normal_`` and ``abnormal_``.
    """

    def __init__(self, clips: VideoClipDataset) -> None:
        self.clips = clips
        self.normal = [i for i, r in enumerate(clips.records) if r.label == 0]
        self.abnormal = [i for i, r in enumerate(clips.records) if r.label == 1]
        if not self.normal or not self.abnormal:
            raise DataError(
                f"paired training needs both classes in the training split, found {len(self.normal)} normal and "
                f"{len(self.abnormal)} abnormal videos (labels come from the dataset or label_from_ef_below)"
            )

    def __len__(self) -> int:
        return max(len(self.normal), len(self.abnormal))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.clips.seed, epoch, index, 1])
        pick = lambda group: group[index] if index < len(group) else group[int(rng.integers(len(group)))]  # noqa: E731
        item: dict[str, Any] = {}
        for name, group in (("normal", self.normal), ("abnormal", self.abnormal)):
            for key_name, value in self.clips[(pick(group), epoch)].items():
                item[f"{name}_{key_name}"] = value
        return item


def collate_clips(items: list[dict[str, Any]], concat_clips: bool = False) -> dict[str, Any]:
    """Collate items; with ``concat_clips`` (evaluation) every item's clips are concatenated along the batch axis
    and ``clip_owner[i]`` names the item clip ``i`` belongs to, so videos with different clip counts share a batch."""
    if "video" not in items[0]:  # paired items: every tensor has a fixed shape
        return default_collate(items)
    videos = [item.pop("video") for item in items]
    frames_masks = [item.pop("frames_mask") for item in items]
    batch = default_collate(items)
    if concat_clips:
        counts = torch.tensor([len(v) for v in videos])
        batch["video"] = torch.cat(videos)
        batch["frames_mask"] = torch.cat(frames_masks)
        batch["clip_owner"] = torch.repeat_interleave(torch.arange(len(videos)), counts)
    else:
        batch["video"] = torch.stack(videos)
        batch["frames_mask"] = torch.stack(frames_masks)
        batch["clip_owner"] = torch.arange(len(videos))
    return batch


def collate_eval_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_clips(items, concat_clips=True)


class EpochKeySampler(DistributedSampler):
    """A DistributedSampler (one replica when not distributed) whose keys are ``(index, epoch)``.

    Lightning keeps a DistributedSampler as it is and calls ``set_epoch`` on it; the epoch in the key makes clip
    sampling and augmentation a pure function of the item and epoch.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )

    def __iter__(self):
        epoch = self.epoch
        return ((index, epoch) for index in super().__iter__())


class VideoDataModule(L.LightningDataModule):
    """Base of the video DataModules: subclasses implement :meth:`scan_records` for their layout.

    Their datasets are ``dataset_class(records, cache, **dataset_kwargs(train))``: a subclass names its dataset class
    and adds its own arguments in :meth:`dataset_kwargs` instead of copying :meth:`make_dataset`.
    """

    dataset_name = "video"
    dataset_class: type[Dataset] = VideoClipDataset
    parallel_decode_from = 64  # fewer uncached files than this decode in the main process (no pool start-up)

    def __init__(
        self,
        data_dir: str,
        clip_length: int = 32,
        period: int = 2,
        frame_size: int = 112,
        channels: int = 3,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        num_eval_clips: int | None = None,
        num_views: int = 1,
        train_transforms: A.Compose | None = None,
        on_bad_video: Literal["skip", "raise"] = "skip",
        decode_cache: bool = True,
        cache_dir: str | None = None,
        mean: float | None = None,
        std: float | None = None,
        max_videos_per_split: int | None = None,
        predict_split: Literal["TRAIN", "VAL", "TEST", "ALL"] = "TEST",
        seed: int | None = None,
        pin_memory: bool = False,
        label_from_ef_below: float | None = None,
        paired: bool = False,
        resize: ResizeMode = "stretch",
        video_backend: Literal["auto", "decord", "pyav", "opencv"] = "auto",
        truncation_threshold: float = 0.9,
        decode_workers: int | None = None,
    ) -> None:
        """Args:
        data_dir: root of the dataset in its published layout.
        clip_length / period: frames per clip and the step between them (EchoNet: 32 every 2nd frame).
        frame_size: frames (and masks) are resized to this square size.
        resize: how a non-square video becomes square: ``stretch`` (its aspect changes; a warning says so once per
            dataset), ``pad`` (zero-padded to a centred square first) or ``crop`` (centre-cropped to a square first).
        channels: grey is repeated to this many channels (3 for Kinetics-pretrained backbones).
        num_eval_clips: clips per video at evaluation (None = every possible start, as EchoNet-Dynamic's test).
        num_views: random clips per video per training item (2 for contrastive methods).
        on_bad_video: skip undecodable/truncated videos with a warning and a count, or raise naming the file.
        truncation_threshold: a video that decodes fewer than this fraction of the frames its index file declares
            (EchoNet's NumberOfFrames, CAMUS's NbFrame) is truncated, i.e. a bad video; the releases' off-by-a-few
            disagreements pass (the decoded count wins). 0 turns the check off.
        video_backend: the decoder of video containers: ``auto`` (decord when installed, else PyAV, else OpenCV),
            or one of them by name.
        decode_workers: processes that decode the videos into the cache on the first run (default: ``num_workers``;
            0 decodes in the main process, as do first runs with fewer than 64 files to decode).
        decode_cache: keep decoded uint8 frames on disk (fast loading); off = decode clip frames per item.
        mean / std: normalisation override; by default computed once from the training split and cached.
        max_videos_per_split: use only the first N videos of each split (quick experiments).
        seed: clip-sampling seed; defaults to the run's ``seed_everything`` value.
        label_from_ef_below: label a video abnormal (1) when its EF is below this (CardiacNet's public-dataset
            setting: 50), normal (0) otherwise.
        paired: training items pair one normal and one abnormal clip (``normal_video``, ``abnormal_video``) for
            methods that translate between the classes; evaluation stays one labelled video per item.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["train_transforms"])
        self.data_dir = Path(data_dir).expanduser()
        if not self.data_dir.is_dir():
            raise ConfigError(
                f"data.data_dir '{data_dir}' does not exist: set --data.data_dir to your {self.dataset_name} download "
                "(or write a phantom dataset with `echolab phantom`)"
            )
        if clip_length < 1 or period < 1:
            raise ConfigError(f"clip_length ({clip_length}) and period ({period}) must be >= 1")
        if num_views < 1:
            raise ConfigError(f"num_views must be >= 1, got {num_views}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if video_backend != "auto" and video_backend not in BACKENDS:
            raise ConfigError(f"data.video_backend must be auto or one of {', '.join(BACKENDS)}, got {video_backend!r}")
        if not 0 <= truncation_threshold <= 1:
            raise ConfigError(f"data.truncation_threshold must lie in [0, 1], got {truncation_threshold}")
        if decode_workers is not None and decode_workers < 0:
            raise ConfigError(f"data.decode_workers must be >= 0, got {decode_workers}")
        self.clip_length = clip_length
        self.period = period
        self.frame_size = frame_size
        self.channels = channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_eval_clips = num_eval_clips
        self.num_views = num_views
        self.train_transforms = train_transforms
        self.on_bad_video = on_bad_video
        self.decode_cache = decode_cache
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.data_dir)
        self.mean = mean
        self.std = std
        self.max_videos_per_split = max_videos_per_split
        self.predict_split = predict_split
        self.seed = seed
        self.pin_memory = pin_memory
        self.label_from_ef_below = label_from_ef_below
        self.paired = paired
        self.resize = resize
        self.video_backend = resolve_backend(video_backend) if video_backend != "auto" else "auto"
        self.truncation_threshold = truncation_threshold
        self.decode_workers = num_workers if decode_workers is None else decode_workers
        self.records: dict[str, list[VideoRecord]] = {}
        self.skipped: list[tuple[str, str]] = []
        self._scanned: list[VideoRecord] | None = None

    # ------------------------------------------------------------------ layout-specific

    def scan_records(self) -> list[VideoRecord]:
        """All usable rows of the dataset's index files, as records (subclasses implement)."""
        raise NotImplementedError

    def required_frames(self, record: VideoRecord) -> int:
        """Frames a video must decode to be usable: enough to hold its annotated frames."""
        return max(record.ed_index, record.es_index, 0) + 1

    # ------------------------------------------------------------------ validation, caching, statistics

    def _cache(self) -> DecodedVideoCache:
        return DecodedVideoCache(self.cache_dir, store_frames=self.decode_cache, backend=self.video_backend)

    def _resized_cache(self, **options: Any) -> ResizedVideoCache:
        """A cache storing every file at ``frame_size`` (for releases with large frames; ``options`` as
        :class:`datamodules.cache.ResizedVideoCache`: ``crop``, ``label_suffixes``)."""
        return ResizedVideoCache(
            self.cache_dir,
            self.frame_size,
            store_frames=self.decode_cache,
            resize=self.resize,
            backend=self.video_backend,
            **options,
        )

    def cache_paths(self) -> list[Path]:
        """Every file ``prepare_data`` decodes into the cache (subclasses add their label maps)."""
        return [record.path for record in self._selected_records()]

    def _selected_records(self) -> list[VideoRecord]:
        """The scanned records (scanned once, so its warnings appear once), limited by ``max_videos_per_split``."""
        if self._scanned is None:
            self._scanned = self.scan_records()
            if self.label_from_ef_below is not None:
                for record in self._scanned:
                    if math.isfinite(record.ef):
                        record.label = int(record.ef < self.label_from_ef_below)
        records = self._scanned
        if self.max_videos_per_split is None:
            return records
        chosen: list[VideoRecord] = []
        for split in SPLITS:
            chosen += [r for r in records if r.split == split][: self.max_videos_per_split]
        return chosen

    def prepare_data(self) -> None:
        """Decode and validate every video once (rank 0 of each node), ``decode_workers`` at a time, with a progress
        bar and a final count; later calls find everything cached and only read the manifest."""
        report = fill_cache(
            self._cache(),
            self.cache_paths(),
            self.decode_workers,
            description=f"{self.dataset_name}: decoding",
            parallel_from=self.parallel_decode_from,
        )
        if report.decoded:
            rank_zero_info(
                f"{self.dataset_name}: decoded {report.decoded} files into {self.cache_dir} in {report.seconds:.1f} s "
                f"({report.decoded / max(report.seconds, 1e-9):.1f}/s, {report.workers} processes; "
                f"{report.cached} were cached already, {report.unusable} are unusable)"
            )

    def _validate(self, records: list[VideoRecord]) -> list[VideoRecord]:
        cache = self._cache()
        usable, skipped, non_square = [], [], []
        for record in records:
            info: VideoInfo = cache.info(record.path)
            problem = info.error
            if problem is None and info.num_frames < self.truncation_threshold * record.expected_frames:
                problem = (
                    f"truncated: decodes {info.num_frames} of the {record.expected_frames} frames its index declares "
                    f"(below the truncation_threshold {self.truncation_threshold:g})"
                )
            if problem is None and info.num_frames < self.required_frames(record):
                problem = f"decodes {info.num_frames} frames but its annotations need {self.required_frames(record)}"
            if problem is not None:
                if self.on_bad_video == "raise":
                    raise DataError(f"{record.path}: {problem}")
                skipped.append((str(record.path), problem))
                continue
            fps = record.fps if math.isfinite(record.fps) and record.fps > 0 else info.fps
            usable.append(replace(record, num_frames=info.num_frames, height=info.height, width=info.width, fps=fps))
            source_height, source_width = info.source_shape
            if source_height != source_width:
                non_square.append(f"{Path(record.path).name} {source_height}x{source_width}")
        if non_square and self.resize == "stretch":
            rank_zero_warn(
                f"{self.dataset_name}: {len(non_square)} of {len(records)} videos are not square (e.g. "
                f"{', '.join(non_square[:3])} H x W); resize: stretch changes their aspect ratio to fit "
                f"{self.frame_size}x{self.frame_size} (set data.resize to pad or crop to keep it)"
            )
        if skipped:
            listed = "; ".join(f"{Path(p).name} ({why})" for p, why in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            rank_zero_warn(f"{self.dataset_name}: skipped {len(skipped)} of {len(records)} videos: {listed}{more}")
        self.skipped = skipped
        return usable

    def _normalisation(self, train_records: list[VideoRecord]) -> tuple[float, float]:
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        if not train_records:
            raise DataError(f"{self.data_dir}: the training split is empty, cannot compute normalisation statistics")
        mode = "" if self.resize == "stretch" else f"|{self.resize}"  # stretch keeps existing statistics files valid
        names = "|".join(sorted(str(r.path) for r in train_records)) + f"|{self.frame_size}{mode}"
        stats_path = self.cache_dir / f"normalisation-{hashlib.sha1(names.encode()).hexdigest()[:16]}.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            return stats["mean"], stats["std"]
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(train_records), size=min(128, len(train_records)), replace=False)
        cache = self._cache()
        total = total_sq = count = 0.0
        for index in sorted(chosen):
            record = train_records[index]
            if self.decode_cache:
                frames = np.asarray(cache.frames(record.path))
            else:
                frames = read_frames(record.path, np.arange(record.num_frames), self.video_backend)
            frames = resize_clip(frames, self.frame_size, self.resize).astype(np.float64)
            total += frames.sum()
            total_sq += np.square(frames).sum()
            count += frames.size
        mean = total / count
        std = math.sqrt(max(total_sq / count - mean**2, 1e-12))
        stats_path.write_text(json.dumps({"mean": mean, "std": std, "videos": int(len(chosen))}))
        return mean, std

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        records = self._validate(self._selected_records())
        self.records = {split: [r for r in records if r.split == split] for split in SPLITS}
        self.norm_mean, self.norm_std = self._normalisation(self.records["TRAIN"])

    @property
    def train_ef_mean(self) -> float:
        """Mean EF of the training split: the constant predictor that every EF model must beat."""
        values = [r.ef for r in self.records.get("TRAIN", []) if math.isfinite(r.ef)]
        return float(np.mean(values)) if values else math.nan

    @property
    def train_ef_std(self) -> float:
        """Standard deviation of the training split's EF: the scale EF heads predict in."""
        values = [r.ef for r in self.records.get("TRAIN", []) if math.isfinite(r.ef)]
        return float(np.std(values)) if len(values) > 1 else math.nan

    # ------------------------------------------------------------------ datasets and loaders

    def _seed(self) -> int:
        if self.seed is not None:
            return self.seed
        import os

        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def dataset_kwargs(self, train: bool) -> dict[str, Any]:
        """Keyword arguments of ``dataset_class`` (after records and cache); subclasses add or drop their own."""
        return {
            "clip_length": self.clip_length,
            "period": self.period,
            "frame_size": self.frame_size,
            "channels": self.channels,
            "mean": self.norm_mean,
            "std": self.norm_std,
            "train": train,
            "num_eval_clips": self.num_eval_clips,
            "num_views": self.num_views,
            "transform": self.train_transforms if train else None,
            "seed": self._seed(),
            "read_from_cache": self.decode_cache,
            "resize": self.resize,
        }

    def make_dataset(self, records: list[VideoRecord], train: bool) -> Dataset:
        return self.dataset_class(records, self._cache(), **self.dataset_kwargs(train))

    def _split_records(self, split: str) -> list[VideoRecord]:
        if split == "ALL":
            return [r for s in SPLITS for r in self.records[s]]
        return self.records[split]

    @staticmethod
    def _defer_normalisation(dataset: Dataset) -> Dataset:
        """Let the dataset hand out uint8 clips when its items are the base's (normalised later on the device)."""
        if isinstance(dataset, VideoClipDataset) and type(dataset).__getitem__ is VideoClipDataset.__getitem__:
            dataset.defer_normalisation = True
        return dataset

    def use_model_normalisation(self, mean: float, std: float) -> None:
        """Normalise with the statistics a model was trained with (its checkpoint's) instead of this dataset's own,
        unless ``mean``/``std`` were given explicitly: a model expects the intensities it was trained on, e.g. when
        predicting on a folder of new videos or testing on another dataset. Called by the model before test/predict."""
        if self.mean is not None and self.std is not None:
            return
        own = (float(self.norm_mean), float(self.norm_std))
        if abs(own[0] - mean) > 1e-6 * max(1.0, abs(mean)) or abs(own[1] - std) > 1e-6 * max(1.0, abs(std)):
            rank_zero_info(
                f"{self.data_dir}: normalising with the training run's statistics from the checkpoint (mean {mean:.3f}, "
                f"std {std:.3f}) instead of this data's own (mean {own[0]:.3f}, std {own[1]:.3f})"
            )
        self.norm_mean, self.norm_std = float(mean), float(std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise uint8 clips (``video``, ``normal_video``, ...) on the device they were moved to."""
        if not isinstance(batch, dict):
            return batch
        for key in [k for k in batch if k.endswith("video")]:
            video = batch[key]
            if torch.is_tensor(video) and video.dtype == torch.uint8:
                frames_mask = batch[key[: -len("video")] + "frames_mask"]
                batch[key] = normalise_clips(video, frames_mask, self.norm_mean, self.norm_std, self.channels)
        return batch

    def train_dataloader(self) -> StatefulDataLoader:
        dataset = self._defer_normalisation(self.make_dataset(self.records["TRAIN"], train=True))
        if self.paired:
            dataset = PairedClipDataset(dataset)
        sampler = EpochKeySampler(dataset, shuffle=True, seed=self._seed())
        if self.trainer is not None:  # a resumed run restores the epoch before asking for the loader
            sampler.set_epoch(self.trainer.current_epoch)
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.pin_memory,
            drop_last=len(dataset) > self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, records: list[VideoRecord]) -> DataLoader:
        dataset = self._defer_normalisation(self.make_dataset(records, train=False))
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every video exactly once across ranks (DistributedSampler would pad with duplicates)
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_eval_clips,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.records["VAL"])

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.records["TEST"])

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split_records(self.predict_split))
