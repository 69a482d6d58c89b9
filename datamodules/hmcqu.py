"""HMC-QU (apical 4-chamber videos with per-segment wall-motion labels and LV-wall masks), as vitalab/vital reads it.

    data_dir/HMC_QU.xlsx                         ECHO, SEG1..SEG7, Reference Frame, End of Cycle, LV Wall Ground-truth
                                                 Segmentation Masks (a mark where masks exist); or HMC_QU.csv
    data_dir/HMC-QU Echos/<ECHO>.avi             (also HMC-QU Echos/HMC-QU Echos/<ECHO>.avi, as the archive unpacks)
    data_dir/LV Ground-truth Segmentation Masks/Mask_<ECHO>.mat      key "predicted": T x H x W, 1 = LV wall

The spreadsheet is read with pandas when openpyxl is installed, else with a small built-in reader (an .xlsx is zipped
XML), so openpyxl is not required; a CSV export with the same columns also works (``table: HMC_QU.csv``).

Each item is a clip from the annotated cycle only: frames ``Reference Frame`` to ``End of Cycle`` (1-based, inclusive,
MATLAB style). Labels: ``wall_motion`` ``(7,)`` per segment (1 abnormal, 0 normal, -1 not given) and ``label`` = 1 when
any segment is abnormal. The cycle's first frame is its end-diastole: ``ed_index`` 0 and ``ed_mask`` the LV wall there,
mapped to the CAMUS myocardium label (2) (``has_ed_mask`` says whether a mask file exists). Splits are seeded
and by patient (the ECHO name up to its first space or underscore), stratified by the video label.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import VideoClipDataset, VideoDataModule, VideoRecord
from datamodules.cache import ResizedVideoCache, atomic_save_npy, file_key
from datamodules.errors import ConfigError, DataError
from datamodules.splits import check_split_fractions, split_patients

NUM_SEGMENTS = 7
MYOCARDIUM = 2  # CAMUS label of the myocardium: HMC-QU's LV-wall masks (value 1) are mapped to it
VIDEO_DIRS = ("HMC-QU Echos", "HMC-QU Echos/HMC-QU Echos")
MASK_DIR = "LV Ground-truth Segmentation Masks"
TABLE_NAMES = ("HMC_QU.xlsx", "HMC_QU.csv")

_XLSX = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"


# ---------------------------------------------------------------------------------------------------- the table


def _column_index(reference: str) -> int:
    """``C7`` -> 2: the zero-based column of a cell reference."""
    letters = re.match(r"[A-Z]+", reference.upper())
    index = 0
    for letter in letters.group(0) if letters else "A":
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def read_xlsx_first_sheet(path: Path) -> pd.DataFrame:
    """The first worksheet of an .xlsx as a DataFrame (first row = header), without openpyxl.

    Handles shared strings, inline strings, numbers and booleans, which is all HMC_QU.xlsx holds.
    """
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in item.iter(f"{_XLSX}t")) for item in root.iter(f"{_XLSX}si")]
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        first = next(workbook.iter(f"{_XLSX}sheet"))
        relation = first.get(f"{_RELS}id")
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        target = next(r.get("Target") for r in rels.iter(f"{_PACKAGE_RELS}Relationship") if r.get("Id") == relation)
        sheet_path = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        sheet = ElementTree.fromstring(archive.read(sheet_path))
    rows: list[dict[int, Any]] = []
    for row in sheet.iter(f"{_XLSX}row"):
        values: dict[int, Any] = {}
        for position, cell in enumerate(row.iter(f"{_XLSX}c")):
            column = _column_index(cell.get("r")) if cell.get("r") else position
            kind = cell.get("t", "n")
            value_node = cell.find(f"{_XLSX}v")
            text = value_node.text if value_node is not None else None
            if kind == "s" and text is not None:
                values[column] = shared[int(text)]
            elif kind == "inlineStr":
                values[column] = "".join(t.text or "" for t in cell.iter(f"{_XLSX}t"))
            elif kind in ("str", "e"):
                values[column] = text
            elif kind == "b":
                values[column] = text == "1"
            elif text is not None:
                number = float(text)
                values[column] = int(number) if number.is_integer() else number
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: the first worksheet is empty")
    width = max((max(r) + 1 for r in rows if r), default=0)
    header = [str(rows[0].get(i, f"column{i}")).strip() for i in range(width)]
    return pd.DataFrame([[r.get(i) for i in range(width)] for r in rows[1:]], columns=header)


def read_table(path: Path) -> pd.DataFrame:
    """HMC_QU.xlsx (pandas + openpyxl when installed, else the built-in reader) or a CSV export."""
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype={"ECHO": str})
    try:
        import openpyxl  # noqa: F401

        return pd.read_excel(path)
    except ImportError:
        pass
    try:
        return read_xlsx_first_sheet(path)
    except (zipfile.BadZipFile, KeyError, StopIteration, ElementTree.ParseError) as error:
        raise DataError(f"{path}: not a readable .xlsx ({type(error).__name__}: {error}); export it as CSV") from error


def _normalise(name: object) -> str:
    return " ".join(str(name).replace("\xa0", " ").split()).upper()


def _segment_value(value: object) -> int | None:
    """1 abnormal, 0 normal, -1 not given (an empty cell); None for a value that is not a number (``abc``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return -1
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number > 0) if math.isfinite(number) else None


def patient_of(echo: str) -> str:
    """The patient of an ECHO name: up to its first space or underscore (``ES0001 _4CH_1`` -> ``ES0001``)."""
    return re.split(r"[_\s]", echo.strip())[0]


# ---------------------------------------------------------------------------------------------------- masks


def load_mat_masks(path: str | Path) -> np.ndarray:
    """``predicted`` of a Mask_<ECHO>.mat as uint8 ``(T, H, W)``; raises DataError naming the file."""
    import scipy.io

    try:
        content = scipy.io.loadmat(str(path))
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: MATLAB v7.3 .mat files are not supported, re-save with -v7") from error
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({' '.join(str(error).split())[:160]})") from error
    if "predicted" not in content:
        keys = [k for k in content if not k.startswith("__")]
        raise DataError(f"{path}: has no 'predicted' array (found {keys})")
    masks = np.asarray(content["predicted"])
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise DataError(f"{path}: 'predicted' must be T x H x W, found shape {masks.shape}")
    return (masks > 0).astype(np.uint8)


class HMCQUClipDataset(VideoClipDataset):
    """Clips of the annotated cycle (frame indices are offset by the cycle start) with wall-motion labels."""

    def __init__(self, *args: Any, mask_cache: dict[str, Path] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_cache = mask_cache or {}  # filename -> the cycle's LV-wall masks (T, H, W) cached as .npy

    def _frames(self, record: VideoRecord, indices: np.ndarray) -> np.ndarray:
        return super()._frames(record, np.asarray(indices) + record.extra["cycle_start"])

    def _cycle_masks(self, record: VideoRecord) -> np.ndarray | None:
        path = self.mask_cache.get(record.filename)
        return None if path is None else np.load(path, mmap_mode="r")

    def _masks(self, record: VideoRecord) -> np.ndarray:
        cycle = self._cycle_masks(record)
        if cycle is None:
            return np.zeros((3, record.height, record.width), np.uint8)
        masks = np.zeros((3, *cycle.shape[1:]), np.uint8)
        masks[0] = np.asarray(cycle[0]) * MYOCARDIUM
        return masks

    def extra_fields(self, record: VideoRecord) -> dict[str, Any]:
        return {
            "wall_motion": torch.as_tensor(record.extra["wall_motion"], dtype=torch.long),
            "has_ed_mask": torch.tensor(record.filename in self.mask_cache),
        }


# ---------------------------------------------------------------------------------------------------- DataModule


class HMCQUDataModule(VideoDataModule):
    """HMC-QU: one annotated cycle per video, ``wall_motion`` per segment and a video-level ``label``."""

    dataset_name = "HMC-QU"
    dataset_class = HMCQUClipDataset

    def __init__(
        self,
        data_dir: str,
        table: str | None = None,
        split_fractions: tuple[float, float, float] = (0.65, 0.1, 0.25),
        split_seed: int = 0,
        require_masks: bool = False,
        clip_length: int = 16,
        period: int = 1,
        num_eval_clips: int | None = 4,
        **kwargs: Any,
    ) -> None:
        """The shared arguments (``clip_length``, ``batch_size``, ``paired``...) are those of
        :class:`datamodules.base.VideoDataModule`, passed through ``kwargs`` (LightningCLI reads their types and
        help from there); only the defaults this dataset changes are restated here.

        table: the spreadsheet, relative to data_dir (default: HMC_QU.xlsx, else HMC_QU.csv).
        split_fractions / split_seed: the seeded patient split (train, val, test), stratified by the video label.
        require_masks: keep only videos with an LV-wall mask file (segmentation use).
        """
        super().__init__(data_dir, clip_length=clip_length, period=period, num_eval_clips=num_eval_clips, **kwargs)
        candidates = [self.data_dir / table] if table else [self.data_dir / name for name in TABLE_NAMES]
        found = [path for path in candidates if path.is_file()]
        if not found:
            raise ConfigError(
                f"data.data_dir '{data_dir}' has no {' or '.join(p.name for p in candidates)}: is it an HMC-QU folder?"
            )
        self.table_path = found[0]
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.require_masks = require_masks
        self.mask_cache: dict[str, Path] = {}

    # ------------------------------------------------------------------ scanning

    def _columns(self, table: pd.DataFrame) -> dict[str, str]:
        """Normalised name -> actual column, checking the required ones are there."""
        columns = {_normalise(c): c for c in table.columns}
        missing = [name for name in ("ECHO", "REFERENCE FRAME", "END OF CYCLE") if name not in columns]
        if missing or not any(re.fullmatch(r"SEG\s*0*[1-7]", name) for name in columns):
            raise DataError(
                f"{self.table_path}: needs ECHO, SEG1..SEG7, Reference Frame and End of Cycle columns, "
                f"found {list(table.columns)}"
            )
        return columns

    def _video_path(self, echo: str) -> Path | None:
        if "/" in echo or "\\" in echo or echo.startswith("."):  # the name must not climb out of the video folder
            return None
        for folder in VIDEO_DIRS:
            path = self.data_dir / folder / f"{echo}.avi"
            if path.is_file():
                return path
        return None

    def scan_records(self) -> list[VideoRecord]:
        table = read_table(self.table_path)
        columns = self._columns(table)
        segment_columns = {
            int(re.fullmatch(r"SEG\s*0*(\d)", name).group(1)): actual  # type: ignore[union-attr]
            for name, actual in columns.items()
            if re.fullmatch(r"SEG\s*0*[1-7]", name)
        }
        rows, problems, no_video, unlabelled = [], [], [], []
        for number, row in enumerate(table.to_dict("records"), start=2):
            echo = str(row[columns["ECHO"]] or "").strip()
            if not echo or echo.lower() == "nan":
                continue
            try:
                start, end = int(float(row[columns["REFERENCE FRAME"]])), int(float(row[columns["END OF CYCLE"]]))
            except (TypeError, ValueError):
                problems.append(
                    f"{self.table_path} row {number} ({echo}): Reference Frame / End of Cycle are not numbers"
                )
                continue
            if start < 1 or end <= start:
                problems.append(
                    f"{self.table_path} row {number} ({echo}): cycle {start}..{end} is not 1-based increasing"
                )
                continue
            path = self._video_path(echo)
            if path is None:
                no_video.append(echo)
                continue
            wall_motion = [
                _segment_value(row[segment_columns[s]]) if s in segment_columns else -1
                for s in range(1, NUM_SEGMENTS + 1)
            ]
            if None in wall_motion or max(wall_motion) < 0:  # a label that is not a number, or no label at all
                bad = [
                    f"SEG{s}={row[segment_columns[s]]!r}"
                    for s, value in enumerate(wall_motion, start=1)
                    if value is None and s in segment_columns
                ]
                unlabelled.append(f"{echo} ({', '.join(bad) if bad else 'no segment label'})")
                continue
            mask_path = self.data_dir / MASK_DIR / f"Mask_{echo}.mat"
            if self.require_masks and not mask_path.is_file():
                continue
            rows.append((echo, path, start, end, wall_motion, mask_path if mask_path.is_file() else None))
        if problems:
            if self.on_bad_video == "raise":
                raise DataError(problems[0])
            rank_zero_warn(f"{self.dataset_name}: skipped {len(problems)} rows: {problems[0]}")
        if unlabelled:
            if not rows:
                raise DataError(
                    f"{self.table_path}: no row has numeric SEG1..SEG7 labels ({len(unlabelled)} rows, e.g. "
                    f"{'; '.join(unlabelled[:3])})"
                )
            if self.on_bad_video == "raise":
                raise DataError(f"{self.table_path}: row {unlabelled[0]} has missing or non-numeric labels")
            rank_zero_warn(
                f"{self.dataset_name}: {len(unlabelled)} table rows have missing or non-numeric wall-motion labels "
                f"and are left out: {'; '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}"
            )
        if no_video:
            rank_zero_warn(
                f"{self.dataset_name}: {len(no_video)} table rows have no video in {self.data_dir / VIDEO_DIRS[0]} "
                f"(e.g. {', '.join(no_video[:3])}); they are left out"
            )
        labels = {}
        for echo, *_, wall_motion, _ in rows:
            labels[patient_of(echo)] = max(labels.get(patient_of(echo), 0), int(max(wall_motion) == 1))
        splits = split_patients(list(labels), self.split_fractions, self.split_seed, strata=labels)
        return [
            VideoRecord(
                path=path,
                filename=echo,
                split=splits[patient_of(echo)],
                label=int(max(wall_motion) == 1),
                ed_index=0,
                extra={
                    "patient": patient_of(echo),
                    "cycle_start": start - 1,
                    "cycle_end": end,
                    "wall_motion": wall_motion,
                    "mask_path": str(mask_path) if mask_path else None,
                },
            )
            for echo, path, start, end, wall_motion, mask_path in rows
        ]

    # ------------------------------------------------------------------ validation

    def _cache(self) -> ResizedVideoCache:
        """Videos are decoded once and stored at ``frame_size``."""
        return self._resized_cache()

    def required_frames(self, record: VideoRecord) -> int:
        return record.extra["cycle_start"] + 2  # the cycle must start inside the video (its end is clamped)

    def _mask_cache_path(self, record: VideoRecord) -> Path:
        return self.cache_dir / f"{file_key(record.extra['mask_path'])}-hmcqu-mask.npy"

    def _validate(self, records: list[VideoRecord]) -> list[VideoRecord]:
        """The base's validation; then each record is cut to its cycle and its .mat masks cached as .npy once."""
        usable = super()._validate(records)
        kept, bad_masks = [], []
        for record in usable:
            start, end = record.extra["cycle_start"], min(record.extra["cycle_end"], record.num_frames)
            record = replace(record, num_frames=end - start)
            if record.extra["mask_path"] is not None:
                target = self._mask_cache_path(record)
                try:
                    if not target.is_file():  # written atomically: every DDP rank may get here at once
                        target.parent.mkdir(parents=True, exist_ok=True)
                        atomic_save_npy(target, load_mat_masks(record.extra["mask_path"]))
                    self.mask_cache[record.filename] = target
                except DataError as error:
                    if self.on_bad_video == "raise":
                        raise
                    bad_masks.append(str(error))
                    if self.require_masks:
                        continue
            kept.append(record)
        if bad_masks:
            rank_zero_warn(f"{self.dataset_name}: {len(bad_masks)} mask files are unusable: {bad_masks[0]}")
        return kept

    # ------------------------------------------------------------------ datasets and loaders

    def dataset_kwargs(self, train: bool) -> dict[str, Any]:
        return super().dataset_kwargs(train) | {"mask_cache": self.mask_cache}
