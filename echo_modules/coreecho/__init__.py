"""CoReEcho: continuous (rank-contrastive) representations for EF regression, trained in two stages."""

from echo_modules.coreecho.module import CoReEcho

__all__ = ["CoReEcho"]
