"""AnatomicalVAE on phantom CAMUS ground truth (64 px, one shared real fit): held-out reconstruction, attribute dims,
the rejection-sampled bank saved with the checkpoint, nearest-valid correction, temporal smoothing; each against an
untrained control that must fail the same check."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from echo_modules.anatomical_vae.attributes import ATTRIBUTES, compute_attributes
from echo_modules.anatomical_vae.indices import agreement
from echo_modules.anatomical_vae.module import AnatomicalVAE
from echo_modules.anatomical_vae.postprocess import dice_per_class
from echo_modules.segmentation.data import CamusFramesDataModule

pytestmark = pytest.mark.slow  # two real fits (VAE 900 steps, U-Net <= 400 steps), shared by every test here

# vital's thresholds are calibrated on 256-px masks; at 64 px a one-pixel contact or gap is a larger fraction
# (with them, 67% of clean 64-px phantom frames fail the MYO-LA frontier). Looser ones for this size:
THRESHOLDS_64 = dict(myo_atrium_frontier_max=0.35, width_ratio_max=5.0, gap_tolerance_fraction=2.0**-10)
# a short CPU fit: a higher rate decayed by a cosine, and the attribute term weighted 1 (the paper's 0.1 needs
# far more steps for the attribute dims to order at 64 px). attribute_delta 4 (the paper's 16): at 16 the tanh
# saturates once two codes are 1/16 apart, so a pair ordered wrong early stays wrong; on the 1-thread fit myo_area's
# dim froze at |Spearman| 0.63 (0.98 at 2 threads: float reduction order decided it). At 4 (measured, 900 steps,
# 1 thread / 2 threads at step 750): held-out |Spearman| myo_area 0.995 / 0.995, lv_orientation 0.914 / 0.908,
# the rest >= 0.945 / 0.932; reconstruction Dice 0.930 / 0.924 (0.918 at 16, 1 thread)
VAE_64 = dict(image_size=64, base_channels=8, lr=5e-3, cosine_schedule=True, attribute_weight=1.0, attribute_delta=4.0,
              bank_proposals=20000, bank_max_size=2000, **THRESHOLDS_64)  # fmt: skip


@pytest.fixture(scope="module")
def camus64(tmp_path_factory):
    from datamodules.phantom.camus_writer import write_camus_dataset

    # 32 patients, 30% held out: EF is compared over ~10 test patients
    return write_camus_dataset(
        tmp_path_factory.mktemp("camus64") / "CAMUS", 32, seed=5, size=64, split_fractions=(0.6, 0.1, 0.3)
    )


@pytest.fixture(scope="module")
def datamodule(camus64):
    module = CamusFramesDataModule(str(camus64), frame_size=64, batch_size=16)
    module.setup()
    return module


@pytest.fixture(scope="module")
def fitted(datamodule, tmp_path_factory):
    """One real fit (900 steps of 16 masks), the bank built after it and written into last.ckpt."""
    L.seed_everything(0)
    run_dir = tmp_path_factory.mktemp("vae_run")
    model = AnatomicalVAE(**VAE_64)
    trainer = L.Trainer(
        max_steps=900,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
        check_val_every_n_epoch=10,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last")],
    )
    trainer.fit(model, datamodule)
    model.eval()
    return model, run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return AnatomicalVAE(**VAE_64).eval()


def _test_frames(datamodule):
    sequences = datamodule.split("TEST")
    return np.concatenate([s.masks for s in sequences]), np.concatenate([[s.spacing] * len(s.masks) for s in sequences])


def test_reconstructs_held_out_ground_truth(fitted, untrained, datamodule):
    model, _ = fitted
    masks, _ = _test_frames(datamodule)
    scores = {}
    for name, vae in (("fitted", model), ("untrained", untrained)):
        scores[name] = dice_per_class(vae.decode(vae.encode(masks)).numpy(), masks).mean(axis=0)
    print("measured Dice (LV, MYO, LA)", scores)
    assert scores["fitted"].mean() > 0.9, scores
    assert scores["untrained"].mean() < 0.5, scores


# measured on the realistic 64-px phantom after 900 steps (delta 4, 1 thread), attributes in pixels
# (attribute_units): lv_area 0.998, lv_base_width 0.945, lv_length 0.984, lv_orientation 0.914, myo_area 0.995,
# epi_center_x 0.999, epi_center_y 0.997 (untrained: 0.01-0.58). Orientation, the noisiest (a few degrees over 64 px),
# gets a looser bar.
ROBUST_ATTRIBUTES = ("lv_area", "lv_base_width", "lv_length", "myo_area", "epi_center_x", "epi_center_y")
NOISY_ATTRIBUTES = ("lv_orientation",)


def _monotonic(values: dict[str, float]) -> bool:
    return min(values[a] for a in ROBUST_ATTRIBUTES) > 0.9 and min(values[a] for a in NOISY_ATTRIBUTES) > 0.85


def test_attribute_dims_are_monotonic_in_their_attributes(fitted, untrained, datamodule):
    model, _ = fitted
    masks, spacing = _test_frames(datamodule)
    attributes = compute_attributes(masks)  # in pixels, as the VAE regularises them (attribute_units)
    correlations = {}
    for name, vae in (("fitted", model), ("untrained", untrained)):
        latent = vae.encode(masks).numpy()
        correlations[name] = {
            attribute: abs(spearmanr(latent[:, i], attributes[:, i]).statistic)
            for i, attribute in enumerate(ATTRIBUTES)
        }
    print("measured |Spearman|", correlations)
    assert _monotonic(correlations["fitted"]), correlations["fitted"]
    assert not _monotonic(correlations["untrained"]), correlations["untrained"]


def test_bank_is_valid_and_travels_with_the_checkpoint(fitted):
    model, checkpoint = fitted
    stats = model.bank_stats
    assert len(model.latent_bank) == min(stats.valid, model.hparams.bank_max_size) > 1000
    assert stats.valid <= stats.accepted <= stats.proposals
    assert model.valid(model.decode(model.latent_bank[:200])).all()
    loaded = AnatomicalVAE.load_from_checkpoint(checkpoint, map_location="cpu")
    torch.testing.assert_close(loaded.latent_bank, model.latent_bank)
    assert loaded.bank_spacing == pytest.approx(model.bank_spacing)


def _plant(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of four defects a segmenter makes: a hole in the LV, an island, a notch in the MYO, a lost LA corner."""
    out = mask.copy()
    kind = rng.integers(4)
    lv = mask == 1
    row, col = (int(v) for v in ndimage.center_of_mass(lv))
    if kind == 0:
        out[row - 1 : row + 1, col - 1 : col + 1] = 0
    elif kind == 1:
        out[2:5, 2:5] = 2
    elif kind == 2:  # MYO cut through on the lateral wall
        lateral = (mask == 2) & (np.arange(mask.shape[1])[None, :] > col)
        rows = np.flatnonzero(lateral.any(axis=1))
        cut = rows[len(rows) // 2]
        out[cut - 1 : cut + 1][lateral[cut - 1 : cut + 1]] = 0
    else:
        la_rows = np.flatnonzero((mask == 3).any(axis=1))
        out[la_rows[-3] :, :][out[la_rows[-3] :, :] == 3] = 1  # the bottom of the LA labelled LV: an island
    return out


def test_correction_makes_planted_invalid_frames_valid_close_to_ground_truth(fitted, untrained, datamodule):
    model, _ = fitted
    masks, spacing = _test_frames(datamodule)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(masks), 24, replace=False)
    truth = masks[picked]
    defective = np.stack([_plant(m, rng) for m in truth])
    frame_spacing = tuple(spacing.mean(axis=0))
    invalid = ~model.valid(defective, frame_spacing)
    assert invalid.mean() > 0.9  # the planted defects are caught
    corrected, info = model.correct(defective[invalid], frame_spacing)
    assert model.valid(corrected, frame_spacing).all()
    dice_in = dice_per_class(defective[invalid], truth[invalid]).mean()
    dice_out = dice_per_class(corrected, truth[invalid]).mean()
    # the ablation: the decoding alone (the papers'), bounded by the VAE's reconstruction (its ceiling)
    model.hparams.correction_keep_input = False
    try:
        decoded, _ = model.correct(defective[invalid], frame_spacing)
    finally:
        model.hparams.correction_keep_input = True
    assert model.valid(decoded, frame_spacing).all()
    dice_decoded = dice_per_class(decoded, truth[invalid]).mean()
    ceiling = dice_per_class(model.decode(model.encode(truth[invalid])).numpy(), truth[invalid]).mean()
    numbers = dict(input=dice_in, corrected=dice_out, decoded_only=dice_decoded, reconstruction=ceiling)
    print("measured correction Dice", numbers)
    assert dice_out > dice_in - 0.05, numbers  # the bar
    assert dice_decoded < dice_out and dice_decoded > ceiling - 0.03, numbers
    # the untrained VAE has no bank to go to, and its decodings are not anatomy
    with pytest.raises(ValueError, match="bank is empty"):
        untrained.correct(defective[invalid], frame_spacing)
    assert not untrained.valid(untrained.decode(untrained.encode(truth)), frame_spacing).any()


def _per_attribute_improves(before: dict, after: dict) -> bool:
    """Every attribute's violation rate drops, or stays at 0."""
    return all(
        after[f"violations_{a}"] < before[f"violations_{a}"] or after[f"violations_{a}"] == 0 for a in ATTRIBUTES
    )


def test_smoothing_lowers_every_attributes_violations_on_a_jittered_sequence(fitted, untrained, datamodule):
    model, _ = fitted
    sequence = max(datamodule.split("TEST"), key=lambda s: len(s.masks))
    rng = np.random.default_rng(1)
    jittered = sequence.masks.copy()
    for t in range(len(jittered)):  # each frame's LV grows or shrinks by a pixel at random
        lv = jittered[t] == 1
        if rng.random() < 0.5:
            jittered[t][ndimage.binary_dilation(lv) & (jittered[t] == 2)] = 1
        else:
            jittered[t][lv & ~ndimage.binary_erosion(lv)] = 2
    # castor's metric: attribute curves min-max scaled by the training ground truth's bounds (stored with the bank)
    before = model.temporal_metrics(jittered)
    smoothed, weights = model.smooth(jittered)  # the default: trend_cubic (the cubic trend kept, castor's snake on
    after = model.temporal_metrics(smoothed)  # the residual, every frame smoothed, the end frames included)
    dice_in, dice_out = (dice_per_class(m, sequence.masks).mean() for m in (jittered, smoothed))
    # the ablation: castor's criterion on the latent dims only (the decoded attributes need not follow their dim)
    model.hparams.smoothing_check_decoded = False
    try:
        latent_only = model.temporal_metrics(model.smooth(jittered, boundary="castor")[0])
    finally:
        model.hparams.smoothing_check_decoded = True
    print("measured temporal metrics", dict(before=before, after=after, latent_only=latent_only,
                                            dice=(dice_in, dice_out)))  # fmt: skip
    # measured (delta-4 fit, 1 thread / 2 threads; violations before -> after): lv_area 0.79 -> 0 / 0.11,
    # lv_base_width 0.79 -> 0 / 0, lv_length 0.79 -> 0.05 / 0.21, lv_orientation 0.42 -> 0.21 / 0.21, myo_area
    # 0.79 -> 0 / 0.05, epi_center_x 0.21 -> 0.11 / 0.05, epi_center_y 0 -> 0 / 0, frame-to-frame Dice 0.88 -> 0.99 /
    # 0.99, Dice to ground truth 0.903 -> 0.900 / 0.905; latent-only misses epi_center_x (0.21 -> 0.26, 2 threads)
    # or epi_center_y (0 -> 0.11, 1 thread). The other
    # boundaries on the same fit: castor passes (orientation 0.42 -> 0.37, Dice 0.890) but shrinks the ED -> ES trend
    # (the EF test below); pinned misses (lv_orientation 0.42 -> 0.42: its held ED/ES frames keep their jitter);
    # volume_trend passes (orientation 0.21, epi_center_x 0.16, Dice 0.896) but moves EF (MAE 2.76 vs 1.47)
    assert _per_attribute_improves(before, after), (before, after)
    assert after["frame_to_frame_dice"] > before["frame_to_frame_dice"]
    assert dice_out > dice_in - 0.02, (dice_in, dice_out)
    assert (weights[: len(ATTRIBUTES)] <= 128).all() and (weights[len(ATTRIBUTES) :] == 50).all()
    # the controls fail the same check: the unsmoothed sequence, the latent-only smoother, the untrained VAE
    assert not _per_attribute_improves(before, before)
    assert not _per_attribute_improves(before, latent_only), latent_only
    control, _ = untrained.smooth(jittered)
    assert dice_per_class(control, sequence.masks).mean() < 0.5


# ---------------------------------------------------------------------------------------------------- segment, guarantee, measure


@pytest.fixture(scope="module")
def segmenter(datamodule, tmp_path_factory):
    """A small U-Net fitted on the phantom frames (stops at validation Dice 0.92, at most 400 steps)."""
    from echo_modules.segmentation import Segmenter2D, UNet2D

    L.seed_everything(0)
    run_dir = tmp_path_factory.mktemp("segmenter_run")
    model = Segmenter2D(UNet2D(1, 4, 8, 4), lr=3e-3, predictions_dir=str(run_dir / "predictions"))
    trainer = L.Trainer(
        max_steps=400,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=run_dir,
        callbacks=[L.pytorch.callbacks.EarlyStopping("val/dice", mode="max", stopping_threshold=0.92, patience=100)],
    )
    trainer.fit(model, datamodule)
    return model.eval(), trainer, run_dir / "predictions"


def _shortcut_ef_mae(datamodule) -> float:
    """Ridge (penalty by leave-one-out) of EF on anatomy-free global image statistics of each patient's views:
    mean, spread and dark fraction of the ED and ES frames and their ratios; fitted on TRAIN + VAL, scored on TEST."""

    def features(split):
        rows, targets = [], []
        by_patient: dict[str, list] = {}
        for sequence in datamodule.split(split):
            by_patient.setdefault(sequence.patient, []).append(sequence)
        for views in by_patient.values():
            values = []
            for sequence in sorted(views, key=lambda s: s.view):
                ed, es = (sequence.images[i].astype(float) for i in (sequence.ed_index, sequence.es_index))
                dark_ed, dark_es = (ed < 20).mean(), (es < 20).mean()
                values += [ed.mean(), es.mean(), ed.std(), es.std(), dark_ed, dark_es, dark_es / max(dark_ed, 1e-6)]
            rows.append(values)
            targets.append(views[0].ef)
        return np.array(rows), np.array(targets)

    x_fit, y_fit = (np.concatenate(parts) for parts in zip(features("TRAIN"), features("VAL"), strict=True))
    x_test, y_test = features("TEST")
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0) + 1e-9
    x_fit, x_test = (x_fit - mean) / std, (x_test - mean) / std
    best = None
    for alpha in (0.1, 1.0, 10.0, 100.0):
        design = np.c_[np.ones(len(x_fit)), x_fit]
        hat = design @ np.linalg.solve(design.T @ design + alpha * np.eye(design.shape[1]), design.T)
        residual = (y_fit - hat @ y_fit) / (1 - np.diag(hat))
        if best is None or np.abs(residual).mean() < best[0]:
            best = (np.abs(residual).mean(), alpha)
    design = np.c_[np.ones(len(x_fit)), x_fit]
    weights = np.linalg.solve(design.T @ design + best[1] * np.eye(design.shape[1]), design.T @ y_fit)
    return float(np.abs(np.c_[np.ones(len(x_test)), x_test] @ weights - y_test).mean())


@pytest.fixture(scope="module")
def segmented(segmenter, datamodule):
    """The segmenter's TEST predictions: a CAMUS-layout folder of NIfTI sequences + Info cfgs."""
    model, trainer, predictions = segmenter
    datamodule.predict_split = "TEST"
    trainer.predict(model, datamodule)
    return predictions


def test_segment_guarantee_anatomy_measure_ef(segmented, fitted, datamodule, tmp_path):
    from echo_modules.anatomical_vae.pipeline import postprocess_folder

    predictions = segmented
    vae, _ = fitted
    summary = postprocess_folder(vae, predictions, tmp_path / "corrected", smooth=False)  # correction only
    assert summary["valid_after"] == 1.0 and summary["valid_after"] >= summary["valid_before"], summary
    test_ef = np.array([s.ef for s in datamodule.split("TEST") if s.view == "4CH"])
    assert summary["ef_count_after"] == summary["ef_count_before"] == len(test_ef)
    train_ef = np.array([s.ef for s in datamodule.split("TRAIN") if s.view == "4CH"])
    mean_mae = float(np.abs(test_ef - train_ef.mean()).mean())
    shortcut_mae = _shortcut_ef_mae(datamodule)
    numbers = dict(before=summary["ef_mae_before"], after=summary["ef_mae_after"], mean=mean_mae, shortcut=shortcut_mae)
    print("measured EF MAE", numbers, summary)
    # the corrected segmentations' biplane EF beats the strongest cheap alternative on the same patients
    assert summary["ef_mae_after"] < min(mean_mae, shortcut_mae) - 1.0, numbers
    rows = (tmp_path / "corrected" / "indices.csv").read_text().splitlines()
    assert len(rows) == len(test_ef) + 1 and "biplane" in rows[1]
    # smoothing keeps the EF of the corrected masks (issue 12: castor's free-ended snake took the README chain's EF
    # MAE from 1.9 to 22): the default on a few patients, and castor's operator at the same weights as the control.
    # Kept = no worse against the reference than corrected-only, by MAE and by |bias| (within 1 point each): the
    # end frames are smoothed too, so EF may move, but not away from the truth. Measured (delta-4 fit; MAE / bias):
    # 1 thread: corrected 1.47 / -1.47, trend_cubic 1.40 / +1.10, castor at its weights 4.55 / -4.55 (the control);
    # 2 threads: corrected 1.17 / -0.33, trend_cubic 2.01 / -0.33 (MAE margin 0.16), castor 3.57 / -3.23
    smoothed, castor = _smoothed_ef(vae, predictions, patients=2)
    corrected = agreement(smoothed["corrected"], smoothed["reference"])
    default, control = (agreement(ef, smoothed["reference"]) for ef in (smoothed["smoothed"], castor["smoothed"]))
    print("measured EF after smoothing", dict(corrected=corrected, default=default, castor_same_weights=control))

    def keeps_ef(result: dict) -> bool:
        return result["mae"] <= corrected["mae"] + 1.0 and abs(result["bias"]) <= abs(corrected["bias"]) + 1.0

    assert keeps_ef(default), (corrected, default)
    assert not keeps_ef(control), (corrected, control)


def _smoothed_ef(vae, folder, patients: int) -> tuple[dict, dict]:
    """Biplane EF of the first ``patients`` of a CAMUS-layout folder: the reference (Info cfg), the corrected-only
    masks, the corrected + smoothed masks (the pipeline's default), and castor's operator at the weights the default
    search found (the control); returns ``(default, castor)`` dicts of per-patient EF lists."""
    from datamodules.camus import _field, read_info_cfg
    from echo_modules.anatomical_vae.indices import clinical_indices
    from echo_modules.anatomical_vae.mask_io import read_masks
    from echo_modules.anatomical_vae.pipeline import guarantee_anatomy

    default = {"reference": [], "corrected": [], "smoothed": []}
    castor = {"smoothed": []}
    for patient in sorted(p for p in folder.iterdir() if p.is_dir())[:patients]:
        ed, es, spacings = {}, {}, {}
        for view in ("2CH", "4CH"):
            masks, spacing = read_masks(next(patient.glob(f"*_{view}_half_sequence_gt.*")))
            fields = read_info_cfg(patient / f"Info_{view}.cfg")
            frames = int(_field(fields, "ED")) - 1, int(_field(fields, "ES")) - 1
            smoothed, weights = vae.smooth(masks)
            same_weights, _ = vae.smooth(masks, weights=weights, boundary="castor")
            variants = {"corrected": guarantee_anatomy(vae, masks, spacing, smooth=False),
                        "smoothed": vae.correct(smoothed, spacing)[0], "castor": vae.correct(same_weights, spacing)[0]}  # fmt: skip
            spacings[view] = spacing
            for name, sequence in variants.items():
                ed.setdefault(name, {})[view], es.setdefault(name, {})[view] = (sequence[i] for i in frames)
        default["reference"].append(float(_field(fields, "EF")))
        for name in ("corrected", "smoothed"):
            default[name].append(clinical_indices(ed[name], es[name], spacings)["ef"])
        castor["smoothed"].append(clinical_indices(ed["castor"], es["castor"], spacings)["ef"])
    return default, castor


def test_anatomy_command_corrects_a_folder_in_its_own_formats(fitted, datamodule, tmp_path):
    import csv

    import cv2

    from echo_modules.anatomical_vae.mask_io import read_masks, write_masks
    from tests.helpers import run_echolab

    _, checkpoint = fitted
    sequence = datamodule.split("TEST")[0]
    folder = tmp_path / "segmentations"
    broken = sequence.masks.copy()
    broken[1:3, 2:5, 2:5] = 2  # two frames with a MYO island
    write_masks(folder / "seq.nii.gz", broken, sequence.spacing)
    cv2.imwrite(str(folder / "frame.png"), broken[1])
    out = tmp_path / "corrected"
    result = run_echolab("anatomy", str(folder), "--csv", str(tmp_path / "before.csv"), "--vae", str(checkpoint),
                         "--out", str(out), "--spacing", *map(str, sequence.spacing))  # fmt: skip
    assert result.returncode == 0, result.stderr
    corrected, spacing = read_masks(out / "seq.nii.gz")
    assert corrected.shape == broken.shape and np.allclose(spacing, sequence.spacing, rtol=1e-4)
    assert read_masks(out / "frame.png")[0].shape == (1, *broken.shape[1:])
    rows = list(csv.DictReader((out / "validity.csv").open()))
    assert len(rows) == len(broken) + 1
    assert all(row["valid_after"] == "1" for row in rows)
    assert {row["file"] for row in rows if row["valid_before"] == "0"} == {"seq.nii.gz", "frame.png"}
    assert "corrected into" in result.stdout


def test_predict_corrects_a_segmenter_output_folder(fitted, segmented, tmp_path):
    """``echolab predict`` on the VAE config and a folder of segmentations (the Segmenter2D's output, one frame
    broken): corrected masks in the input's format and paths, validity/temporal/indices CSVs, the same masks as the
    in-process pipeline, before/after overlays in the (offline) W&B run."""
    import csv
    import json
    import shutil

    from echo_modules.anatomical_vae.mask_io import find_mask_files, read_masks, write_masks
    from echo_modules.anatomical_vae.pipeline import guarantee_anatomy
    from tests.helpers import run_echolab

    model, checkpoint = fitted
    folder = tmp_path / "segmentations"
    shutil.copytree(segmented, folder)
    for patient in sorted(p for p in folder.iterdir() if p.is_dir())[2:]:  # two patients: the I/O, not the numbers
        shutil.rmtree(patient)
    files = find_mask_files(folder)
    broken_path = files[0]
    broken, spacing = read_masks(broken_path)
    broken[1, 2:5, 2:5] = 2  # a MYO island
    write_masks(broken_path, broken, spacing)
    out = tmp_path / "corrected"
    logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
              "init_args": {"project": "echolab-tests", "save_dir": str(tmp_path)}}  # fmt: skip
    result = run_echolab("predict", "--config", "configs/anatomical_vae/phantom.yaml",
                         "--data", "echo_modules.anatomical_vae.data.MaskFolderDataModule", "--data.data_dir", str(folder),
                         "--model.init_args.predictions_dir", str(out), "--trainer.default_root_dir", str(tmp_path / "run"),
                         "--ckpt_path", str(checkpoint), "--trainer.logger", json.dumps(logger))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the W&B (offline) run holds the before/after overlays of the broken frames
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = [p for p in (runs[0] / "files" / "media" / "images").rglob("*.png")]
    assert images and all("before_after" in str(p) for p in images), images
    rows = list(csv.DictReader((out / "validity.csv").open()))
    frames = {path: read_masks(path)[0] for path in files}
    assert len(rows) == sum(len(m) for m in frames.values())
    assert all(row["valid_after"] == "1" for row in rows)
    assert {"0"} <= {row["valid_before"] for row in rows if row["file"] == str(broken_path.relative_to(folder))}
    for path in files:
        corrected, out_spacing = read_masks(out / path.relative_to(folder))
        assert corrected.shape == frames[path].shape and np.allclose(out_spacing, read_masks(path)[1], rtol=1e-4)
    expected = guarantee_anatomy(model, broken, spacing, smooth=True)
    np.testing.assert_array_equal(read_masks(out / broken_path.relative_to(folder))[0], expected)
    indices = list(csv.DictReader((out / "indices.csv").open()))
    assert len(indices) == len({path.parent.name for path in files}) and indices[0]["method"] == "biplane"
    assert len((out / "temporal.csv").read_text().splitlines()) == len(files) + 1
