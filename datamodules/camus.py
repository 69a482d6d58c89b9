"""CAMUS (2- and 4-chamber apical echo, ED/ES segmentations, EF) in the layouts of its 2023 NIfTI and 2019 MHD releases.

    data_dir/[training/]patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES,half_sequence}[_gt].nii.gz    (2023)
    data_dir/[training/]patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES,sequence}[_gt].mhd + .raw     (2019)
    data_dir/[training/]patientXXXX/Info_{2CH,4CH}.cfg        "Key: value" lines, keys in any order
    data_dir/database_split/subgroup_{training,validation,testing}.txt     one patient per line (2023, optional)

Quirks honoured: the 2023 cfg keys are ED, ES, NbFrame, Sex, Age, ImageQuality, EF, FrameRate, the 2019 ones ED, ES,
NbFrame, Sex, Age, ImageQuality, LVedv, LVesv, LVef (both accepted); ED and ES are 1-based; a half-sequence may hold
one frame fewer than NbFrame says (the file wins, an index past its end is clamped to the last frame); some frames lack
a ``_gt`` file; ImageQuality comes in any case. Arrays are stored (W, H[, T]): they are read upright (apex on top).
Labels are CAMUS's own: 0 background, 1 LV cavity, 2 myocardium, 3 left atrium. Images are resized to the square
``frame_size`` (label maps by nearest neighbour) once, when ``prepare_data`` decodes them into the cache.

One DataModule serves three tasks (``task``):

* ``sequence``: half-sequences as clips in the video batch format of :mod:`datamodules.base` (``video``, ``ef``,
  ``ed_index``/``es_index``, ``ed_mask``/``es_mask`` with labels 0-3; ``masks`` of the clip frames with
  ``sequence_masks=True`` where a ``half_sequence_gt`` file exists), so EF methods run on it unchanged;
* ``frames``: the segmented ED and ES frames, ``image`` ``(B, C, H, W)`` and ``mask`` ``(B, H, W)``, for 2D
  segmentation and the anatomical VAE;
* ``synthesis``: one clip per sequence starting at ED with its ``ed_mask`` (the semantic map a synthesizer is
  conditioned on), in training and evaluation alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from datamodules.base import VideoClipDataset, VideoDataModule, VideoRecord, collate_clips
from datamodules.cache import ResizedVideoCache, read_frames
from datamodules.errors import ConfigError, DataError
from datamodules.nifti import read_label_map
from datamodules.splits import check_split_fractions, split_patients  # noqa: F401  (re-exported: older imports)
from datamodules.transforms import apply_to_clip, resize_clip, resize_masks

VIEWS = ("2CH", "4CH")
INSTANTS = ("ED", "ES")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd")
LABEL_SUFFIXES = tuple(f"_gt{suffix}" for suffix in IMAGE_SUFFIXES)
SPLIT_FILES = {"TRAIN": "subgroup_training.txt", "VAL": "subgroup_validation.txt", "TEST": "subgroup_testing.txt"}


# ---------------------------------------------------------------------------------------------------- layout


def read_info_cfg(path: Path) -> dict[str, str]:
    """``Key: value`` lines of an Info cfg as a dict (keys in any order, blank lines ignored)."""
    fields: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DataError(f"{path}: line {number} {line.strip()[:40]!r} is not 'Key: value'")
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    return fields


def cfg_field(fields: Mapping[str, str], *names: str) -> str | None:
    """The first non-empty value among ``names`` (any case) of a parsed Info cfg, or None."""
    lowered = {key.lower(): value for key, value in fields.items()}
    for name in names:
        if name.lower() in lowered and lowered[name.lower()] != "":
            return lowered[name.lower()]
    return None


def cfg_number(path: Path, fields: Mapping[str, str], *names: str, required: bool = False) -> float:
    """A numeric Info cfg field (nan when absent and not required); DataError naming the file when it is not a number."""
    text = cfg_field(fields, *names)
    if text is None:
        if required:
            raise DataError(f"{path}: has no {names[0]} entry (found keys {sorted(fields)})")
        return math.nan
    try:
        return float(text)
    except ValueError as error:
        raise DataError(f"{path}: {names[0]} is {text!r}, not a number") from error


def _integer(path: Path, fields: Mapping[str, str], *names: str, required: bool = False) -> int | None:
    """A whole-number field (a frame number or count); None when absent and not required, DataError when it is not
    a finite whole number (``nan``, ``abc``, ``3.5``)."""
    value = cfg_number(path, fields, *names, required=required)
    if cfg_field(fields, *names) is None:
        return None
    if not math.isfinite(value) or value != int(value):
        raise DataError(f"{path}: {names[0]} is {cfg_field(fields, *names)!r}, not a whole number")
    return int(value)


_field, _number = cfg_field, cfg_number  # the former private names (echo_modules/anatomical_vae imports them)


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` with the first image suffix that exists (.nii.gz, .nii, .mhd)."""
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_patient_dirs(data_dir: Path) -> list[Path]:
    """``patient*`` folders directly under ``data_dir`` or one level down (the 2019 release's ``training/``)."""
    found = sorted(p for p in data_dir.glob("patient*") if p.is_dir())
    found += sorted(p for p in data_dir.glob("*/patient*") if p.is_dir() and not p.parent.name.startswith("."))
    by_name: dict[str, Path] = {}
    for path in found:
        if path.name in by_name:
            raise DataError(f"{data_dir}: patient {path.name} appears twice ({by_name[path.name]} and {path})")
        by_name[path.name] = path
    return [by_name[name] for name in sorted(by_name)]


def read_official_split(data_dir: Path) -> dict[str, str] | None:
    """Patient -> split from ``database_split/subgroup_*.txt``; None when the folder is absent."""
    folder = data_dir / "database_split"
    if not folder.is_dir():
        return None
    assignment: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder}: {name} is missing (expected {', '.join(SPLIT_FILES.values())})")
        for line in path.read_text().splitlines():
            patient = line.strip()
            if not patient:
                continue
            if patient in assignment and assignment[patient] != split:
                raise DataError(f"{path}: patient {patient} is also listed for {assignment[patient]}")
            assignment[patient] = split
    return assignment


# ---------------------------------------------------------------------------------------------------- datasets


def _label_maps(cache, path: str | Path, read_from_cache: bool) -> np.ndarray:
    """Segmentation ``(T, H, W)`` uint8 labels: from the decoded cache (validated in setup) or from the file."""
    if read_from_cache:
        return np.asarray(cache.frames(path))
    try:
        return read_label_map(path)
    except ValueError as error:
        raise DataError(str(error)) from error


class CamusClipDataset(VideoClipDataset):
    """Half-sequence clips in the base's batch format, with ED/ES masks from the ``_gt`` files (labels 0-3).

    ``sequence_masks`` adds ``masks``: the label maps of the clip's frames (zeros where no ``half_sequence_gt``
    exists or the frame is padding), shaped like ``video`` without the channel axis, transformed with the frames.
    ``start_at_ed`` (synthesis) takes one clip starting at the ED frame, in training and evaluation alike.
    """

    def __init__(self, *args: Any, sequence_masks: bool = False, start_at_ed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sequence_masks = sequence_masks
        self.start_at_ed = start_at_ed

    def _label_map(self, path: str, frame: int = 0) -> np.ndarray:
        maps = _label_maps(self.cache, path, self.read_from_cache)
        return np.asarray(maps[min(frame, len(maps) - 1)])

    def _masks(self, record: VideoRecord) -> np.ndarray:
        """(3, H, W) uint8: ED labels, ES labels, the abnormal region (zeros where unknown)."""
        masks = np.zeros((3, record.height, record.width), np.uint8)
        gt = record.extra.get("gt", {})
        for slot, (instant, index) in enumerate((("ED", record.ed_index), ("ES", record.es_index))):
            if instant in gt:
                label = self._label_map(gt[instant])
            elif "sequence" in gt and index >= 0:
                label = self._label_map(gt["sequence"], index)
            else:
                continue
            masks[slot] = label if label.shape == masks.shape[1:] else _resize_to(label, masks.shape[1:])
        return masks

    def _clip_masks(self, record: VideoRecord, indices: np.ndarray, real: np.ndarray) -> np.ndarray:
        """(len(indices), H, W) labels of the given frames; zeros without a sequence ground truth or on padding."""
        out = np.zeros((len(indices), record.height, record.width), np.uint8)
        path = record.extra.get("gt", {}).get("sequence")
        if path is None:
            return out
        maps = _label_maps(self.cache, path, self.read_from_cache)
        usable = real & (indices < len(maps))
        picked = np.asarray(maps[indices[usable]])
        if picked.shape[1:] != out.shape[1:]:
            picked = np.stack([_resize_to(m, out.shape[1:]) for m in picked]) if len(picked) else picked
        out[usable] = picked
        return out

    def clip_starts(self, record: VideoRecord, rng: np.random.Generator | None) -> list[int]:
        """Synthesis: one clip from the ED frame (``num_views`` copies in training); else the base's starts."""
        if self.start_at_ed:
            return [max(record.ed_index, 0)] * (self.num_views if rng is not None else 1)
        return super().clip_starts(record, rng)

    def frame_masks(self, record: VideoRecord, indices: np.ndarray, real: np.ndarray) -> np.ndarray | None:
        return self._clip_masks(record, indices, real) if self.sequence_masks else None

    def extra_fields(self, record: VideoRecord) -> dict[str, Any]:
        gt = record.extra.get("gt", {})
        has_ed = "ED" in gt or ("sequence" in gt and record.ed_index >= 0)
        has_es = "ES" in gt or ("sequence" in gt and record.es_index >= 0)
        fields: dict[str, Any] = {
            "has_masks": torch.tensor(has_ed and has_es),
            "has_abnormal_region": torch.tensor(False),
            "view": record.extra.get("view", ""),
        }
        if self.sequence_masks:
            fields["has_sequence_masks"] = torch.tensor("sequence" in gt)
        return fields


class CamusFrameDataset(Dataset):
    """Segmented ED/ES frames: ``image`` ``(C, H, W)`` normalised, ``mask`` ``(H, W)`` labels 0-3.

    Training augmentation is drawn as a pure function of ``(seed, epoch, index)`` like the clip datasets, so the
    base's resumable sampler and loaders serve it unchanged.
    """

    ARGUMENTS = ("frame_size", "channels", "mean", "std", "train", "transform", "seed", "read_from_cache", "resize")

    def __init__(
        self,
        records: Sequence[VideoRecord],
        cache,
        *,
        frame_size: int,
        channels: int,
        mean: float,
        std: float,
        train: bool,
        transform: A.BaseCompose | None = None,
        seed: int = 0,
        read_from_cache: bool = True,
        resize: str = "stretch",
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.frame_size = frame_size
        self.resize = resize
        self.channels = channels
        self.mean = mean
        self.std = std
        self.train = train
        self.transform = transform
        self.seed = seed
        self.read_from_cache = read_from_cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        if self.read_from_cache:
            image = np.asarray(self.cache.frames(record.path)[0])
        else:
            image = read_frames(record.path, np.array([0]), self.cache.backend)[0]
        label = np.asarray(_label_maps(self.cache, record.extra["gt"]["image"], self.read_from_cache)[0])
        if label.shape != image.shape:
            label = _resize_to(label, image.shape)
        image = resize_clip(image[None], self.frame_size, self.resize)
        label = resize_masks(label[None], self.frame_size, self.resize)
        if self.train and self.transform is not None:
            seed = int(np.random.default_rng([self.seed, epoch, index]).integers(2**31 - 1))
            image, label = apply_to_clip(self.transform, image, label, seed=seed)
        tensor = (torch.from_numpy(np.ascontiguousarray(image[0])).float() - self.mean) / self.std
        return {
            "image": tensor[None].expand(self.channels, -1, -1).contiguous(),
            "mask": torch.from_numpy(np.asarray(label[0], np.int64)),
            "filename": record.filename,
            "view": record.extra["view"],
            "instant": record.extra["instant"],
            "ef": torch.tensor(record.ef, dtype=torch.float32),
            "label": torch.tensor(record.label, dtype=torch.long),
        }


def _resize_to(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label map resized to ``shape`` (H, W) by nearest neighbour."""
    return cv2.resize(np.ascontiguousarray(label), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def collate_with_sequence_masks(items: list[dict[str, Any]], concat_clips: bool = False) -> dict[str, Any]:
    """:func:`datamodules.base.collate_clips` that also concatenates (evaluation) or stacks ``masks`` like ``video``."""
    if "masks" not in items[0]:
        return collate_clips(items, concat_clips)
    masks = [item.pop("masks") for item in items]
    batch = collate_clips(items, concat_clips)
    batch["masks"] = torch.cat(masks) if concat_clips else torch.stack(masks)
    return batch


def collate_eval_with_sequence_masks(items: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_with_sequence_masks(items, concat_clips=True)


# ---------------------------------------------------------------------------------------------------- DataModule


class CamusDataModule(VideoDataModule):
    """CAMUS for EF (``task="sequence"``), segmentation (``"frames"``) and ED-conditioned synthesis (``"synthesis"``).

    Splits are by patient: the official ``database_split`` files when present (and ``official_split``), else a
    seeded split with ``split_fractions``; both views of a patient always share its split.
    """

    dataset_name = "CAMUS"

    def __init__(
        self,
        data_dir: str,
        task: Literal["sequence", "frames", "synthesis"] = "sequence",
        views: Literal["2CH", "4CH", "both"] = "both",
        exclude_quality: list[str] | None = None,
        official_split: bool = True,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        sequence_masks: bool = False,
        clip_length: int = 16,
        period: int = 1,
        **kwargs: Any,
    ) -> None:
        """The shared arguments (``clip_length``, ``batch_size``, ``paired``...) are those of
        :class:`datamodules.base.VideoDataModule`, passed through ``kwargs`` (LightningCLI reads their types and
        help from there); only the defaults this dataset changes are restated here (``on_bad_video`` also covers
        missing or malformed Info cfgs and unreadable ``_gt`` files).

        task: ``sequence`` (half-sequence clips, EF, ED/ES masks), ``frames`` (ED/ES image + mask items) or
            ``synthesis`` (one clip from ED + ``ed_mask`` per sequence).
        views: which apical views to use.
        exclude_quality: ImageQuality values to leave out, any case (e.g. ``[poor]``).
        official_split: use ``database_split/subgroup_*.txt`` when present.
        split_fractions / split_seed: the seeded patient split used otherwise (train, val, test).
        sequence_masks: add ``masks`` (labels of every clip frame) where ``half_sequence_gt`` files exist.
        """
        super().__init__(data_dir, clip_length=clip_length, period=period, **kwargs)
        if task not in ("sequence", "frames", "synthesis"):
            raise ConfigError(f"data.task must be sequence, frames or synthesis, got {task!r}")
        if views not in ("2CH", "4CH", "both"):
            raise ConfigError(f"data.views must be 2CH, 4CH or both, got {views!r}")
        self.task = task
        self.views = VIEWS if views == "both" else (views,)
        self.exclude_quality = {q.strip().lower() for q in (exclude_quality or [])}
        self.official_split = official_split
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.sequence_masks = sequence_masks

    # ------------------------------------------------------------------ scanning

    def _patient_splits(self, patients: list[str]) -> dict[str, str]:
        official = read_official_split(self.data_dir) if self.official_split else None
        if official is None:
            return split_patients(patients, self.split_fractions, self.split_seed)
        unlisted = [p for p in patients if p not in official]
        if unlisted:
            rank_zero_warn(
                f"{self.dataset_name}: {len(unlisted)} patients are in no database_split file and are left out "
                f"(e.g. {', '.join(unlisted[:3])})"
            )
        return {p: official[p] for p in patients if p in official}

    def _view_record(self, folder: Path, view: str, split: str) -> VideoRecord | None:
        """The view's half-sequence record, or None (with the problem raised or recorded) when unusable."""
        patient = folder.name
        cfg = folder / f"Info_{view}.cfg"
        if not cfg.is_file():
            raise DataError(f"{cfg}: missing Info cfg for {patient} {view}")
        fields = read_info_cfg(cfg)
        ed = _integer(cfg, fields, "ED", required=True)
        es = _integer(cfg, fields, "ES", required=True)
        if ed < 1 or es < 1:
            raise DataError(f"{cfg}: ED ({ed}) and ES ({es}) are 1-based frame numbers, they must be >= 1")
        quality = (cfg_field(fields, "ImageQuality") or "").strip()
        nb_frames = _integer(cfg, fields, "NbFrame")
        nb_frames = -1 if nb_frames is None else nb_frames
        sequence = find_image(folder, f"{patient}_{view}_half_sequence") or find_image(
            folder, f"{patient}_{view}_sequence"
        )
        if sequence is None and self.task != "frames":
            raise DataError(f"{folder}: no {patient}_{view}_half_sequence (.nii.gz/.nii) or _sequence (.mhd) file")
        gt: dict[str, str] = {}
        for instant in INSTANTS:
            path = find_image(folder, f"{patient}_{view}_{instant}_gt")
            if path is not None:
                gt[instant] = str(path)
        if sequence is not None:
            seq_gt = find_image(folder, f"{sequence.name.split('.')[0]}_gt")
            if seq_gt is not None:
                gt["sequence"] = str(seq_gt)
        return VideoRecord(
            path=sequence if sequence is not None else cfg,
            filename=f"{patient}_{view}",
            split=split,
            ef=cfg_number(cfg, fields, "EF", "LVef"),
            fps=cfg_number(cfg, fields, "FrameRate"),
            ed_index=ed - 1,
            es_index=es - 1,
            expected_frames=max(nb_frames, 0),
            extra={
                "patient": patient,
                "view": view,
                "quality": quality,
                "nb_frames": nb_frames,
                "edv": cfg_number(cfg, fields, "LVedv"),
                "esv": cfg_number(cfg, fields, "LVesv"),
                "sex": cfg_field(fields, "Sex") or "",
                "age": cfg_number(cfg, fields, "Age"),
                "gt": gt,
            },
        )

    def _frame_records(self, record: VideoRecord) -> tuple[list[VideoRecord], int]:
        """The ED/ES frame items of a view record (those with an image and a ``_gt``) and how many lacked one."""
        folder = record.path.parent
        records, missing = [], 0
        for instant in INSTANTS:
            image = find_image(folder, f"{record.extra['patient']}_{record.extra['view']}_{instant}")
            label = record.extra["gt"].get(instant)
            if image is None or label is None:
                missing += 1
                continue
            extra = dict(record.extra, instant=instant, gt={"image": label})
            name = f"{record.filename}_{instant}"
            records.append(
                replace(record, path=image, filename=name, ed_index=-1, es_index=-1, expected_frames=0, extra=extra)
            )
        return records, missing

    def scan_records(self) -> list[VideoRecord]:
        folders = find_patient_dirs(self.data_dir)
        if not folders:
            raise DataError(f"{self.data_dir}: no patientXXXX folders found (is it a CAMUS download?)")
        splits = self._patient_splits([f.name for f in folders])
        records: list[VideoRecord] = []
        problems: list[str] = []
        excluded = frames_without_gt = 0
        unlabelled: list[str] = []  # sequences without the target their task needs (the 2019 testing/ patients)
        for folder in folders:
            if folder.name not in splits:
                continue
            for view in self.views:
                try:
                    record = self._view_record(folder, view, splits[folder.name])
                except DataError as error:
                    if self.on_bad_video == "raise":
                        raise
                    problems.append(str(error))
                    continue
                if record.extra["quality"].lower() in self.exclude_quality:
                    excluded += 1
                    continue
                if self.task == "frames":
                    frame_records, missing = self._frame_records(record)
                    records += frame_records
                    frames_without_gt += missing
                elif self.task == "sequence" and not math.isfinite(record.ef):
                    unlabelled.append(record.filename)
                elif self.task == "synthesis" and not ({"ED", "sequence"} & set(record.extra["gt"])):
                    unlabelled.append(record.filename)
                else:
                    records.append(record)
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            rank_zero_warn(f"{self.dataset_name}: skipped {len(problems)} views: {problems[0]}{more}")
        if unlabelled:
            need = "an EF (EF / LVef)" if self.task == "sequence" else "an ED ground truth"
            rank_zero_warn(
                f"{self.dataset_name}: {len(unlabelled)} views have no {need} and are left out "
                f"(e.g. {', '.join(unlabelled[:3])})"
            )
        if frames_without_gt:
            rank_zero_warn(
                f"{self.dataset_name}: {frames_without_gt} ED/ES frames have no image or _gt file and are left out"
            )
        self.excluded_by_quality = excluded
        self.scan_problems = problems
        return records

    # ------------------------------------------------------------------ validation

    def _cache(self) -> ResizedVideoCache:
        """Sequences and label maps are decoded once and stored at ``frame_size`` (labels by nearest neighbour)."""
        return self._resized_cache(label_suffixes=LABEL_SUFFIXES)

    def required_frames(self, record: VideoRecord) -> int:
        """The file wins over the cfg: ED/ES past the end of a sequence are clamped after decoding, not rejected."""
        return 1

    def cache_paths(self) -> list[Path]:
        """The sequences (or frames) and their ``_gt`` label maps."""
        paths = super().cache_paths()
        for record in self._selected_records():
            paths += [Path(path) for path in record.extra.get("gt", {}).values()]
        return paths

    def _validate(self, records: list[VideoRecord]) -> list[VideoRecord]:
        usable = super()._validate(records)
        cache = self._cache()
        kept, bad_gt = [], []
        for record in usable:
            gt = dict(record.extra.get("gt", {}))
            for name, path in list(gt.items()):
                problem = cache.info(path).error
                if problem is None:
                    continue
                if self.on_bad_video == "raise":
                    raise DataError(f"{path}: {problem}")
                bad_gt.append(f"{Path(path).name} ({problem})")
                del gt[name]
            if self.task == "frames" and "image" not in gt:
                continue  # a frame item is nothing without its mask
            last = record.num_frames - 1
            kept.append(
                replace(
                    record,
                    ed_index=min(record.ed_index, last),
                    es_index=min(record.es_index, last),
                    extra=dict(record.extra, gt=gt),
                )
            )
        if bad_gt:
            rank_zero_warn(
                f"{self.dataset_name}: {len(bad_gt)} ground-truth files are unreadable: {'; '.join(bad_gt[:3])}"
            )
            self.skipped = self.skipped + [(name, "unreadable ground truth") for name in bad_gt]
        return kept

    # ------------------------------------------------------------------ datasets and loaders

    @property
    def dataset_class(self) -> type[Dataset]:  # type: ignore[override]
        return CamusFrameDataset if self.task == "frames" else CamusClipDataset

    def dataset_kwargs(self, train: bool) -> dict[str, Any]:
        kwargs = super().dataset_kwargs(train)
        if self.task == "frames":
            return {name: kwargs[name] for name in CamusFrameDataset.ARGUMENTS}
        return kwargs | {"sequence_masks": self.sequence_masks, "start_at_ed": self.task == "synthesis"}

    def train_dataloader(self):
        loader = super().train_dataloader()
        if self.sequence_masks and self.task != "frames":
            loader.collate_fn = collate_with_sequence_masks
        return loader

    def _eval_loader(self, records: list[VideoRecord]) -> DataLoader:
        loader = super()._eval_loader(records)
        if self.sequence_masks and self.task != "frames":
            loader.collate_fn = collate_eval_with_sequence_masks
        return loader
