"""Blocks shared by the methods: video backbones, EF metrics, the resumable module base, plotting helpers."""

from echo_modules.common.backbones import R2Plus1D18, TinyVideoEncoder, VideoEncoder
from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import EchoModule, average_clip_predictions
from echo_modules.common.uniformer import UniFormer

__all__ = [
    "EchoModule",
    "R2Plus1D18",
    "TinyVideoEncoder",
    "UniFormer",
    "VideoEncoder",
    "average_clip_predictions",
    "ef_metrics",
]
