"""Cheap baselines a learned model must beat: the mean predictor and anatomy-free "shortcut" fits.

A model that regresses EF (or detects a disease) on the phantom has learned the heart only if it beats what global
image statistics, which need no anatomy at all, already tell. These functions compute those baselines on a dataset as
written on disk (EchoNet-Dynamic or CardiacNet layout), quickly: videos are decoded at a reduced resolution and only
their first frames are read.

* `ef_baselines`: the mean predictor (the TRAIN mean) and a ridge regression of EF on global statistics (intensity,
  contrast and dark fraction of the first frame; temporal std, frame-difference energy per frame and per second,
  oscillation of the frame mean and of the dark fraction; FPS and length), fitted on TRAIN(+VAL) and evaluated on
  TEST, plus the same two predictors leave-one-out over every video.
* `disease_baselines`: a logistic regression on a 3x3 grid (over the content box) of mean intensity, dark fraction
  and temporal std, on the CardiacNet DataModule's own seeded, class-stratified split, plus its leave-one-out AUROC.
* `hmcqu_disease_baselines`: the same fit for wall-motion abnormality in the HMC-QU layout, on the annotated cycle of
  each video (what the HMC-QU DataModule serves), on that DataModule's patient split, left out one patient at a time
  (a patient's second recording shows the same heart).

The ridge and logistic penalties are chosen by leave-one-out on the fitting set among a few values, so the shortcut
is the strongest of its family, not a weak strawman.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from datamodules.errors import DataError

EF_FEATURES = (
    "frame0_mean", "frame0_std", "frame0_dark", "temporal_std", "abs_diff", "abs_diff_per_s",
    "mean_oscillation", "dark_oscillation", "fps", "log_frames",
)  # fmt: skip
GRID_STATISTICS = ("mean", "dark", "temporal_std")
_DARK = 20  # grey level below which a pixel counts as dark (blood, background)
_ALPHAS = (0.1, 1.0, 10.0, 100.0)  # ridge penalties tried (on standardised features)
_C_VALUES = (0.01, 0.1, 1.0)  # inverse logistic L2 penalties tried


# ---------------------------------------------------------------------------------------------------- statistics


def _ef_statistics(frames: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """The anatomy-free global statistics of one video's (T, h, w) uint8 frames, in EF_FEATURES order."""
    video = frames.astype(np.float32)
    sector = video.max(axis=0) > 8  # what is imaged at all: no anatomy, only the field of view
    if sector.sum() < 4:
        sector = np.ones(video.shape[1:], dtype=bool)
    inside = video[:, sector]  # (T, n)
    dark = (inside < _DARK).mean(axis=1)
    means = inside.mean(axis=1)
    diff = np.abs(np.diff(inside, axis=0)).mean() if len(inside) > 1 else 0.0
    return np.array(
        [
            inside[0].mean(),
            inside[0].std(),
            dark[0],
            inside.std(axis=0).mean(),
            diff,
            diff * fps,
            means.std() / max(means.mean(), 1e-6),
            dark.std() / max(dark.mean(), 1e-6),
            fps,
            np.log(max(num_frames, 1)),
        ],
        dtype=np.float64,
    )


def _grid_statistics(frames: np.ndarray, grid: int) -> np.ndarray:
    """Mean intensity, dark fraction and temporal std in each cell of a grid x grid split of the content box."""
    peak = frames.max(axis=0)
    rows, cols = np.flatnonzero(peak.any(axis=1)), np.flatnonzero(peak.any(axis=0))
    if len(rows):
        frames = frames[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    video = frames.astype(np.float32)
    temporal = video.std(axis=0)
    h, w = video.shape[1:]
    out = []
    for i in range(grid):
        for j in range(grid):
            cell = (slice(i * h // grid, max((i + 1) * h // grid, i * h // grid + 1)),
                    slice(j * w // grid, max((j + 1) * w // grid, j * w // grid + 1)))  # fmt: skip
            values = video[(slice(None), *cell)]
            out += [values.mean(), (values < _DARK).mean(), temporal[cell].mean()]
    return np.array(out, dtype=np.float64)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape == (size, size):
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def _read_avi(path: Path, size: int, max_frames: int) -> tuple[np.ndarray, float, int]:
    """The first ``max_frames`` frames of an AVI as grey (T, size, size), its FPS and its frame count."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: cannot be opened as a video")
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        while len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(_resize(frame[..., 0], size))
    finally:
        capture.release()
    if len(frames) < 2:
        raise DataError(f"{path}: fewer than 2 decodable frames")
    return np.stack(frames), fps, max(count, len(frames))


@functools.lru_cache(maxsize=4096)
def _avi_features(path: str, mtime: float, size: int, max_frames: int) -> np.ndarray:
    frames, fps, count = _read_avi(Path(path), size, max_frames)
    return _ef_statistics(frames, fps, count)


@functools.lru_cache(maxsize=4096)
def _nifti_features(path: str, mtime: float, grid: int, max_frames: int) -> np.ndarray:
    from datamodules.nifti import load_sequence_array, to_uint8

    array, _ = load_sequence_array(path)
    frames = np.ascontiguousarray(to_uint8(array[:max_frames]))
    return _grid_statistics(frames, grid)


# ---------------------------------------------------------------------------------------------------- fits


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weights, float(y_mean - x_mean @ weights)


def _ridge_loo_predictions(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Leave-one-out predictions of a ridge fit (refit per held-out row; standardisation refit too)."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        train, held = _standardise(x[keep], x[i : i + 1])
        weights, bias = _ridge_fit(train, y[keep], alpha)
        out[i] = float((held @ weights)[0] + bias)
    return out


def _best_alpha(x: np.ndarray, y: np.ndarray) -> float:
    errors = [np.abs(_ridge_loo_predictions(x, y, alpha) - y).mean() for alpha in _ALPHAS]
    return _ALPHAS[int(np.argmin(errors))]


def _logistic_fit(x: np.ndarray, y: np.ndarray, c: float, iterations: int = 50) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method; weights with the bias last (not penalised)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    weights = np.zeros(design.shape[1])
    penalty = np.eye(design.shape[1]) / c
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (p - y) + penalty @ weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def _logistic_scores(train_x, train_y, test_x, c: float) -> np.ndarray:
    train, test = _standardise(train_x, test_x)
    weights = _logistic_fit(train, train_y, c)
    return test @ weights[:-1] + weights[-1]


def _logistic_loo_scores(x: np.ndarray, y: np.ndarray, c: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Held-out scores, one row (or, with ``groups``, one group: a patient's videos) left out at a time."""
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    scores = np.empty(len(y))
    for group in np.unique(groups):
        held = groups == group
        scores[held] = _logistic_scores(x[~held], y[~held], x[held], c)
    return scores


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan when a class is missing."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(greater / (len(positive) * len(negative)))


# ---------------------------------------------------------------------------------------------------- public


def ef_features(data_dir: str | Path, size: int = 32, max_frames: int = 64) -> pd.DataFrame:
    """Per video of an EchoNet-layout dataset: FileName, Split, EF and the EF_FEATURES statistics."""
    data_dir = Path(data_dir)
    table = pd.read_csv(data_dir / "FileList.csv")
    rows = []
    for row in table.itertuples():
        name = str(row.FileName)
        path = data_dir / "Videos" / (name if name.lower().endswith(".avi") else f"{name}.avi")
        if not path.is_file() or not np.isfinite(float(row.EF)):
            continue
        try:
            features = _avi_features(str(path), path.stat().st_mtime, size, max_frames)
        except DataError:
            continue
        rows.append((Path(name).stem, str(row.Split).upper(), float(row.EF), *features.tolist()))
    if len(rows) < 4:
        raise DataError(f"{data_dir}: fewer than 4 readable videos with an EF; cannot fit a baseline")
    return pd.DataFrame(rows, columns=["FileName", "Split", "EF", *EF_FEATURES])


def ef_baselines(
    data_dir: str | Path,
    fit_splits: Sequence[str] = ("TRAIN", "VAL"),
    eval_split: str = "TEST",
    size: int = 32,
    max_frames: int = 64,
) -> dict:
    """EF baselines on an EchoNet-layout dataset, in EF points (mean absolute error).

    mean_mae: predicting the TRAIN mean on ``eval_split``; shortcut_mae: ridge on EF_FEATURES fitted on ``fit_splits``,
    evaluated on ``eval_split``; mean_loo_mae / shortcut_loo_mae: the same predictors leave-one-out over every video.
    ``strongest_mae`` is the lower of mean_mae and shortcut_mae: what "it learned" must beat on that split.
    """
    table = ef_features(data_dir, size, max_frames)
    x, y = table[list(EF_FEATURES)].to_numpy(), table["EF"].to_numpy()
    split = table["Split"].to_numpy()
    train, fit, test = split == "TRAIN", np.isin(split, [s.upper() for s in fit_splits]), split == eval_split.upper()
    if train.sum() < 2 or fit.sum() < len(EF_FEATURES) // 2 or test.sum() < 1:
        raise DataError(f"{data_dir}: too few videos in TRAIN / {'+'.join(fit_splits)} / {eval_split} for a baseline")
    alpha = _best_alpha(x[fit], y[fit])
    fit_x, test_x = _standardise(x[fit], x[test])
    weights, bias = _ridge_fit(fit_x, y[fit], alpha)
    shortcut = test_x @ weights + bias
    mean_mae = float(np.abs(y[test] - y[train].mean()).mean())
    shortcut_mae = float(np.abs(y[test] - shortcut).mean())
    loo_alpha = _best_alpha(x, y)
    loo = _ridge_loo_predictions(x, y, loo_alpha)
    loo_mean = np.array([np.delete(y, i).mean() for i in range(len(y))])
    return {
        "mean_mae": mean_mae,
        "shortcut_mae": shortcut_mae,
        "strongest_mae": min(mean_mae, shortcut_mae),
        "ratio": shortcut_mae / mean_mae,
        "mean_loo_mae": float(np.abs(y - loo_mean).mean()),
        "shortcut_loo_mae": float(np.abs(y - loo).mean()),
        "loo_ratio": float(np.abs(y - loo).mean() / np.abs(y - loo_mean).mean()),
        "alpha": alpha,
        "num_fit": int(fit.sum()),
        "num_test": int(test.sum()),
        "num_videos": len(y),
        "ef_mean": float(y.mean()),
        "ef_std": float(y.std()),
        "weights": dict(zip(EF_FEATURES, weights.round(4).tolist(), strict=True)),
    }


def disease_features(data_dir: str | Path, subset: str = "PAH", grid: int = 3, max_frames: int = 32) -> pd.DataFrame:
    """Per video of a CardiacNet-layout dataset: Patient, Label and the coarse-grid statistics."""
    from datamodules.cardiacnet import normalise_folder_name

    data_dir = Path(data_dir)
    wanted = {normalise_folder_name(subset): 1, normalise_folder_name(f"Non-{subset}"): 0}
    rows = []
    for root in (data_dir / f"CardiacNet-{subset}", data_dir):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and normalise_folder_name(p.name) in wanted):
            for path in sorted(folder.glob("*_image.nii*")):
                features = _nifti_features(str(path), path.stat().st_mtime, grid, max_frames)
                patient = f"{folder.name}/{path.name.split('_image')[0]}"
                rows.append((patient, wanted[normalise_folder_name(folder.name)], *features.tolist()))
        if rows:
            break
    columns = [f"{stat}_{i}{j}" for i in range(grid) for j in range(grid) for stat in GRID_STATISTICS]
    table = pd.DataFrame(rows, columns=["Patient", "Label", *columns])
    if table.empty or table["Label"].nunique() < 2:
        raise DataError(f"{data_dir}: no CardiacNet-{subset} videos of both classes")
    return table


def disease_baselines(
    data_dir: str | Path,
    subset: str = "PAH",
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    fit_splits: Sequence[str] = ("TRAIN", "VAL"),
    eval_split: str = "TEST",
    grid: int = 3,
    max_frames: int = 32,
) -> dict:
    """Disease-detection baselines on a CardiacNet-layout dataset (AUROC; 0.5 is chance).

    shortcut_auroc: logistic regression on the grid statistics, fitted on ``fit_splits`` of the CardiacNet
    DataModule's split (same ``split_fractions`` / ``split_seed``), scored on ``eval_split``; shortcut_loo_auroc: the
    same leave-one-out over every video. The mean predictor's AUROC is 0.5 by construction (a constant score).
    """
    from datamodules.splits import split_patients

    table = disease_features(data_dir, subset, grid, max_frames)
    labels = dict(zip(table["Patient"], table["Label"], strict=True))
    splits = split_patients(list(labels), split_fractions, split_seed, strata=labels)
    return _grid_disease_baselines(table, table["Patient"].map(splits).to_numpy(), fit_splits, eval_split, data_dir)


def _grid_disease_baselines(
    table: pd.DataFrame, split: np.ndarray, fit_splits: Sequence[str], eval_split: str, data_dir, groups=None
) -> dict:
    """The logistic shortcut on a features table (Label and the grid columns; the rest is ignored): the penalty
    chosen by leave-one-out AUROC on the fitting splits, AUROC on ``eval_split``, and leave-one-out over all videos
    (one ``groups`` value, e.g. a patient, left out at a time)."""
    x = table[[c for c in table.columns if c.rsplit("_", 1)[0] in GRID_STATISTICS]].to_numpy()
    y = table["Label"].to_numpy().astype(np.float64)
    fit, test = np.isin(split, [s.upper() for s in fit_splits]), split == eval_split.upper()
    if len(set(y[fit])) < 2 or len(set(y[test])) < 2:
        raise DataError(f"{data_dir}: the {'+'.join(fit_splits)} and {eval_split} splits need both classes")
    fit_groups = None if groups is None else np.asarray(groups)[fit]
    loo_by_c = {c: _logistic_loo_scores(x[fit], y[fit], c, fit_groups) for c in _C_VALUES}
    c = max(_C_VALUES, key=lambda value: auroc(y[fit], loo_by_c[value]))
    scores = _logistic_scores(x[fit], y[fit], x[test], c)
    loo = {value: auroc(y, _logistic_loo_scores(x, y, value, groups)) for value in _C_VALUES}
    return {
        "shortcut_auroc": auroc(y[test], scores),
        "shortcut_loo_auroc": max(loo.values()),
        "mean_auroc": 0.5,
        "c": c,
        "num_fit": int(fit.sum()),
        "num_test": int(test.sum()),
        "num_videos": len(y),
    }


@functools.lru_cache(maxsize=4096)
def _avi_cycle_features(path: str, mtime: float, start: int, end: int, grid: int, size: int) -> np.ndarray:
    frames, _, _ = _read_avi(Path(path), size, end)
    return _grid_statistics(frames[start:end], grid)


def hmcqu_disease_features(data_dir: str | Path, grid: int = 3, size: int = 112) -> pd.DataFrame:
    """Per video of an HMC-QU-layout dataset: ECHO, Patient, Label (any abnormal segment) and the coarse-grid
    statistics of its annotated cycle (Reference Frame to End of Cycle), read as the HMC-QU DataModule reads them."""
    from datamodules.hmcqu import HMCQUDataModule

    module = HMCQUDataModule(str(data_dir))
    rows = []
    for record in module.scan_records():
        path, extra = Path(record.path), record.extra
        try:
            features = _avi_cycle_features(
                str(path), path.stat().st_mtime, extra["cycle_start"], extra["cycle_end"], grid, size
            )
        except DataError:
            continue
        rows.append((record.filename, extra["patient"], int(record.label), *features.tolist()))
    columns = [f"{stat}_{i}{j}" for i in range(grid) for j in range(grid) for stat in GRID_STATISTICS]
    table = pd.DataFrame(rows, columns=["ECHO", "Patient", "Label", *columns])
    if table.empty or table["Label"].nunique() < 2:
        raise DataError(f"{data_dir}: no HMC-QU videos of both classes (normal and wall-motion abnormal)")
    return table


def hmcqu_disease_baselines(
    data_dir: str | Path,
    split_fractions: Sequence[float] = (0.65, 0.1, 0.25),
    split_seed: int = 0,
    fit_splits: Sequence[str] = ("TRAIN", "VAL"),
    eval_split: str = "TEST",
    grid: int = 3,
    size: int = 112,
) -> dict:
    """Wall-motion-abnormality baselines on an HMC-QU-layout dataset (AUROC; 0.5 is chance), as `disease_baselines`:
    the logistic shortcut on the HMC-QU DataModule's patient split (same ``split_fractions`` / ``split_seed``, stratified
    by the patient's label), and leave-one-patient-out over every video."""
    from datamodules.splits import split_patients

    table = hmcqu_disease_features(data_dir, grid, size)
    labels = table.groupby("Patient")["Label"].max().to_dict()
    splits = split_patients(list(labels), split_fractions, split_seed, strata=labels)
    split = table["Patient"].map(splits).to_numpy()
    result = _grid_disease_baselines(table, split, fit_splits, eval_split, data_dir, groups=table["Patient"].to_numpy())
    return result | {"num_patients": len(labels)}


def learned_ef(mae: float, baselines: dict, margin: float = 0.75) -> bool:
    """Whether a model's EF MAE on the baselines' evaluation split is well below (``margin`` x) the strongest of the
    mean predictor and the shortcut: the bar for "it learned the heart" on the phantom."""
    return bool(mae < margin * baselines["strongest_mae"])


def learned_disease(auroc: float, baselines: dict, margin: float = 0.1, floor: float = 0.75) -> bool:
    """Whether a model's AUROC on the baselines' evaluation split is at least ``floor`` and ``margin`` above the
    shortcut's (on that split and leave-one-out, whichever is higher)."""
    shortcut = max(baselines["shortcut_auroc"], baselines["shortcut_loo_auroc"])
    return bool(auroc >= floor and auroc > shortcut + margin)
