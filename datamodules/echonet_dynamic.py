"""EchoNet-Dynamic (and EchoNet-Pediatric, whose FileList differs) in the layout of the public release.

``data_dir/FileList.csv``, ``data_dir/VolumeTracings.csv`` and ``data_dir/Videos/*.avi``. Quirks honoured:
FileList's FileName has no extension while VolumeTracings' has ``.avi`` (Pediatric keeps it in both); Split is
TRAIN/VAL/TEST in any case (Pediatric: an integer fold); the decoded frame count wins over NumberOfFrames (within
``truncation_threshold``: a video decoding far fewer frames is truncated and skipped); the two traced frames are told
apart by traced area (ED is the larger), not by their order; rows may lack tracings or videos. ``Videos/`` may be a
folder of symlinks (hand-made subsets, DVC, git-annex); a FileName whose own text climbs out of it (``../``, an
absolute path) is refused. Rows whose EF is missing or not a number are left out with one warning naming them.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import SPLITS, VideoDataModule, VideoRecord
from datamodules.errors import ConfigError, DataError
from datamodules.tracings import tracing_area


def finite_number(value: object) -> float | None:
    """A table cell as a finite float, or None when it is empty, ``nan``/``inf`` or not a number (``abc``)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_volume_tracings(path: Path) -> dict[str, dict[int, np.ndarray]]:
    """VolumeTracings.csv -> {video stem: {frame: (rows, 4) array X1, Y1, X2, Y2 in file order}}."""
    table = pd.read_csv(path)
    missing = {"FileName", "X1", "Y1", "X2", "Y2", "Frame"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    tracings: dict[str, dict[int, np.ndarray]] = {}
    coords = table[["X1", "Y1", "X2", "Y2"]].to_numpy(np.float64)
    for (name, frame), rows in table.groupby(["FileName", "Frame"], sort=False).indices.items():
        tracings.setdefault(Path(str(name)).stem, {})[int(frame)] = coords[np.sort(rows)]
    return tracings


def ed_es_from_tracings(frames: dict[int, np.ndarray]) -> tuple[int, np.ndarray, int, np.ndarray] | None:
    """(ed_index, ed_tracing, es_index, es_tracing): the largest traced area is ED, the smallest ES."""
    usable = {frame: rows for frame, rows in frames.items() if len(rows) >= 3}
    if len(usable) < 2:
        return None
    by_area = sorted(usable, key=lambda frame: tracing_area(usable[frame]))
    es, ed = by_area[0], by_area[-1]
    return ed, usable[ed], es, usable[es]


class EchoNetDynamicDataModule(VideoDataModule):
    """EchoNet-Dynamic: apical-4-chamber videos with EF and ED/ES LV tracings.

    Batches follow DESIGN.md: ``video`` ``(B, C, T, H, W)`` normalised, ``ef`` in percent, ``ed_index``/``es_index``
    and ``ed_mask``/``es_mask`` (label 1 = LV cavity) drawn from VolumeTracings.csv.
    """

    dataset_name = "EchoNet-Dynamic"

    def __init__(
        self,
        data_dir: str,
        val_folds: list[int] | None = None,
        test_folds: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        """The shared arguments (``clip_length``, ``batch_size``, ``paired``...) are those of
        :class:`datamodules.base.VideoDataModule`, passed through ``kwargs`` (LightningCLI reads their types and
        help from there); only the defaults this dataset changes are restated here.

        val_folds / test_folds: for EchoNet-Pediatric, whose Split column is an integer fold 0-9
        (default: fold 8 validation, fold 9 test, the rest training).
        """
        super().__init__(data_dir, **kwargs)
        self.file_list = self.data_dir / "FileList.csv"
        if not self.file_list.is_file():
            raise ConfigError(f"data.data_dir '{data_dir}' has no FileList.csv: is it an EchoNet-Dynamic folder?")
        self.val_folds = val_folds if val_folds is not None else [8]
        self.test_folds = test_folds if test_folds is not None else [9]

    def _split_name(self, value: object) -> str:
        text = str(value).strip().upper()
        if text in SPLITS:
            return text
        try:
            fold = int(float(text))
        except ValueError as error:
            raise DataError(
                f"{self.file_list}: unknown Split value '{value}' (expected TRAIN/VAL/TEST or a fold)"
            ) from error
        return "VAL" if fold in self.val_folds else "TEST" if fold in self.test_folds else "TRAIN"

    def _video_path(self, name: str) -> Path:
        """``Videos/<name>``, refused when the name's own text leaves ``Videos/`` (``..``, an absolute path or a
        drive); where a symlink inside ``Videos/`` points is the user's choice and is followed."""
        videos = self.data_dir / "Videos"
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or PureWindowsPath(name).drive:
            raise DataError(f"{self.file_list}: FileName '{name}' resolves outside {videos}; refusing to read it")
        return videos / relative

    def scan_records(self) -> list[VideoRecord]:
        table = pd.read_csv(self.file_list)
        if "FileName" not in table.columns or "Split" not in table.columns:
            raise DataError(f"{self.file_list}: needs FileName and Split columns, found {list(table.columns)}")
        tracings_path = self.data_dir / "VolumeTracings.csv"
        tracings = read_volume_tracings(tracings_path) if tracings_path.is_file() else {}
        records: list[VideoRecord] = []
        no_video: list[str] = []
        outside: list[str] = []
        bad_ef: list[str] = []
        has_ef = "EF" in table.columns
        for row in table.itertuples(index=False):
            raw_name = str(row.FileName).strip()
            stem = raw_name[:-4] if raw_name.lower().endswith(".avi") else raw_name
            try:
                path = self._video_path(stem + ".avi")
            except DataError as error:
                if self.on_bad_video == "raise":
                    raise
                outside.append(str(error))
                continue
            if not path.is_file():
                no_video.append(stem)
                continue
            ef = finite_number(getattr(row, "EF", math.nan))
            if has_ef and ef is None:
                bad_ef.append(f"{stem} (EF {str(row.EF).strip()!r})" if str(row.EF).strip() else f"{stem} (EF empty)")
                continue
            fps = finite_number(getattr(row, "FPS", math.nan))
            frames = finite_number(getattr(row, "NumberOfFrames", math.nan))
            record = VideoRecord(
                path=path,
                filename=stem,
                split=self._split_name(row.Split),
                ef=math.nan if ef is None else ef,
                fps=math.nan if fps is None else fps,
                expected_frames=int(frames) if frames is not None and frames > 0 else 0,
            )
            traced = ed_es_from_tracings(tracings.get(stem, {}))
            if traced is not None:
                record.ed_index, record.ed_tracing, record.es_index, record.es_tracing = traced
            records.append(record)
        if no_video:
            rank_zero_warn(
                f"{self.dataset_name}: {len(no_video)} FileList rows have no video in {self.data_dir / 'Videos'} "
                f"(e.g. {', '.join(no_video[:3])}); they are left out"
            )
        if outside:
            rank_zero_warn(f"{self.dataset_name}: rejected {len(outside)} rows: {outside[0]}")
        if bad_ef:
            if not records:
                raise DataError(
                    f"{self.file_list}: no row has a numeric EF ({len(bad_ef)} rows, e.g. {', '.join(bad_ef[:3])})"
                )
            if self.on_bad_video == "raise":
                raise DataError(f"{self.file_list}: row {bad_ef[0]} has no numeric EF")
            more = f" and {len(bad_ef) - 5} more" if len(bad_ef) > 5 else ""
            rank_zero_warn(
                f"{self.dataset_name}: {len(bad_ef)} FileList rows have a missing or non-numeric EF and are left out: "
                f"{', '.join(bad_ef[:5])}{more}"
            )
        return records
