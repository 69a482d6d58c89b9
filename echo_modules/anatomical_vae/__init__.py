"""VAE anatomical regularizer (Painchaud et al., TMI 2020/2022): validity criteria, AR-VAE, latent bank, correction,
temporal smoothing and clinical indices from the corrected masks."""

from echo_modules.anatomical_vae.criteria import CRITERIA, CriteriaResult, CriteriaThresholds, compute_criteria
from echo_modules.anatomical_vae.indices import clinical_indices
from echo_modules.anatomical_vae.module import AnatomicalVAE

__all__ = ["CRITERIA", "AnatomicalVAE", "CriteriaResult", "CriteriaThresholds", "clinical_indices", "compute_criteria"]
