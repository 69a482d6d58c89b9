"""LightningDataModules, datasets, video IO, transforms and the echo phantom."""
