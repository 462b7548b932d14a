"""Priors p(z): modules with ``log_prob`` and ``sample``. One class per file, one yaml each in
``conf/prior/``."""

from vae_lab.priors.base import Prior
from vae_lab.priors.standard import StandardNormalPrior

__all__ = ["Prior", "StandardNormalPrior"]
