"""Every segmented frame of CAMUS-layout data (all ``half_sequence_gt`` frames, or ED/ES where only those exist).

:class:`datamodules.camus.CamusDataModule` with ``task="frames"`` serves the ED and ES frames only; the anatomical
VAE and the 2D segmenter want every labelled frame, and the post-processing wants whole sequences in order. This
module reads the same layouts through the CAMUS reader's own scanning helpers (patients, official or seeded split,
Info cfg), holds the frames resized to a square ``frame_size`` in memory (uint8; real CAMUS at 256 px is ~1.3 GB for
images + masks, the phantom a few MB) and yields the data contract's frame batches: ``image`` ``(B, C, H, W)``
normalised, ``mask`` ``(B, H, W)`` labels 0-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.camus import (
    VIEWS,
    _field,
    _number,
    find_image,
    find_patient_dirs,
    read_info_cfg,
    read_official_split,
    split_patients,
)
from datamodules.errors import ConfigError, DataError
from datamodules.nifti import load_sequence_array, to_uint8
from datamodules.transforms import resize_clip, resize_masks
from echo_modules.anatomical_vae.mask_io import read_masks


@dataclass
class CamusSequence:
    """One view of one patient: frames and labels resized to ``frame_size``, with what the indices need."""

    name: str  # patientXXXX_2CH
    patient: str
    view: str
    split: str
    images: np.ndarray  # (T, S, S) uint8
    masks: np.ndarray  # (T, S, S) uint8 labels 0-3
    spacing: tuple[float, float]  # (row, col) mm per pixel of the resized frames
    ed_index: int
    es_index: int
    ef: float  # Info cfg EF / LVef (nan when absent)
    mask_path: Path | None = None  # the sequence ground truth read (for writing corrected masks beside it)


def load_camus_sequences(
    data_dir: str | Path,
    frame_size: int,
    views: tuple[str, ...] = VIEWS,
    official_split: bool = True,
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
) -> list[CamusSequence]:
    """Read every view with ground truth under ``data_dir`` (2023 NIfTI or 2019 MHD layout)."""
    data_dir = Path(data_dir)
    folders = find_patient_dirs(data_dir)
    if not folders:
        raise DataError(f"{data_dir}: no patientXXXX folders found (is it a CAMUS download?)")
    official = read_official_split(data_dir) if official_split else None
    splits = official or split_patients([f.name for f in folders], split_fractions, split_seed)
    sequences = []
    for folder in folders:
        if folder.name not in splits:
            continue
        for view in views:
            sequence = _read_view(folder, view, splits[folder.name], frame_size)
            if sequence is not None:
                sequences.append(sequence)
    if not sequences:
        raise DataError(f"{data_dir}: no view has a ground-truth segmentation (_gt files)")
    return sequences


def _read_view(folder: Path, view: str, split: str, frame_size: int) -> CamusSequence | None:
    patient = folder.name
    cfg_path = folder / f"Info_{view}.cfg"
    fields = read_info_cfg(cfg_path) if cfg_path.is_file() else {}
    ef = _number(cfg_path, fields, "EF", "LVef") if fields else math.nan
    sequence_path = find_image(folder, f"{patient}_{view}_half_sequence") or find_image(
        folder, f"{patient}_{view}_sequence"
    )
    gt_path = None
    if sequence_path is not None:
        gt_path = find_image(folder, f"{sequence_path.name.split('.')[0]}_gt")
    if gt_path is not None:
        images = to_uint8(load_sequence_array(sequence_path)[0])
        masks, spacing = read_masks(gt_path)
        ed = int(_field(fields, "ED") or 1) - 1
        es = int(_field(fields, "ES") or len(masks)) - 1
    else:  # ED and ES frames only
        pairs = [(find_image(folder, f"{patient}_{view}_{i}"), find_image(folder, f"{patient}_{view}_{i}_gt"))
                 for i in ("ED", "ES")]  # fmt: skip
        if any(image is None or gt is None for image, gt in pairs):
            return None
        images = np.concatenate([to_uint8(load_sequence_array(image)[0][:1]) for image, _ in pairs])
        read = [read_masks(gt) for _, gt in pairs]
        masks, spacing = np.concatenate([m[:1] for m, _ in read]), read[0][1]
        ed, es = 0, 1
    if images.shape != masks.shape:
        raise DataError(f"{gt_path or folder}: labels {masks.shape} do not match the images {images.shape}")
    height, width = masks.shape[1:]
    last = len(masks) - 1
    return CamusSequence(
        name=f"{patient}_{view}",
        patient=patient,
        view=view,
        split=split,
        images=resize_clip(images, frame_size),
        masks=resize_masks(masks, frame_size),
        spacing=(spacing[0] * height / frame_size, spacing[1] * width / frame_size),
        ed_index=min(max(ed, 0), last),
        es_index=min(max(es, 0), last),
        ef=ef,
        mask_path=gt_path,
    )


class FrameDataset(Dataset):
    """Frames of a list of sequences as ``{"image", "mask", "sequence", "frame"}`` items; ``sequence`` is
    ``sequence_ids[s]`` (default ``s``): the DataModule passes each sequence's index in its ``sequences`` (all splits),
    which is what ``Segmenter2D.predict_step`` looks the sequence up by."""

    def __init__(
        self,
        sequences: list[CamusSequence],
        mean: float,
        std: float,
        channels: int = 1,
        sequence_ids: list[int] | None = None,
    ) -> None:
        self.sequences = sequences
        self.index = [(s, t) for s, sequence in enumerate(sequences) for t in range(len(sequence.masks))]
        self.mean, self.std, self.channels = mean, std, channels
        self.sequence_ids = list(range(len(sequences))) if sequence_ids is None else list(sequence_ids)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        s, t = self.index[item]
        sequence = self.sequences[s]
        image = (torch.from_numpy(sequence.images[t].astype(np.float32)) - self.mean) / self.std
        return {
            "image": image[None].expand(self.channels, -1, -1).contiguous(),
            "mask": torch.from_numpy(sequence.masks[t].astype(np.int64)),
            "spacing": torch.tensor(sequence.spacing, dtype=torch.float32),
            "sequence": self.sequence_ids[s],
            "frame": t,
        }


class SequenceBatchSampler(Sampler):
    """One batch per sequence, frames in order (whole-sequence prediction and post-processing)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)

    def __iter__(self):
        start = 0
        for size in self.sizes:
            yield list(range(start, start + size))
            start += size

    def __len__(self) -> int:
        return len(self.sizes)


class CamusFramesDataModule(L.LightningDataModule):
    """Every labelled frame of a CAMUS-layout folder (phantom or real) for the segmenter and the anatomical VAE.

    Predict serves whole sequences in order (one batch per sequence), for sequence-level post-processing.
    """

    def __init__(
        self,
        data_dir: str,
        frame_size: int = 256,
        views: Literal["2CH", "4CH", "both"] = "both",
        channels: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
        official_split: bool = True,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        predict_split: Literal["TRAIN", "VAL", "TEST"] = "TEST",
    ) -> None:
        super().__init__()
        if views not in ("2CH", "4CH", "both"):
            raise ConfigError(f"data.views must be 2CH, 4CH or both, got {views!r}")
        if frame_size % 16:
            raise ConfigError(f"data.frame_size must be a multiple of 16, got {frame_size}")
        self.data_dir = Path(data_dir)
        self.frame_size = frame_size
        self.views = VIEWS if views == "both" else (views,)
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.official_split = official_split
        self.split_fractions = split_fractions
        self.split_seed = split_seed
        self.predict_split = predict_split
        self.sequences: list[CamusSequence] | None = None
        self.norm_mean: float | None = None
        self.norm_std: float | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.sequences is not None:
            return
        self.sequences = load_camus_sequences(
            self.data_dir, self.frame_size, self.views, self.official_split, self.split_fractions, self.split_seed
        )
        train = [s.images for s in self.sequences if s.split == "TRAIN"] or [s.images for s in self.sequences]
        pixels = np.concatenate([images.ravel() for images in train]).astype(np.float64)
        self.norm_mean, self.norm_std = float(pixels.mean()), float(max(pixels.std(), 1e-3))

    def use_model_normalisation(self, mean: float, std: float) -> None:
        self.norm_mean, self.norm_std = mean, std

    def split(self, name: str) -> list[CamusSequence]:
        self.setup()
        return [s for s in self.sequences if s.split == name]

    def _dataset(self, split: str) -> FrameDataset:
        self.setup()
        ids = [index for index, sequence in enumerate(self.sequences) if sequence.split == split]
        sequences = [self.sequences[index] for index in ids]
        return FrameDataset(sequences, self.norm_mean, self.norm_std, self.channels, sequence_ids=ids)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("TRAIN", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("VAL", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("TEST", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.predict_split)
        sequences = dataset.sequences
        sampler = SequenceBatchSampler([len(s.masks) for s in sequences])
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers)
