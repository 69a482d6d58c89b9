"""Write a phantom dataset in the HMC-QU layout (as vitalab/vital reads the release).

    out_dir/HMC_QU.xlsx (or HMC_QU.csv)     ECHO, SEG1..SEG7, Reference Frame, End of Cycle,
                                            LV Wall Ground-truth Segmentation Masks ("ü" where a mask file exists)
    out_dir/HMC-QU Echos/<ECHO>.avi         apical 4-chamber MJPEG AVI, 25 fps by default
    out_dir/LV Ground-truth Segmentation Masks/Mask_<ECHO>.mat    "predicted": T x H x W uint8, 1 = LV wall, one
                                            frame per cycle frame, at ``mask_size`` (the release's masks are smaller
                                            than its videos too)
    out_dir/PhantomTruth.csv                per video: patient, label, the hypokinesis severity, extent and depth,
                                            EF, 0-based ED frames (not part of HMC-QU)

ECHO names follow the release (``ES0001 _4CH_1``: the patient, a space, the view, the recording); some patients have
two recordings of the same heart (and label), so a reader must split by patient. Each video holds a little more than
one cycle; Reference Frame (1-based) is its first end-diastole and End of Cycle the next one. Abnormal videos use the
simulator's ``wall_motion`` variant, a graded hypokinesis of the apical lateral wall (its extent along the wall and
its depth, the share of motion lost, grow with the severity; mild cases are the common ones): SEG5 (apical lateral in
the 7-segment apical-4-chamber model) is 1, every other segment 0. About one video in ten has no mask file. The spreadsheet is
written by a small built-in .xlsx writer (shared strings, as Excel writes them), so openpyxl is not needed.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import cv2
import numpy as np

from datamodules.phantom.echonet_writer import write_avi
from datamodules.phantom.simulator import LV_CAVITY, MYOCARDIUM, hypokinesis, sample_params, simulate_video

ABNORMAL_SEGMENT = 5  # apical lateral
COLUMNS = [
    "ECHO",
    *(f"SEG{i}" for i in range(1, 8)),
    "Reference Frame",
    "End of Cycle",
    "LV Wall Ground-truth Segmentation Masks",
]
#: PhantomTruth.csv: HypokinesisExtent / HypokinesisDepth as `simulator.hypokinesis` (0 for normal hearts)
TRUTH_COLUMNS = ("ECHO", "Patient", "Label", "Severity", "HypokinesisExtent", "HypokinesisDepth", "EF", "EDFrame",
                 "NextEDFrame", "NumberOfFrames")  # fmt: skip
MASK_MARK = "ü"  # the release marks available masks with this (a Wingdings check mark)


def write_xlsx(path: str | Path, header: list[str], rows: list[list[object]]) -> Path:
    """A minimal single-sheet .xlsx: strings as shared strings, numbers as numbers, None as an empty cell."""
    strings: dict[str, int] = {}

    def cell(column: int, row: int, value: object) -> str:
        reference = f"{_column_letters(column)}{row}"
        if value is None or value == "":
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f'<c r="{reference}"><v>{value}</v></c>'
        index = strings.setdefault(str(value), len(strings))
        return f'<c r="{reference}" t="s"><v>{index}</v></c>'

    sheet_rows = []
    for number, values in enumerate([header, *rows], start=1):
        cells = "".join(cell(column, number, value) for column, value in enumerate(values))
        sheet_rows.append(f'<row r="{number}">{cells}</row>')
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    relations = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    package = "http://schemas.openxmlformats.org/package/2006/relationships"
    shared = "".join(f"<si><t>{escape(text)}</t></si>" for text in strings)
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            "</Types>"
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{package}"><Relationship Id="rId1" '
            f'Type="{relations}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{main}" xmlns:r="{relations}"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<Relationships xmlns="{package}">'
            f'<Relationship Id="rId1" Type="{relations}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{relations}/sharedStrings" Target="sharedStrings.xml"/>'
            "</Relationships>"
        ),
        "xl/worksheets/sheet1.xml": (
            f'<worksheet xmlns="{main}"><sheetData>{"".join(sheet_rows)}</sheetData></worksheet>'
        ),
        "xl/sharedStrings.xml": (
            f'<sst xmlns="{main}" count="{len(strings)}" uniqueCount="{len(strings)}">{shared}</sst>'
        ),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + text)
    return Path(path)


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def _next_end_diastole(masks: np.ndarray, ed_index: int, cycle_frames: float) -> int:
    """The frame of largest LV area near one cycle after ``ed_index`` (within 15% of a cycle)."""
    area = (masks == LV_CAVITY).sum(axis=(1, 2))
    expected = ed_index + cycle_frames
    window = [t for t in range(len(masks)) if abs(t - expected) <= 0.15 * cycle_frames and t > ed_index + 1]
    return int(window[int(np.argmax(area[window]))]) if window else min(int(round(expected)), len(masks) - 1)


def write_hmcqu_dataset(
    out_dir: str | Path,
    num_videos: int,
    seed: int = 0,
    size: int = 112,
    mask_size: int = 96,
    abnormal_fraction: float = 0.5,
    fps: float = 25.0,
    heart_rate_range: tuple[float, float] = (60.0, 100.0),
    second_recording_fraction: float = 0.25,
    table_format: Literal["xlsx", "csv"] = "xlsx",
    severity_range: tuple[float, float] = (0.1, 1.0),
) -> Path:
    """Write ``num_videos`` phantom echos in the HMC-QU layout under ``out_dir``; returns ``out_dir``.

    second_recording_fraction: share of patients with a second recording (``..._4CH_2``).
    table_format: ``xlsx`` (as released) or ``csv`` (the CSV export the reader also accepts).
    severity_range: hypokinesis severity of the abnormal hearts (its extent and depth grow with it, see
    `simulator.hypokinesis`), drawn so that mild cases are the most common.
    """
    if num_videos < 2:
        raise ValueError(f"num_videos must be >= 2, got {num_videos}")
    out_dir = Path(out_dir)
    videos_dir, masks_dir = out_dir / "HMC-QU Echos", out_dir / "LV Ground-truth Segmentation Masks"
    videos_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng([seed, 0x4C0])
    patients: list[int] = []  # the patient of each video: a second recording follows its first
    for index in range(num_videos):
        second = index > 0 and patients.count(patients[-1]) == 1 and plan_rng.random() < second_recording_fraction
        patients.append(patients[-1] if second else (patients[-1] + 1 if patients else 1))
    num_patients = patients[-1]
    num_abnormal = (
        min(max(int(round(abnormal_fraction * num_patients)), 1), num_patients - 1) if num_patients > 1 else 0
    )
    patient_labels = plan_rng.permutation(np.repeat([1, 0], [num_abnormal, num_patients - num_abnormal])).tolist()
    table_rows, truth_rows = [], []
    for index, patient in enumerate(patients):
        echo = f"ES{patient:04d} _4CH_{patients[:index].count(patient) + 1}"
        label = patient_labels[patient - 1]
        rng = np.random.default_rng([seed, patient])  # one heart per patient, seen in each of its recordings
        params = sample_params(
            rng,
            size=size,
            view="4CH",
            disease="wall_motion" if label else "normal",
            fps_range=(fps, fps),
            heart_rate_range=heart_rate_range,
            severity_range=severity_range,
        )
        rng = np.random.default_rng([seed, patient, index])
        cycle_frames = params.cycle_s * params.fps
        lead_in = float(rng.uniform(0.1, 0.4))  # the first end-diastole, in cycles after the start
        num_frames = int(math.ceil((lead_in + 1.15) * cycle_frames)) + int(rng.integers(2, 8))
        params = replace(params, phase=1.0 - lead_in, num_frames=num_frames)
        video = simulate_video(params, int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0]))
        first, following = video.ed_index, _next_end_diastole(video.masks, video.ed_index, cycle_frames)
        write_avi(videos_dir / f"{echo}.avi", video.frames, video.fps)
        has_mask = plan_rng.random() >= 0.1
        if has_mask:
            import scipy.io

            wall = (video.masks[first : following + 1] == MYOCARDIUM).astype(np.uint8)
            wall = np.stack([cv2.resize(m, (mask_size, mask_size), interpolation=cv2.INTER_NEAREST) for m in wall])
            scipy.io.savemat(masks_dir / f"Mask_{echo}.mat", {"predicted": wall}, do_compression=True)
        segments = [int(label and s == ABNORMAL_SEGMENT) for s in range(1, 8)]
        table_rows.append([echo, *segments, first + 1, following + 1, MASK_MARK if has_mask else None])
        extent, depth = hypokinesis(params.severity) if label else (0.0, 0.0)
        graded = (round(params.severity, 4), round(extent, 4), round(depth, 4)) if label else (0.0, 0.0, 0.0)
        truth_rows.append(
            (echo, echo.split(" ")[0], label, *graded, round(video.ef, 4), first, following, len(video.frames))
        )
    if table_format == "xlsx":
        write_xlsx(out_dir / "HMC_QU.xlsx", COLUMNS, table_rows)
    else:
        with open(out_dir / "HMC_QU.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([COLUMNS, *[["" if v is None else v for v in row] for row in table_rows]])
    with open(out_dir / "PhantomTruth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(truth_rows)
    return out_dir
