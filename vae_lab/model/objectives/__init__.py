"""Training objectives: how the terms of the ELBO become a loss. One class per file, one yaml
each in ``conf/objective/``."""

from vae_lab.model.objectives.base import ELBOTerms, Objective
from vae_lab.model.objectives.elbo import ELBO
from vae_lab.model.objectives.estimators import GRADIENTS
from vae_lab.model.objectives.iwae import CIWAE, IWAE, MIWAE, PIWAE

__all__ = ["ELBOTerms", "Objective", "ELBO", "IWAE", "MIWAE", "PIWAE", "CIWAE", "GRADIENTS"]
