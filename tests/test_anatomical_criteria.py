"""The 12 anatomical validity criteria: each catches its planted defect, clean phantom ground truth passes, the
vectorised stack equals the per-frame reference, pixel spacing is honoured, and ``echolab anatomy`` reads every format."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from scipy import ndimage

from echo_modules.anatomical_vae.criteria import (
    CRITERIA,
    LA,
    LV,
    MYO,
    CriteriaThresholds,
    compute_criteria,
    naive_criteria,
)
from echo_modules.anatomical_vae.mask_io import read_masks, write_masks
from tests.helpers import run_echolab


@pytest.fixture(scope="module")
def camus256(tmp_path_factory):
    """Two phantom patients (both views, whole half-sequences) at the 256-px size vital's thresholds were set for."""
    from datamodules.phantom.camus_writer import write_camus_dataset

    return write_camus_dataset(tmp_path_factory.mktemp("camus256"), 2, seed=3, size=256)


@pytest.fixture(scope="module")
def clean_masks(camus256) -> np.ndarray:
    stacks = [read_masks(p)[0] for p in sorted(camus256.glob("patient*/*_half_sequence_gt.nii.gz"))]
    return np.concatenate(stacks)


def _centre(struct: np.ndarray) -> tuple[int, int]:
    row, col = ndimage.center_of_mass(struct)
    return int(row), int(col)


def plant(mask: np.ndarray, defect: str) -> np.ndarray:
    """A copy of a clean ground-truth frame with one anatomical defect planted."""
    out = mask.copy()
    lv, myo, la = mask == LV, mask == MYO, mask == LA
    if defect in ("holes_in_lv", "holes_in_la"):
        row, col = _centre(lv if defect == "holes_in_lv" else la)
        out[row - 1 : row + 2, col - 1 : col + 2] = 0
    elif defect == "holes_in_epi":
        distance = ndimage.distance_transform_edt(myo)
        row, col = np.unravel_index(distance.argmax(), distance.shape)
        out[row - 1 : row + 2, col - 1 : col + 2] = 0
    elif defect.startswith("disconnected_"):
        label = {"lv": LV, "myo": MYO, "la": LA}[defect.split("_")[1]]
        assert not mask[2:6, 2:6].any()  # a background corner, far from the heart
        out[2:6, 2:6] = label
    elif defect == "holes_between_lv_myo":  # the inner layer of the MYO above the LV centroid becomes background
        row, _ = _centre(lv)
        inner = myo & ndimage.binary_dilation(lv)
        inner[row:] = False
        out[inner] = 0
    elif defect == "holes_between_lv_la":  # two LV rows along the mitral plane become background
        base = lv & ndimage.binary_dilation(la, iterations=2)
        out[base] = 0
    elif defect == "erosion_ratio_myo":  # MYO 1 px thin at one point, thickened elsewhere
        thick = ndimage.binary_dilation(myo, iterations=8) & (mask == 0)
        out[thick] = MYO
        myo2 = out == MYO
        row, col = _centre(lv)
        lateral = myo2.copy()
        lateral[: row - 2] = False
        lateral[row + 2 :] = False
        lateral[:, :col] = False
        keep = lateral & ndimage.binary_dilation(lv)  # the one MYO pixel next to the LV on those rows
        out[lateral & ~keep] = 0
    elif defect == "width_ratio_lv_myo":  # the MYO 1 px wide on the rows around the joint centroid
        row, _ = _centre(lv | myo)
        band = np.zeros_like(lv)
        band[row - 3 : row + 4] = True
        out[band & myo & ~ndimage.binary_dilation(lv)] = 0
    elif defect == "frontier_ratio_lv_background":  # no lateral wall above the LV centroid
        row, col = _centre(lv)
        wall = myo.copy()
        wall[row:] = False
        wall[:, :col] = False
        out[wall] = 0
    elif defect == "frontier_ratio_myo_la":  # the MYO grows 4 px into the LA
        out[la & ndimage.binary_dilation(myo, iterations=4)] = MYO
    elif defect == "missing_la":
        out[la] = 0
    else:
        raise ValueError(defect)
    return out


DEFECTS = list(CRITERIA)


def test_clean_ground_truth_passes_every_criterion(clean_masks):
    result = compute_criteria(clean_masks)
    failures = {name: int(result.failed[:, i].sum()) for i, name in enumerate(CRITERIA) if result.failed[:, i].any()}
    assert result.valid.all(), f"clean phantom ground truth failed: {failures}"


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_criterion_catches_its_planted_defect(clean_masks, defect):
    frames = clean_masks[[0, len(clean_masks) // 2, len(clean_masks) - 1]]  # ED, mid-sequence, ES of two views
    defective = np.stack([plant(frame, defect) for frame in frames])
    result = compute_criteria(defective)
    column = CRITERIA.index(defect)
    assert result.failed[:, column].all(), (defect, result.values[defect])
    assert not result.valid.any()
    assert compute_criteria(frames).valid.all()  # the same frames before planting: the defect is what failed


def test_missing_structure_is_invalid(clean_masks):
    result = compute_criteria(plant(clean_masks[0], "missing_la"))
    assert not result.valid[0]
    assert {"holes_in_la", "disconnected_la", "holes_between_lv_la", "frontier_ratio_myo_la"} <= set(
        result.failed_names(0)
    )
    assert compute_criteria(np.zeros((8, 8), np.uint8)).failed.all()  # nothing at all: every criterion fails


def test_vectorised_stack_equals_the_per_frame_reference(clean_masks):
    frames = [clean_masks[i] for i in range(0, len(clean_masks), 7)]
    frames += [plant(clean_masks[3], defect) for defect in DEFECTS]
    stack = compute_criteria(np.stack(frames), pixel_spacing=(0.3, 0.3))
    for index, frame in enumerate(frames):
        reference = naive_criteria(frame, pixel_spacing=(0.3, 0.3))
        for name in CRITERIA:
            np.testing.assert_allclose(stack.values[name][index], reference[name], err_msg=f"{name} frame {index}")


def test_pixel_spacing_is_honoured(clean_masks):
    frame = plant(clean_masks[0], "erosion_ratio_myo")
    stretched = np.repeat(frame, 2, axis=0)  # twice as many rows, each half as tall: the same physical heart
    finer = np.repeat(stretched, 2, axis=1)  # the same again with square 0.5 mm pixels
    honoured = compute_criteria(stretched, (0.5, 1.0))
    square = compute_criteria(finer, (0.5, 0.5))
    ignored = compute_criteria(stretched, (1.0, 1.0))
    for name in CRITERIA:
        np.testing.assert_allclose(honoured.values[name], square.values[name], err_msg=name)
    assert not ignored.valid[0] and not honoured.valid[0]
    # ignoring the spacing measures a heart twice as tall: the LV/MYO width row and the frontiers change
    assert any(
        not np.isclose(ignored.values[name][0], honoured.values[name][0])
        for name in ("erosion_ratio_myo", "frontier_ratio_lv_background", "width_ratio_lv_myo")
    )
    # the gap tolerance in mm^2: the same 9-px hole between LV and MYO is tolerated at a coarse spacing only
    gap = plant(clean_masks[0], "holes_between_lv_myo")
    pixels = compute_criteria(gap).values["holes_between_lv_myo"][0]
    assert pixels > 0
    tolerant = CriteriaThresholds(gap_tolerance_mm2=float(pixels) * 0.25 + 1)
    assert compute_criteria(gap, (0.5, 0.5), tolerant).values["holes_between_lv_myo"][0] == 0
    assert compute_criteria(gap, (1.0, 1.0), tolerant).values["holes_between_lv_myo"][0] == pixels


def test_anatomy_command_reads_every_format(camus256, clean_masks, tmp_path):
    folder = tmp_path / "masks"
    sequence = sorted(camus256.glob("patient0001/*_2CH_half_sequence_gt.nii.gz"))[0]
    nifti_frames, nifti_spacing = read_masks(sequence)
    write_masks(folder / "seq.nii.gz", nifti_frames, nifti_spacing)
    write_masks(folder / "seq.mhd", nifti_frames[:3], nifti_spacing)
    bad_frame = plant(clean_masks[0], "disconnected_myo")
    write_masks(folder / "frames" / "bad.npy", bad_frame[None])
    cv2.imwrite(str(folder / "frames" / "scaled.png"), (clean_masks[0] * 85).astype(np.uint8))  # 0/85/170/255
    out = tmp_path / "validity.csv"
    result = run_echolab("anatomy", str(folder), "--csv", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "frame", *CRITERIA, "failed", "valid"]
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    assert len(by_file["seq.nii.gz"]) == len(nifti_frames) and len(by_file["seq.mhd"]) == 3
    assert all(row["valid"] == "1" for name in ("seq.nii.gz", "seq.mhd", "frames/scaled.png") for row in by_file[name])
    assert by_file["frames/bad.npy"][0]["valid"] == "0"
    assert "disconnected_myo" in by_file["frames/bad.npy"][0]["failed"].split(";")
    assert f"{len(rows) - 1}/{len(rows)} frames" in result.stdout


def test_anatomy_command_names_a_bad_file_in_one_line(tmp_path, capsys):
    import cli

    folder = tmp_path / "masks"
    write_masks(folder / "fine.npy", np.zeros((1, 8, 8), np.uint8))
    for name, content, problem in (
        ("broken.npy", b"not a numpy file", "cannot be read"),
        ("labels.npy", None, "outside 0-3"),
    ):
        if content is None:
            write_masks(folder / name, np.full((1, 8, 8), 7, np.uint8))
        else:
            (folder / name).write_bytes(content)
        with pytest.raises(SystemExit) as stopped:
            cli.main(["anatomy", str(folder), "--csv", str(tmp_path / "out.csv")])
        message = capsys.readouterr().err.strip()
        assert stopped.value.code == 2
        assert message.count("\n") == 0 and name in message and problem in message, message
        (folder / name).unlink()
