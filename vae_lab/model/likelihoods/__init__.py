"""Likelihood families p(x|z): each turns decoder output into a ``torch.distributions`` object.

One class per file; each has a yaml file of the same name in ``conf/likelihood/``.
"""

from vae_lab.model.likelihoods.base import Likelihood
from vae_lab.model.likelihoods.bernoulli import BernoulliLikelihood
from vae_lab.model.likelihoods.categorical import CategoricalLikelihood
from vae_lab.model.likelihoods.continuous_bernoulli import ContinuousBernoulliLikelihood
from vae_lab.model.likelihoods.discretized_logistic import DiscretizedLogisticLikelihood
from vae_lab.model.likelihoods.gaussian import GaussianLikelihood
from vae_lab.model.likelihoods.laplace import LaplaceLikelihood

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
]
