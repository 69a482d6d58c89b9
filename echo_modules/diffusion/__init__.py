"""Video diffusion synthesizer: SPADE-conditioned 3D UNet on the end-diastolic map, classifier-free guidance, EF
conditioning, DDPM/DDIM/DPM-Solver++ and flow-matching sampling, privacy-filtered synthetic EchoNet datasets."""

from echo_modules.diffusion.module import EchoDiffusion
from echo_modules.diffusion.networks import SpadeUNet3D

__all__ = ["EchoDiffusion", "SpadeUNet3D"]
