"""Video diffusion synthesizer: SPADE-conditioned 3D UNet on the end-diastolic map, guidance, EF conditioning."""
