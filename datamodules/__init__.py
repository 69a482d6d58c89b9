"""LightningDataModules, datasets, video IO, transforms and the echo phantom."""

# importing the readers registers them with datamodules.cache by file suffix (video containers, NIfTI / MetaImage)
from datamodules import nifti, video  # noqa: F401
