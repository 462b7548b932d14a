"""The interface every posterior family q(z|x) implements, and the helpers that read any of them.

The encoder network computes features h(x) and the diagonal base N(mu(x), diag sigma^2(x)) (its
Gaussian head, vae_lab/model/networks/base.py); the family turns them into q(z|x), a
``torch.distributions.Distribution`` over R^latent_dim with ``rsample`` and ``log_prob``. A family
declares what the maths allows it, so that the model and the config checks can refuse what it cannot
do (vae_lab/model/posteriors/__init__.py lists the families).
"""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, TransformedDistribution

#: Samples of z per image behind E_q[z] and the marginal standard deviations of a q(z|x) that has no
#: closed-form moments (a flow): the standard error of the mean is sd / sqrt(1000), 3% of a sd.
MOMENT_SAMPLES = 1000


class PosteriorFamily(nn.Module, abc.ABC):
    """q(z|x) from the encoder's features ``h`` ``[B, feature_size]`` and its diagonal base
    ``loc``, ``scale`` ``[B, latent_dim]``.

    Built by the encoder (after its own layers) with ``feature_size`` and ``latent_dim``; any extra
    outputs the family needs (a Cholesky factor, flow parameters, a context) are its own layers on h.
    """

    #: q(z|x) = prod_j q(z_j|x): the KL splits into one term per latent dimension (free bits).
    is_factorized: bool = False
    #: KL(q || p) has a closed form when p is a Gaussian with one (``Prior.distribution()``).
    has_closed_form_kl: bool = False
    #: log q(z|x) at any z in one pass (not only at z drawn from q): the VampPrior needs it.
    has_density_anywhere: bool = True
    #: q(z|x) is Gaussian: E_q[z] and the marginal variances are exact (else estimated from samples).
    is_gaussian: bool = True
    #: log q(z|x) at a z other than the tensor q just drew (a detached copy, as the STL, DReG, PIWAE and
    #: score-function estimators need), at whatever cost.
    has_log_prob_at_other_z: bool = True

    def __init__(self, feature_size: int, latent_dim: int) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.latent_dim = latent_dim

    @abc.abstractmethod
    def forward(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """q(z|x) with batch shape ``[B]`` and event shape ``(latent_dim,)``."""

    @classmethod
    def why_not_density_anywhere(cls) -> str:
        """Why log q(z|x) at an arbitrary z is out of reach (for the refusal of the VampPrior)."""
        return ""


def diagonal_base(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """N(loc, diag scale^2) with event shape (latent_dim,): today's q(z|x), and the base of the flows."""
    return Independent(Normal(loc, scale, validate_args=False), 1)


def has_closed_form_moments(posterior: Distribution) -> bool:
    """True for a Gaussian q(z|x) (diagonal or full covariance), whose mean and marginal variances are exact."""
    return isinstance(posterior, MultivariateNormal) or (
        isinstance(posterior, Independent) and isinstance(posterior.base_dist, Normal)
    )


def latent_dtype(posterior: Distribution) -> torch.dtype:
    """The dtype of z ~ q(z|x) (float32 at least, vae_lab/model/precision.py), without drawing."""
    while isinstance(posterior, TransformedDistribution):
        posterior = posterior.base_dist
    return posterior.mean.dtype


def posterior_moments(
    posterior: Distribution, n_samples: int = MOMENT_SAMPLES
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(E_q[z], the standard deviation of each z_j, the samples used): exact for a Gaussian q(z|x)
    (0 samples), else the mean and standard deviation of ``n_samples`` draws per image."""
    if has_closed_form_moments(posterior):
        return posterior.mean, posterior.stddev, 0
    samples = posterior.sample((n_samples,))
    return samples.mean(0), samples.std(0), n_samples


def posterior_mean(posterior: Distribution, n_samples: int = MOMENT_SAMPLES) -> torch.Tensor:
    """E_q[z] ``[B, latent_dim]``: exact where q(z|x) has a closed form, else a sample mean
    (:func:`posterior_moments`)."""
    return posterior_moments(posterior, n_samples)[0]


def pairing_problems(family: type, prior: type, free_bits: bool) -> list[str]:
    """Why the maths refuses this posterior family with this prior class (and free bits); empty when
    it allows them. Called by the config check at start-up and by the model when it is built."""
    problems = []
    if getattr(prior, "evaluates_posterior_anywhere", False) and not getattr(family, "has_density_anywhere", True):
        problems.append(
            f"{family.__name__} does not combine with {prior.__name__}: the prior is a mixture of q(z|u_k) over its "
            f"pseudo-inputs, evaluated at every z, and {family.why_not_density_anywhere()}. Use "
            "posterior=diagonal or posterior=full_covariance with this prior, or another prior."
        )
    if free_bits and not getattr(family, "is_factorized", True):
        problems.append(
            f"objective.free_bits needs the KL of each latent dimension, but {family.__name__} does not factorize "
            "over dimensions. Use posterior=diagonal with free bits, or objective.capacity (a target on the total KL)."
        )
    return problems


#: The gradient estimators that evaluate log q(z|x) at a detached copy of z (vae_lab.model.objectives.estimators).
ESTIMATORS_WITH_DETACHED_LOG_PROB = ("stl", "dreg", "score_function")


def estimator_problems(family: type, gradient: str, reweights_score: bool) -> list[str]:
    """Why this posterior family cannot serve ``objective.gradient=gradient`` (``reweights_score``: an
    objective, PIWAE, that reweights the score term of log q whatever the estimator); empty when it can."""
    if getattr(family, "has_log_prob_at_other_z", True):
        return []
    if gradient not in ESTIMATORS_WITH_DETACHED_LOG_PROB and not reweights_score:
        return []
    what = "objective=piwae" if reweights_score else f"objective.gradient={gradient}"
    return [
        f"{family.__name__} does not combine with {what}: that estimator evaluates log q(z|x) at a detached "
        f"copy of z, and {family.why_not_density_anywhere()}. Use objective.gradient=reparameterization "
        "with this posterior, or posterior=iaf / full_covariance / diagonal."
    ]
