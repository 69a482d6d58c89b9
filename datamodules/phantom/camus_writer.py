"""Write a phantom dataset in the CAMUS release layouts (2023 NIfTI, or 2019 MHD/RAW).

    nifti (2023):  out_dir/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES,half_sequence}[_gt].nii.gz
                   out_dir/patientXXXX/Info_{2CH,4CH}.cfg   ED, ES, NbFrame, Sex, Age, ImageQuality, EF, FrameRate
                   out_dir/database_split/subgroup_{training,validation,testing}.txt
    mhd (2019):    out_dir/training/patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES,sequence}[_gt].mhd + .raw
                   out_dir/training/patientXXXX/Info_{2CH,4CH}.cfg   ED, ES, NbFrame, Sex, Age, ImageQuality,
                   LVedv, LVesv, LVef (no split files, no sequence ground truth)
    out_dir/PhantomTruth.csv       per view: the simulator's own EF, ED/ES frames and split (not part of CAMUS)

Each patient is one simulated heart seen in both apical views (the same parameter draws, so the same EF, heart rate
and anatomy); the half-sequence runs from end-diastole to end-systole (ED = 1, ES = NbFrame). Frames are placed on a
canvas taller than wide (extra depth below the sector), as CAMUS images are, so a reader that swaps the axes fails.
Arrays are stored (W, H[, T]) like the release. The cfg's EF is the patient's (the mean of both views' EF by the
method of discs), its keys are written in a per-file random order. Everything is a function of the seed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.nifti import write_metaimage, write_nifti
from datamodules.phantom.echonet_writer import assign_splits
from datamodules.phantom.simulator import PhantomVideo, sample_params, simulate_video

VIEWS = ("2CH", "4CH")
SPLIT_NAMES = {"TRAIN": "training", "VAL": "validation", "TEST": "testing"}


def half_sequence_video(
    view: str,
    seed: int,
    index: int,
    size: int,
    fps_range: tuple[float, float],
    ef_range: tuple[float, float],
    ef_distribution: str = "camus",
    pose_variation: float = 1.0,
    heart_rate_range: tuple[float, float] = (50.0, 110.0),
) -> tuple[PhantomVideo, slice]:
    """One view of patient ``index``: a video starting at end-diastole and the ED..ES slice of its frames
    (``pose_variation`` and ``heart_rate_range`` as in `simulator.sample_params`)."""
    rng = np.random.default_rng([seed, index])  # the same draws for both views: the same heart
    params = sample_params(
        rng,
        num_frames=16,
        size=size,
        view=view,
        fps_range=fps_range,
        ef_range=ef_range,
        ef_distribution=ef_distribution,
        pose_variation=pose_variation,
        heart_rate_range=heart_rate_range,
    )
    systole_frames = params.systole_fraction * params.cycle_s * params.fps
    params = replace(params, phase=0.0, num_frames=int(math.ceil(systole_frames)) + 5)
    video = simulate_video(params, int(np.random.SeedSequence([seed, index, VIEWS.index(view)]).generate_state(1)[0]))
    return video, slice(video.ed_index, video.es_index + 1)


def _canvas(frames: np.ndarray, extra_rows: int) -> np.ndarray:
    """Frames placed at the top of a canvas ``extra_rows`` taller (zeros below: depth beyond the sector)."""
    out = np.zeros((frames.shape[0], frames.shape[1] + extra_rows, frames.shape[2]), frames.dtype)
    out[:, : frames.shape[1]] = frames
    return out


def _quality(noise: float) -> str:
    return "Poor" if noise > 0.033 else "Medium" if noise > 0.021 else "Good"


def _write_cfg(path: Path, fields: dict[str, object], rng: np.random.Generator) -> None:
    keys = list(fields)
    order = rng.permutation(len(keys))
    path.write_text("".join(f"{keys[i]}: {fields[keys[i]]}\n" for i in order))


def write_camus_dataset(
    out_dir: str | Path,
    num_patients: int,
    seed: int = 0,
    size: int = 128,
    layout: Literal["nifti", "mhd"] = "nifti",
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    fps_range: tuple[float, float] = (30.0, 60.0),
    ef_range: tuple[float, float] = (20.0, 80.0),
    sequence_gt: bool | None = None,
    ef_distribution: str = "camus",
    pose_variation: float = 1.0,
    heart_rate_range: tuple[float, float] = (50.0, 110.0),
) -> Path:
    """Write ``num_patients`` phantom patients (both views each) in a CAMUS layout under ``out_dir``; returns it.

    layout: ``nifti`` (the 2023 release, with database_split files) or ``mhd`` (the 2019 release).
    sequence_gt: write ``half_sequence_gt`` label maps (default: yes for nifti, no for mhd, as the releases).
    ef_distribution: ``camus`` (a broad normal around 51%), ``echonet`` or ``uniform`` over ``ef_range``.
    pose_variation: 1 (default) draws the probe pose (apex position and depth, tilt, sector width) and the LV framing
    as realistically as the EchoNet writer; < 1 narrows them toward their typical values, 0 fixes them (a gentler
    phantom for short CPU fits; the motion and intensity nuisance stays). heart_rate_range: as `sample_params`.
    Every other nuisance (gain, TGC, speckle, breathing, noise) is drawn as in the EchoNet writer.
    """
    if not 0.0 <= pose_variation <= 1.0:
        raise ValueError(f"pose_variation must be in [0, 1], got {pose_variation}")
    if num_patients < 1:
        raise ValueError(f"num_patients must be >= 1, got {num_patients}")
    if layout not in ("nifti", "mhd"):
        raise ValueError(f"layout must be 'nifti' or 'mhd', got {layout!r}")
    out_dir = Path(out_dir)
    root = out_dir if layout == "nifti" else out_dir / "training"
    sequence_gt = layout == "nifti" if sequence_gt is None else sequence_gt
    splits = assign_splits(num_patients, split_fractions, np.random.default_rng([seed, 0xCA305]))
    truth_rows = []
    for index in range(num_patients):
        patient = f"patient{index + 1:04d}"
        folder = root / patient
        folder.mkdir(parents=True, exist_ok=True)
        meta_rng = np.random.default_rng([seed, index, 99])
        sex, age = ("F", "M")[int(meta_rng.integers(2))], int(meta_rng.integers(20, 90))
        views = {
            view: half_sequence_video(
                view, seed, index, size, fps_range, ef_range, ef_distribution, pose_variation, heart_rate_range
            )
            for view in VIEWS
        }
        patient_ef = float(np.mean([video.ef for video, _ in views.values()]))
        patient_edv = float(np.mean([video.edv for video, _ in views.values()]))
        patient_esv = float(np.mean([video.esv for video, _ in views.values()]))
        for view, (video, cycle) in views.items():
            frames = _canvas(video.frames[cycle], size // 4)
            masks = _canvas(video.masks[cycle], size // 4)
            spacing = (video.pixel_spacing_mm, video.pixel_spacing_mm)
            stem = f"{patient}_{view}"
            arrays = {"ED": frames[0], "ED_gt": masks[0], "ES": frames[-1], "ES_gt": masks[-1]}
            sequence_name = "half_sequence" if layout == "nifti" else "sequence"
            arrays[sequence_name] = frames
            if sequence_gt:
                arrays[f"{sequence_name}_gt"] = masks
            for suffix, array in arrays.items():
                if layout == "nifti":
                    write_nifti(folder / f"{stem}_{suffix}.nii.gz", array, spacing)
                else:
                    write_metaimage(
                        folder / f"{stem}_{suffix}.mhd", array, spacing + ((1.0,) if array.ndim == 3 else ())
                    )
            fields: dict[str, object] = {
                "ED": 1,
                "ES": len(frames),
                "NbFrame": len(frames),
                "Sex": sex,
                "Age": age,
                "ImageQuality": _quality(video.params.noise),
            }
            if layout == "nifti":
                fields.update(EF=round(patient_ef, 2), FrameRate=float(video.fps))
            else:
                fields.update(LVedv=round(patient_edv, 2), LVesv=round(patient_esv, 2), LVef=round(patient_ef, 2))
            _write_cfg(folder / f"Info_{view}.cfg", fields, meta_rng)
            truth_rows.append((patient, view, splits[index], round(video.ef, 4), 0, len(frames) - 1, len(frames)))
    if layout == "nifti":
        split_dir = out_dir / "database_split"
        split_dir.mkdir(parents=True, exist_ok=True)
        for split, name in SPLIT_NAMES.items():
            chosen = [f"patient{i + 1:04d}" for i in range(num_patients) if splits[i] == split]
            (split_dir / f"subgroup_{name}.txt").write_text("".join(f"{p}\n" for p in chosen))
    with open(out_dir / "PhantomTruth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Patient", "View", "Split", "ViewEF", "EDFrame", "ESFrame", "NumberOfFrames"])
        writer.writerows(truth_rows)
    return out_dir
