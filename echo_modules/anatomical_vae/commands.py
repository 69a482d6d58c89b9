"""``echolab anatomy MASKS_DIR --csv out.csv``: the validity criteria on any folder of segmentations, no model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from echo_modules.anatomical_vae.criteria import CRITERIA, CriteriaResult, CriteriaThresholds, compute_criteria
from echo_modules.anatomical_vae.mask_io import find_mask_files, read_masks
from echo_modules.common.module import write_csv

CSV_HEADER = ["file", "frame", *CRITERIA, "failed", "valid"]


def criteria_rows(file: str, result: CriteriaResult) -> list[list]:
    """One CSV row per frame: file, frame, every criterion's value, the failed criteria (``;``-joined), valid."""
    rows = []
    for frame in range(len(result.valid)):
        values = [result.values[name][frame] for name in CRITERIA]
        cells = ["" if math.isnan(v) else (int(v) if float(v).is_integer() else round(float(v), 5)) for v in values]
        rows.append([file, frame, *cells, ";".join(result.failed_names(frame)), int(result.valid[frame])])
    return rows


def anatomy_main(args: list[str]) -> None:
    """Check every segmentation under MASKS_DIR against the 12 anatomical criteria; one CSV row per frame."""
    parser = argparse.ArgumentParser(prog="echolab anatomy", description=anatomy_main.__doc__)
    parser.add_argument("masks_dir", help="folder of NIfTI / MHD / PNG / NPY label maps (0 BG, 1 LV, 2 MYO, 3 LA)")
    parser.add_argument("--csv", required=True, help="output CSV")
    parser.add_argument(
        "--spacing", type=float, nargs=2, default=(1.0, 1.0), metavar=("ROW_MM", "COL_MM"),
        help="pixel spacing for files that carry none (PNG, NPY)",
    )  # fmt: skip
    defaults = CriteriaThresholds()
    parser.add_argument("--erosion-ratio-min", type=float, default=defaults.erosion_ratio_min)
    parser.add_argument("--width-ratio-max", type=float, default=defaults.width_ratio_max)
    parser.add_argument("--lv-background-frontier-max", type=float, default=defaults.lv_background_frontier_max)
    parser.add_argument("--myo-atrium-frontier-max", type=float, default=defaults.myo_atrium_frontier_max)
    parser.add_argument(
        "--gap-tolerance-mm2", type=float, default=None, help="gap tolerance in mm^2 (default H*W/2^14 px)"
    )
    parser.add_argument("--vae", default=None, help="AnatomicalVAE checkpoint: also correct + smooth every file")
    parser.add_argument("--out", default=None, help="with --vae: folder for corrected masks and the before/after CSVs")
    parser.add_argument("--no-smooth", action="store_true", help="with --vae: correct only, no temporal smoothing")
    parser.add_argument(
        "--wandb-project", default=None, help="with --vae: log before/after overlays to this W&B project"
    )
    options = parser.parse_args(args)
    if options.vae and not options.out:
        parser.error("--vae needs --out (where the corrected masks go)")
    thresholds = CriteriaThresholds(
        erosion_ratio_min=options.erosion_ratio_min,
        width_ratio_max=options.width_ratio_max,
        lv_background_frontier_max=options.lv_background_frontier_max,
        myo_atrium_frontier_max=options.myo_atrium_frontier_max,
        gap_tolerance_mm2=options.gap_tolerance_mm2,
    )
    root = Path(options.masks_dir)
    rows, frames, valid = [], 0, 0
    for path in find_mask_files(root):
        masks, spacing = read_masks(path, tuple(options.spacing))
        result = compute_criteria(masks, spacing, thresholds)
        rows += criteria_rows(str(path.relative_to(root)), result)
        frames += len(masks)
        valid += int(np.sum(result.valid))
    write_csv(options.csv, CSV_HEADER, rows)
    print(f"{valid}/{frames} frames anatomically valid; wrote {options.csv}")
    if options.vae:
        _correct_folder(options, root)


def _correct_folder(options: argparse.Namespace, root: Path) -> None:
    from datamodules.errors import ConfigError
    from echo_modules.anatomical_vae.module import AnatomicalVAE
    from echo_modules.anatomical_vae.pipeline import postprocess_folder

    if not Path(options.vae).is_file():
        raise ConfigError(f"--vae {options.vae}: no such checkpoint")
    model = AnatomicalVAE.load_from_checkpoint(options.vae, map_location="cpu")
    if len(model.latent_bank) == 0:
        raise ConfigError(f"--vae {options.vae}: the checkpoint has no latent bank (fit with build_bank_after_fit)")
    run = None
    if options.wandb_project:
        import wandb

        run = wandb.init(project=options.wandb_project, job_type="anatomy", config=vars(options))
    summary = postprocess_folder(model, root, options.out, smooth=not options.no_smooth, wandb_run=run,
                                 default_spacing=tuple(options.spacing))  # fmt: skip
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish()
    text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    print(f"corrected into {options.out}: {text}")
