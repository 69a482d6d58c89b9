"""Figures the methods log (EF agreement) and a logger-agnostic way to log them.

Figures are built with matplotlib's object API (``Figure``, no pyplot state), so importing EchoLab never changes the
backend of a notebook and nothing has to be closed; ``Figure.savefig`` renders with the Agg canvas by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def new_figure(columns: int = 1, width: float = 4.5, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    """A figure with one row of ``columns`` axes (an array), outside pyplot's global state."""
    figure = Figure(figsize=(width * columns, height))
    return figure, np.atleast_1d(figure.subplots(1, columns, squeeze=False)[0])


def ef_agreement_figure(predicted: np.ndarray, true: np.ndarray, title: str = "") -> Figure:
    """EF scatter (prediction vs truth) beside a Bland-Altman plot (difference vs mean, bias and 95% limits)."""
    predicted, true = np.asarray(predicted, float), np.asarray(true, float)
    figure, (scatter, bland_altman) = new_figure(2)
    low, high = float(min(true.min(), predicted.min())) - 2, float(max(true.max(), predicted.max())) + 2
    scatter.scatter(true, predicted, s=8, alpha=0.7)
    scatter.plot([low, high], [low, high], "k--", lw=1)
    scatter.set(xlabel="true EF (%)", ylabel="predicted EF (%)", xlim=(low, high), ylim=(low, high), title=title)
    difference, mean = predicted - true, (predicted + true) / 2
    bias, spread = difference.mean(), 1.96 * difference.std()
    bland_altman.scatter(mean, difference, s=8, alpha=0.7)
    for value, style in ((bias, "-"), (bias + spread, "--"), (bias - spread, "--")):
        bland_altman.axhline(value, color="k", ls=style, lw=1)
    bland_altman.set(
        xlabel="mean of predicted and true EF (%)",
        ylabel="predicted - true (%)",
        title=f"bias {bias:.2f}, limits ±{spread:.2f}",
    )
    figure.tight_layout()
    return figure


def log_figure(module, key: str, figure: Figure) -> None:
    """Log a figure to W&B when the trainer has a WandbLogger; always also save a PNG into the run's folder
    (``module.run_dir``, resolved on every rank beforehand, so this may be called on rank 0 only)."""
    from lightning.pytorch.loggers import WandbLogger

    trainer = module.trainer
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[figure], step=trainer.global_step)
    if trainer.is_global_zero:
        out = Path(module.run_dir) / "figures"
        out.mkdir(parents=True, exist_ok=True)
        figure.savefig(out / f"{key.replace('/', '_')}.png", dpi=100)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a figure made with pyplot by a caller: release it (ours are not registered there)
        pyplot.close(figure)
