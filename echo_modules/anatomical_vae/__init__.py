"""VAE anatomical regularizer (Painchaud et al., TMI 2020/2022): validity criteria, AR-VAE, latent bank, correction,
temporal smoothing and clinical indices from the corrected masks."""

from echo_modules.anatomical_vae.criteria import CRITERIA, CriteriaResult, CriteriaThresholds, compute_criteria

__all__ = ["CRITERIA", "CriteriaResult", "CriteriaThresholds", "compute_criteria"]
