"""Any folder of AVI files, for ``echolab predict`` on videos that come without a dataset index.

Every ``*.avi`` under ``data_dir`` (recursively) becomes one TEST record with unknown EF, named by its path relative to
``data_dir`` without the extension. Use it with ``predict`` (``predict_split`` TEST, the default); ``fit`` and ``test``
need labels and a training split, which a bare folder does not have.
"""

from __future__ import annotations

import math

from lightning.pytorch.utilities import rank_zero_info

from datamodules.base import VideoDataModule, VideoRecord
from datamodules.errors import DataError


class VideoFolderDataModule(VideoDataModule):
    """Videos found in a folder, for prediction. Arguments as :class:`datamodules.base.VideoDataModule`.

    Normalisation: with ``--ckpt_path`` the checkpoint's training statistics are used (EchoLab checkpoints carry
    them); ``mean``/``std`` override them; only without either are the folder's own statistics used.
    """

    dataset_name = "video folder"

    def scan_records(self) -> list[VideoRecord]:
        paths = sorted(p for p in self.data_dir.rglob("*") if p.suffix.lower() == ".avi" and p.is_file())
        if not paths:
            raise DataError(f"{self.data_dir}: no .avi files found (searched recursively)")
        return [
            VideoRecord(path=p, filename=p.relative_to(self.data_dir).with_suffix("").as_posix(), split="TEST")
            for p in paths
        ]

    def _normalisation(self, train_records: list[VideoRecord]) -> tuple[float, float]:
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        rank_zero_info(
            f"{self.data_dir}: computing normalisation statistics from the folder's own videos (a checkpoint's "
            "training statistics replace them at predict time)"
        )
        return super()._normalisation(self.records["TEST"])

    @property
    def train_ef_mean(self) -> float:
        return math.nan

    @property
    def train_ef_std(self) -> float:
        return math.nan
