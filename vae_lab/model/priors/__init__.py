"""Priors p(z): modules with ``log_prob`` and ``sample``. One class per file, one yaml each in
``conf/prior/``."""

from vae_lab.model.priors.base import Prior
from vae_lab.model.priors.flow import FlowPrior
from vae_lab.model.priors.mixture_of_gaussians import MixtureOfGaussiansPrior
from vae_lab.model.priors.standard import StandardNormalPrior
from vae_lab.model.priors.vamp import VampPrior

__all__ = ["Prior", "FlowPrior", "MixtureOfGaussiansPrior", "StandardNormalPrior", "VampPrior"]
