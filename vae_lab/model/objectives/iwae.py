"""Importance-weighted bounds as training objectives: the IWAE bound L_k (Burda, Grosse & Salakhutdinov
2016, "Importance Weighted Autoencoders", eq. 8) and the tighter-bound variants of Rainforth, Kosiorek,
Le, Maddison, Igl, Wood & Teh (2018, "Tighter Variational Bounds are Not Necessarily Better"): MIWAE,
PIWAE and CIWAE."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from vae_lab.model.objectives.base import ELBOTerms, KLMode, Objective, SampleCount
from vae_lab.model.objectives.estimators import Gradient, ScoreBaseline, reweighted_log_weights
from vae_lab.ranges import checked, in_interval

STL_IS_BIASED = (
    "sticking the landing is biased for importance-weighted bounds with k > 1 (Tucker et al. 2019, section 3); "
    "use objective.gradient=dreg, its unbiased counterpart."
)


def normalized_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """log w~_l = log w_l - logsumexp_l log w_l along the samples (dim 0)."""
    return log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)


class ImportanceWeighted(Objective):
    """An objective that is a function of the log-weights log w_l = log p(x, z_l) - log q(z_l|x) alone.

    Subclasses give :meth:`bound` (the value trained on, whose gradient the decoder gets) and, for the
    estimators whose encoder gradient differs from the reparameterized gradient of that bound,
    :meth:`encoder_ratios`. ``kl`` only chooses how the logged KL is computed.
    """

    refused_gradients = {"stl": STL_IS_BIASED}

    def __init__(self, n_samples: int, kl: str = "auto", gradient: str = "reparameterization") -> None:
        super().__init__(n_samples=n_samples, kl=kl, gradient=gradient)
        self.baseline = ScoreBaseline()

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        """The bound of each image from log-weights [L, B], shape [B]."""
        raise NotImplementedError

    def encoder_ratios(self, log_weights: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        """(path ratio [L, B] or None, score-term ratio) from detached log-weights: the factors that turn the
        gradient coefficients a_l of :meth:`bound` into the encoder's (see ``reweighted_log_weights``).
        Here: DReG for a bound whose DReG coefficients :meth:`dreg_coefficients` gives, else unchanged."""
        if self.gradient != "dreg":
            return None, 1.0
        coefficients = torch.func.grad(lambda lw: self.bound(lw).sum())(log_weights)
        ratio = self.dreg_coefficients(log_weights) / coefficients
        return torch.where(coefficients > 0, ratio, torch.zeros_like(ratio)), 0.0

    def dreg_coefficients(self, log_weights: torch.Tensor) -> torch.Tensor:
        """DReG's coefficients of the path gradients d log w_l / d z_l for the encoder, [L, B]."""
        raise NotImplementedError

    def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        if self.gradient == "score_function":  # z carries no path: the encoder learns from (f - b) grad log q
            bound = self.bound(terms.log_weights)
            return -(bound + self.baseline.center(bound) * terms.log_posterior.sum(0)).mean()
        path_ratio, direct_ratio = self.encoder_ratios(terms.log_weights.detach())
        if path_ratio is None and direct_ratio == 1.0:
            return -self.bound(terms.log_weights).mean()
        direct = terms.direct_log_posterior()
        log_weights = reweighted_log_weights(
            terms.log_likelihood, terms.log_prior, terms.log_posterior, direct, terms.z, path_ratio, direct_ratio
        )
        return -self.bound(log_weights).mean()


class IWAE(ImportanceWeighted):
    """loss = -mean_batch L_k(x), L_k(x) = log (1/k) sum_{i=1..k} p(x, z_i) / q(z_i|x), z_i ~ q(z|x).

    The k samples are reparameterized and the loss is the bound itself (one logsumexp over the k
    log-weights), so autograd gives the IWAE gradient of Burda et al. (2016, section 3): the
    gradients of the k log-weights, weighted by the normalized importance weights. L_1 is the ELBO;
    L_k <= L_{k+1} <= log p(x) in expectation (their Theorem 1). ``kl`` only chooses how the
    logged KL is computed; the bound does not use it. ``gradient=dreg``: the encoder's gradient is
    sum_i w~_i^2 d log w_i / d z_i d z_i / d phi (Tucker et al. 2019, eq. 6).
    """

    @checked("objective")
    def __init__(self, k: SampleCount = 5, kl: KLMode = "auto", gradient: Gradient = "reparameterization") -> None:
        super().__init__(n_samples=k, kl=kl, gradient=gradient)
        self.k = k

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])

    def dreg_coefficients(self, log_weights: torch.Tensor) -> torch.Tensor:
        return normalized_log_weights(log_weights).exp().square()

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        return {"k": float(self.k)}


class MIWAE(ImportanceWeighted):
    """loss = -mean_batch (1/M) sum_m L_k^(m)(x): the mean of M independent IWAE bounds of k samples each
    (Rainforth et al. 2018, section 4), M * k samples per image. M = 1 is the IWAE, k = 1 the ELBO with M
    samples. Between them it trades the bound's tightness (k) against the encoder's gradient signal-to-noise
    ratio, which falls like 1/sqrt(k) and rises like sqrt(M)."""

    @checked("objective")
    def __init__(
        self, m: SampleCount = 4, k: SampleCount = 4, kl: KLMode = "auto", gradient: Gradient = "reparameterization"
    ) -> None:
        super().__init__(n_samples=m * k, kl=kl, gradient=gradient)
        self.m, self.k = m, k

    def groups(self, log_weights: torch.Tensor) -> torch.Tensor:
        """[M * k, B] -> [k, M, B]: sample m * k + i is the i-th of group m."""
        return log_weights.reshape(self.m, self.k, *log_weights.shape[1:]).transpose(0, 1)

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(self.groups(log_weights), dim=0) - math.log(self.k)).mean(0)

    def dreg_coefficients(self, log_weights: torch.Tensor) -> torch.Tensor:
        within_group = normalized_log_weights(self.groups(log_weights)).exp().square() / self.m
        return within_group.transpose(0, 1).reshape(log_weights.shape)

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        return {"m": float(self.m), "k": float(self.k)}


class PIWAE(MIWAE):
    """The decoder trains on the IWAE bound of all M * k samples, the encoder on the MIWAE bound of the same
    samples (Rainforth et al. 2018, section 4, "PIWAE"), in one backward pass.

    The loss is -IWAE_{Mk}; the gradient reaching z and the score term of log q are rescaled per sample by
    d_l / a_l, a_l = w~_l (the IWAE's coefficient of log w_l) and d_l the MIWAE's (w~_{l|m} / M, or, with
    ``gradient=dreg``, w~_{l|m}^2 / M with no score term), computed in log space. The score function is
    refused: PIWAE is defined by its reparameterized gradients.
    """

    refused_gradients = {
        "stl": STL_IS_BIASED,
        "score_function": "PIWAE splits the reparameterized gradients of two bounds between encoder and decoder; "
        "use objective=miwae or iwae with the score function.",
    }

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])

    def encoder_ratios(self, log_weights: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        log_iwae = normalized_log_weights(log_weights)  # log a_l
        log_group = normalized_log_weights(self.groups(log_weights)).transpose(0, 1).reshape(log_weights.shape)
        if self.gradient == "dreg":
            return (2 * log_group - math.log(self.m) - log_iwae).exp(), 0.0
        ratio = (log_group - math.log(self.m) - log_iwae).exp()
        return ratio, ratio


class CIWAE(ImportanceWeighted):
    """loss = -mean_batch [ f * ELBO_k(x) + (1 - f) * L_k(x) ], ELBO_k = (1/k) sum_i log w_i the k-sample
    ELBO and L_k the IWAE bound of the same samples (Rainforth et al. 2018, section 4, "CIWAE"; their beta).
    f is ``elbo_fraction`` in [0, 1]; beta is the KL weight elsewhere in vae_lab. f = 1 is the ELBO, f = 0
    the IWAE. With ``gradient=dreg`` the ELBO part's encoder gradient is STL's and the IWAE part's DReG's."""

    @checked("objective")
    def __init__(
        self,
        k: SampleCount = 5,
        elbo_fraction: Annotated[float, in_interval(0, 1, "the ELBO's share")] = 0.5,
        kl: KLMode = "auto",
        gradient: Gradient = "reparameterization",
    ) -> None:
        super().__init__(n_samples=k, kl=kl, gradient=gradient)
        self.k, self.elbo_fraction = k, float(elbo_fraction)

    def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
        iwae = torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])
        return self.elbo_fraction * log_weights.mean(0) + (1 - self.elbo_fraction) * iwae

    def dreg_coefficients(self, log_weights: torch.Tensor) -> torch.Tensor:
        weights = normalized_log_weights(log_weights).exp()
        return self.elbo_fraction / log_weights.shape[0] + (1 - self.elbo_fraction) * weights.square()

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        return {"k": float(self.k), "elbo_fraction": self.elbo_fraction}
