"""``MaskFolderDataModule``: a folder of segmentations served file by file to ``AnatomicalVAE.predict``.

Any folder :func:`echo_modules.anatomical_vae.mask_io.find_mask_files` reads (NIfTI / MHD / PNG / NPY, e.g. a
Segmenter2D's ``predictions/`` or CAMUS ground truth): one batch per file, ``{"masks": (T, H, W) uint8 tensor,
"spacing": (row, col) mm, "file": path relative to the folder, "source": absolute path}``, so that the VAE corrects
whole sequences and writes each back in its own format. Predict only: the VAE is fitted on
:class:`echo_modules.segmentation.CamusFramesDataModule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import ConfigError
from echo_modules.anatomical_vae.mask_io import find_mask_files, read_masks


class MaskFileDataset(Dataset):
    """One item per mask file under ``root``."""

    def __init__(self, root: Path, default_spacing: tuple[float, float]) -> None:
        self.root = root
        self.files = find_mask_files(root)
        self.default_spacing = default_spacing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        masks, spacing = read_masks(path, self.default_spacing)
        return {
            "masks": torch.from_numpy(masks),
            "spacing": tuple(float(v) for v in spacing),
            "file": str(path.relative_to(self.root)),
            "source": str(path),
        }


class MaskFolderDataModule(L.LightningDataModule):
    def __init__(self, data_dir: str, default_spacing: tuple[float, float] = (1.0, 1.0), num_workers: int = 0) -> None:
        """data_dir: the folder of segmentations (searched recursively). default_spacing: (row, col) mm for files
        that carry none (PNG, NPY)."""
        super().__init__()
        self.data_dir = Path(data_dir)
        self.default_spacing = tuple(float(v) for v in default_spacing)
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        dataset = MaskFileDataset(self.data_dir, self.default_spacing)
        # batch_size None: each item is one whole file (sequences differ in length and size)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        raise ConfigError(
            "MaskFolderDataModule serves predict only: fit the AnatomicalVAE on "
            "echo_modules.segmentation.CamusFramesDataModule (configs/anatomical_vae/*.yaml)"
        )
