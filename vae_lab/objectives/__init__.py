"""Training objectives: how the terms of the ELBO become a loss. One class per file, one yaml
each in ``conf/objective/``."""

from vae_lab.objectives.base import ELBOTerms, Objective
from vae_lab.objectives.elbo import ELBO
from vae_lab.objectives.estimators import GRADIENTS
from vae_lab.objectives.iwae import CIWAE, IWAE, MIWAE, PIWAE

__all__ = ["ELBOTerms", "Objective", "ELBO", "IWAE", "MIWAE", "PIWAE", "CIWAE", "GRADIENTS"]
