"""CardiacNet-PAH and CardiacNet-ASD (apical 4-chamber videos, normal vs abnormal) in the layout of their release.

    data_dir/CardiacNet-PAH/{PAH,Non-PAH}/NNN_image.nii.gz   (+ NNN_label.nii.gz)
    data_dir/CardiacNet-ASD/{ASD,Non-ASD}/NNN_image.nii.gz   (+ NNN_label.nii.gz)

(``data_dir`` may also be the ``CardiacNet-PAH`` folder itself.) Videos are NIfTI ``(W, H, T)`` uint8 of varying
length, around 720p with the sector inside a black frame. As xmed-lab/CardiacNet does, each video is cropped to the
non-zero bounding box of its first frame; it is then resized to ``frame_size`` once, when it is decoded into the cache,
so a 720p video costs a few MB on disk instead of ~100 MB. Labels: 1 for the disease folder, 0 for ``Non-*``.

Splits are seeded and by patient (one file = one patient), stratified by class, with configurable fractions (the public
loader's split trains on 10% of the data, a bug not copied here). Short videos are padded by the base. ``paired=True``
gives training items of one normal and one abnormal clip for CardiacNet's two generators; otherwise items are plain
labelled clips for classifiers. Phantom datasets carry ``NNN_abnormal.nii.gz``, the ``(W, H)`` mask of where the
planted disease lives: it is cropped and resized like the video and reaches batches as ``abnormal_region``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import VideoClipDataset, VideoDataModule, VideoRecord
from datamodules.cache import ResizedVideoCache, decode_video
from datamodules.errors import ConfigError, DataError
from datamodules.nifti import read_label_map
from datamodules.splits import check_split_fractions, split_patients


def normalise_folder_name(name: str) -> str:
    """``Non-PAH``, ``non_pah``, ``NonPAH`` -> ``nonpah``: class folders in any spelling."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


class CardiacNetClipDataset(VideoClipDataset):
    """The base clip dataset; without the decoded cache, frames are cropped and resized per item like the cache."""

    def _frames(self, record: VideoRecord, indices: np.ndarray) -> np.ndarray:
        if self.read_from_cache:
            return super()._frames(record, indices)
        frames, info = decode_video(record.path, self.cache.backend)
        if info.error is not None:
            raise DataError(f"{record.path}: {info.error}")
        return self.cache.cut(frames[np.asarray(indices, int)], record.path, cv2.INTER_AREA)


class CardiacNetDataModule(VideoDataModule):
    """CardiacNet-PAH / -ASD: labelled clips (1 abnormal, 0 normal), or normal/abnormal pairs with ``paired=True``."""

    dataset_name = "CardiacNet"
    dataset_class = CardiacNetClipDataset

    def __init__(
        self,
        data_dir: str,
        subset: Literal["PAH", "ASD"] = "PAH",
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        crop_to_content: bool = True,
        clip_length: int = 16,
        num_eval_clips: int | None = 4,
        **kwargs: Any,
    ) -> None:
        """The shared arguments (``clip_length``, ``batch_size``, ``paired``...) are those of
        :class:`datamodules.base.VideoDataModule`, passed through ``kwargs`` (LightningCLI reads their types and
        help from there); only the defaults this dataset changes are restated here.

        subset: ``PAH`` (PAH vs Non-PAH) or ``ASD`` (ASD vs Non-ASD).
        split_fractions / split_seed: the seeded, class-stratified patient split (train, val, test).
        crop_to_content: crop each video to the non-zero bounding box of its first frame before resizing.
        """
        super().__init__(data_dir, clip_length=clip_length, num_eval_clips=num_eval_clips, **kwargs)
        if subset not in ("PAH", "ASD"):
            raise ConfigError(f"data.subset must be PAH or ASD, got {subset!r}")
        self.subset = subset
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.crop_to_content = crop_to_content
        self.subset_dir, self.class_dirs = self._find_class_dirs()

    def _find_class_dirs(self) -> tuple[Path, dict[int, Path]]:
        """The subset folder and its abnormal (1) / normal (0) class folders, in any spelling."""
        wanted = {normalise_folder_name(self.subset): 1, normalise_folder_name(f"Non-{self.subset}"): 0}
        for candidate in (self.data_dir / f"CardiacNet-{self.subset}", self.data_dir):
            if not candidate.is_dir():
                continue
            found = {
                wanted[normalise_folder_name(p.name)]: p
                for p in candidate.iterdir()
                if p.is_dir() and normalise_folder_name(p.name) in wanted
            }
            if len(found) == 2:
                return candidate, found
        raise ConfigError(
            f"data.data_dir '{self.data_dir}' has no CardiacNet-{self.subset}/{{{self.subset},Non-{self.subset}}} "
            f"folders: is it a CardiacNet download (or a phantom from `echolab phantom --format cardiacnet`)?"
        )

    def _cache(self) -> ResizedVideoCache:
        return self._resized_cache(crop=self.crop_to_content)

    def scan_records(self) -> list[VideoRecord]:
        entries: list[tuple[str, Path, int]] = []
        for label, folder in sorted(self.class_dirs.items()):
            for path in sorted(folder.iterdir()):
                name = path.name
                if name.endswith(("_image.nii.gz", "_image.nii")):
                    entries.append((f"{folder.name}/{name.split('_image')[0]}", path, label))
        if not entries:
            raise DataError(
                f"{self.subset_dir}: no NNN_image.nii.gz files in {', '.join(p.name for p in self.class_dirs.values())}"
            )
        labels = {patient: label for patient, _, label in entries}
        splits = split_patients(list(labels), self.split_fractions, self.split_seed, strata=labels)
        records = []
        for patient, path, label in entries:
            stem = path.name.split("_image")[0]
            extra: dict[str, object] = {"patient": patient}
            for kind in ("label", "abnormal"):
                companion = path.parent / f"{stem}_{kind}.nii.gz"
                if companion.is_file():
                    extra[f"{kind}_path"] = str(companion)
            records.append(VideoRecord(path=path, filename=patient, split=splits[patient], label=label, extra=extra))
        return records

    def required_frames(self, record: VideoRecord) -> int:
        return 1  # no annotated frames: any decodable video is usable, short ones are padded

    def _validate(self, records: list[VideoRecord]) -> list[VideoRecord]:
        """The base's validation, then each phantom abnormal region cut with its video's crop box and resized."""
        usable = super()._validate(records)
        cache = self._cache()
        out = []
        for record in usable:
            path = record.extra.get("abnormal_path")
            if path is not None:
                try:
                    region = read_label_map(path)[0]
                except ValueError as error:
                    if self.on_bad_video == "raise":
                        raise DataError(str(error)) from error
                    rank_zero_warn(f"{self.dataset_name}: ignoring an unreadable abnormal region: {error}")
                    out.append(record)
                    continue
                resized = cache.cut(region[None], record.path, cv2.INTER_NEAREST)[0]
                record = replace(record, abnormal_region=resized > 0)
            out.append(record)
        return out
