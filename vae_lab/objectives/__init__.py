"""Training objectives: how the terms of the ELBO become a loss. One class per file, one yaml
each in ``conf/objective/``."""

from vae_lab.objectives.base import ELBOTerms, Objective
from vae_lab.objectives.elbo import ELBO
from vae_lab.objectives.iwae import IWAE

__all__ = ["ELBOTerms", "Objective", "ELBO", "IWAE"]
