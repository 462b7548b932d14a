"""The terms of the ELBO for one batch, and the interface of an objective built from them."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch.distributions import Distribution

from vae_lab.errors import ConfigError
from vae_lab.model.objectives.estimators import GRADIENTS, Gradient, direct_log_prob
from vae_lab.ranges import at_least, checked, one_of

KL_MODES = ("auto", "analytic", "mc")
#: ``objective.kl``: one of :data:`KL_MODES`.
KLMode = Annotated[str, one_of(KL_MODES)]
#: A number of samples of z per image (``objective.n_samples``, ``objective.k``, ``objective.m``).
SampleCount = Annotated[int, at_least(1, "samples of z per image")]
__all__ = ["ELBOTerms", "Objective", "KL_MODES", "GRADIENTS", "Gradient", "KLMode", "SampleCount"]


@dataclass
class ELBOTerms:
    """Everything the ELBO and its variants need, for L samples z_l ~ q(z|x) per image.

    All values are in nats per image, summed over pixels (and latent dimensions).
    """

    #: log p(x|z_l), shape [L, B].
    log_likelihood: torch.Tensor
    #: log p(z_l), shape [L, B].
    log_prior: torch.Tensor
    #: log q(z_l|x), shape [L, B].
    log_posterior: torch.Tensor
    #: KL(q(z|x) || p(z)), analytic or the Monte Carlo mean over the L samples, shape [B].
    kl: torch.Tensor
    #: The KL of each latent dimension when the prior factorizes, shape [B, latent_dim]; else None.
    kl_per_dim: torch.Tensor | None = None
    #: The samples z_l [L, B, ...] and q(z|x) they came from (the gradient estimators need them), and
    #: whether ``kl`` is the analytic KL (else the Monte Carlo mean of log q - log p).
    z: torch.Tensor | None = None
    posterior: Distribution | None = None
    analytic_kl: bool = False

    def direct_log_posterior(self) -> torch.Tensor:
        """The score part of log q(z_l|x): value 0, gradient d log q / d(q's parameters) at fixed z, [L, B]."""
        if self.z is None or self.posterior is None:
            raise ValueError("ELBOTerms.direct_log_posterior needs the samples z and the posterior they came from.")
        return direct_log_prob(self.posterior, self.z)

    @property
    def reconstruction(self) -> torch.Tensor:
        """E_q(z|x)[log p(x|z)], estimated by the mean over the L samples, shape [B]."""
        return self.log_likelihood.mean(0)

    @property
    def elbo(self) -> torch.Tensor:
        """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), shape [B] (Kingma & Welling 2014, eq. 3)."""
        return self.reconstruction - self.kl

    @property
    def log_weights(self) -> torch.Tensor:
        """Importance log-weights log p(x, z_l) - log q(z_l|x), shape [L, B] (Burda et al. 2016, eq. 8)."""
        return self.log_likelihood + self.log_prior - self.log_posterior

    def importance_weighted_bound(self) -> torch.Tensor:
        """L_k = log (1/k) sum_l w_l with k = L (Burda et al. 2016, eq. 8), shape [B]."""
        return torch.logsumexp(self.log_weights, dim=0) - math.log(self.log_weights.shape[0])


class Objective(abc.ABC):
    """Turns :class:`ELBOTerms` into the scalar loss that training minimises.

    ``n_samples`` is how many z the training step draws per image; ``kl`` chooses the analytic KL
    (``analytic``), the Monte Carlo estimate log q(z|x) - log p(z) (``mc``), or analytic when the
    prior allows it (``auto``). ``gradient`` is the estimator of the bound's gradient
    (:mod:`vae_lab.model.objectives.estimators`); each objective lists in ``refused_gradients`` the ones that
    do not apply to it, with the reason, and they are refused here, at start-up.
    """

    #: gradient -> why this objective refuses it (and what to use instead).
    refused_gradients: dict[str, str] = {}

    @checked("objective")
    def __init__(
        self, n_samples: SampleCount = 1, kl: KLMode = "auto", gradient: Gradient = "reparameterization"
    ) -> None:
        if gradient in self.refused_gradients:
            raise ConfigError(
                f"objective.gradient={gradient} does not apply to {type(self).__name__}: "
                f"{self.refused_gradients[gradient]}"
            )
        self.n_samples = n_samples
        self.kl = kl
        self.gradient = gradient

    @abc.abstractmethod
    def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        """The scalar to minimise for this batch, at this global step and epoch."""

    @property
    def needs_kl_per_dim(self) -> bool:
        """True when the loss uses ``ELBOTerms.kl_per_dim`` (which only a factorized prior gives)."""
        return False

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        """Schedule values worth logging (for example the current KL weight)."""
        return {}
