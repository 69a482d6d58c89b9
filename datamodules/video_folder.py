"""Any folder of videos, for ``echolab predict`` on videos that come without a dataset index.

Every file under ``data_dir`` (recursively) whose name matches one of ``patterns`` (default: the common video
containers, ``*.avi *.mp4 *.mov *.mkv *.m4v *.webm``, any case) becomes one TEST record with unknown EF, named by its
path relative to ``data_dir`` without the extension (with it, when two files differ only by extension). Use it with
``predict`` (``predict_split`` TEST, the default); ``fit`` and ``test`` need labels and a training split, which a bare
folder does not have.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from datamodules.base import VideoDataModule, VideoRecord
from datamodules.errors import ConfigError, DataError

DEFAULT_PATTERNS = ("*.avi", "*.mp4", "*.mov", "*.mkv", "*.m4v", "*.webm")


class VideoFolderDataModule(VideoDataModule):
    """Videos found in a folder, for prediction. Arguments as :class:`datamodules.base.VideoDataModule`.

    Normalisation: with ``--ckpt_path`` the checkpoint's training statistics are used (EchoLab checkpoints carry
    them); ``mean``/``std`` override them; only without either are the folder's own statistics used.
    """

    dataset_name = "video folder"

    def __init__(self, data_dir: str, patterns: list[str] | None = None, **kwargs: Any) -> None:
        """patterns: file-name patterns (``fnmatch``, matched case-insensitively against each file's name) of the
        videos to predict on; default the common containers (.avi .mp4 .mov .mkv .m4v .webm).

        The shared arguments are those of :class:`datamodules.base.VideoDataModule`, passed through ``kwargs``."""
        super().__init__(data_dir, **kwargs)
        self.patterns = tuple(p.lower() for p in (patterns if patterns is not None else DEFAULT_PATTERNS))
        if not self.patterns or not all(isinstance(p, str) and p for p in self.patterns):
            raise ConfigError(f"data.patterns must be a non-empty list of file-name patterns, got {patterns!r}")

    def _matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in self.patterns)

    def scan_records(self) -> list[VideoRecord]:
        paths = sorted(
            p
            for p in self.data_dir.rglob("*")
            if self._matches(p.name) and p.is_file() and ".echolab_cache" not in p.relative_to(self.data_dir).parts
        )
        if not paths:
            raise DataError(
                f"{self.data_dir}: no files matching {' '.join(self.patterns)} found (searched recursively)"
            )
        stems = Counter(p.relative_to(self.data_dir).with_suffix("").as_posix() for p in paths)
        records = []
        for path in paths:
            relative = path.relative_to(self.data_dir)
            stem = relative.with_suffix("").as_posix()
            name = stem if stems[stem] == 1 else relative.as_posix()
            records.append(VideoRecord(path=path, filename=name, split="TEST"))
        return records

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
