"""2D segmentation of LV cavity / myocardium / left atrium (``Segmenter2D``) and the frame-level CAMUS data it uses."""

from echo_modules.segmentation.data import CamusFramesDataModule, CamusSequence, load_camus_sequences
from echo_modules.segmentation.module import Segmenter2D
from echo_modules.segmentation.networks import TimmUNet2D, UNet2D

__all__ = ["CamusFramesDataModule", "CamusSequence", "Segmenter2D", "TimmUNet2D", "UNet2D", "load_camus_sequences"]
