"""The (beta-weighted) ELBO estimated with L reparameterized samples per image, with the KL-term
options: linear warm-up, free bits and capacity annealing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Annotated, Any

import torch

from vae_lab.errors import ConfigError
from vae_lab.model.objectives.base import ELBOTerms, KLMode, Objective, SampleCount
from vae_lab.model.objectives.estimators import Gradient, ScoreBaseline
from vae_lab.model.objectives.free_bits import free_bits_kl
from vae_lab.model.objectives.schedules import DEFAULT_CAPACITY_GAMMA, CapacitySchedule, KLWarmup
from vae_lab.ranges import at_least, checked

__all__ = ["ELBO", "DEFAULT_CAPACITY_GAMMA"]


class ELBO(Objective):
    """loss = -mean_batch( (1/L) sum_l log p(x|z_l) - beta_t * KL(q(z|x) || p(z)) ).

    With kl_weight = 1 this is the SGVB estimator of Kingma & Welling (2014, eq. 7); kl_weight = beta
    gives the beta-VAE objective (Higgins et al. 2017, eq. 4). Options of the KL term:

    - ``warmup`` (``{steps: N}`` or ``{epochs: N}``): beta_t = kl_weight * min(t / N, 1), linear KL
      warm-up (Sonderby et al. 2016).
    - ``free_bits`` (lambda, nats): the KL term becomes sum_j max(lambda, mean_batch KL_j)
      (Kingma et al. 2016, eq. 15). Needs a prior that factorizes over latent dimensions (per-dimension
      KL); :class:`vae_lab.model.vae.VAE` refuses it with any other prior.
    - ``capacity`` (``{max: C_max, steps: N, gamma: gamma}``): the KL term becomes
      gamma * |KL(q(z|x) || p(z)) - C_t| for each image, C_t rising linearly from 0 to C_max over N
      steps (Burgess et al. 2018; per data point as the paper writes it, then averaged over the
      batch, where some implementations take |batch-mean KL - C|). gamma takes the place of
      kl_weight, so capacity is refused together with warm-up, free bits or kl_weight != 1.

    ``gradient`` (:mod:`vae_lab.model.objectives.estimators`): ``reparameterization``; ``stl`` (needs the Monte
    Carlo KL: ``kl=auto`` becomes ``mc``, ``kl=analytic`` is refused, as are free bits, whose per-dimension
    KL it does not cover); ``score_function`` (the learning signal of z_l is log p(x|z_l) - beta_t *
    (log q(z_l|x) - log p(z_l)), without the KL part when the KL is analytic; not with free bits or
    capacity, whose KL term is not an expectation over z). ``dreg`` is refused: with one sample per term
    its weights are all 1 and it is ``stl``.
    """

    refused_gradients = {
        "dreg": "the ELBO has one importance weight per term, where DReG is exactly STL; use objective.gradient=stl."
    }

    @checked("objective")
    def __init__(
        self,
        n_samples: SampleCount = 1,
        kl_weight: Annotated[float, at_least(0, "it is beta, the weight of the KL")] = 1.0,
        kl: KLMode = "auto",
        warmup: KLWarmup | Mapping[str, Any] | None = None,
        free_bits: Annotated[float | None, at_least(0, "nats per latent dimension, or null for off")] = None,
        capacity: CapacitySchedule | Mapping[str, Any] | None = None,
        gradient: Gradient = "reparameterization",
    ) -> None:
        super().__init__(n_samples=n_samples, kl=kl, gradient=gradient)
        self.kl_weight = kl_weight
        self.warmup = warmup if isinstance(warmup, KLWarmup) else KLWarmup(**(warmup or {}))
        self.free_bits = free_bits
        if not isinstance(capacity, CapacitySchedule):
            unknown = sorted(set(capacity or {}) - {field.name for field in fields(CapacitySchedule)})
            if unknown:
                raise ConfigError(f"objective.capacity has unknown keys {unknown}; use max, steps and gamma.")
            capacity = CapacitySchedule(**(capacity or {}))
        self.capacity_gamma = capacity.gamma
        self.capacity = None if capacity.max is None else capacity
        if self.capacity is not None:
            self._check_capacity_alone()
        self._check_gradient_options()
        self.baseline = ScoreBaseline()

    def _check_gradient_options(self) -> None:
        if self.gradient == "stl":
            if self.kl == "analytic":
                raise ConfigError(
                    "objective.gradient=stl drops the score term of log q(z|x) from a Monte Carlo KL, and "
                    "objective.kl=analytic has none; use objective.kl=mc (or auto), or gradient=reparameterization."
                )
            self.kl = "mc"
            if self.free_bits is not None:
                raise ConfigError(
                    "objective.gradient=stl does not cover the per-dimension KL of objective.free_bits; "
                    "use gradient=reparameterization with free bits."
                )
        if self.gradient == "score_function" and (self.free_bits is not None or self.capacity is not None):
            raise ConfigError(
                "objective.gradient=score_function needs a KL term that is an expectation over z; objective.free_bits "
                "and objective.capacity are not. Use gradient=reparameterization with them."
            )

    def _check_capacity_alone(self) -> None:
        clashes = [
            name
            for name, clash in (
                ("objective.warmup", self.warmup.enabled),
                ("objective.free_bits", self.free_bits is not None),
                (f"objective.kl_weight={self.kl_weight}", self.kl_weight != 1.0),
            )
            if clash
        ]
        if clashes:
            raise ConfigError(
                f"objective.capacity replaces the KL weight by gamma * |KL - C|, so it does not combine with "
                f"{', '.join(clashes)}. Use one KL schedule at a time (capacity.gamma sets the weight)."
            )

    @property
    def needs_kl_per_dim(self) -> bool:
        return self.free_bits is not None

    def current_kl_weight(self, step: int, epoch: int) -> float:
        """beta_t = kl_weight times the warm-up factor at this step and epoch."""
        return self.kl_weight * self.warmup.factor(step, epoch)

    def kl_penalty(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        """The KL part of the loss, a scalar."""
        if self.capacity is not None:
            return self.capacity_gamma * (terms.kl - self.capacity(step)).abs().mean()
        if self.free_bits is not None:
            if terms.kl_per_dim is None:
                raise ConfigError(
                    "objective.free_bits needs the KL of each latent dimension, which this prior does not give; "
                    "use prior=standard, or objective.capacity instead of free bits."
                )
            kl = free_bits_kl(terms.kl_per_dim, self.free_bits)
        else:
            kl = terms.kl.mean()
        return self.current_kl_weight(step, epoch) * kl

    def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        if self.gradient == "stl":  # same value; log q keeps only its gradient through z
            terms = replace(terms, kl=terms.kl - terms.direct_log_posterior().mean(0))
        loss = -terms.reconstruction.mean() + self.kl_penalty(terms, step, epoch)
        if self.gradient == "score_function":  # z carries no path: the encoder learns from (f - b) grad log q
            signal = terms.log_likelihood
            if not terms.analytic_kl:
                signal = signal - self.current_kl_weight(step, epoch) * (terms.log_posterior - terms.log_prior)
            loss = loss - (self.baseline.center(signal) * terms.log_posterior).mean()
        return loss

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        if self.capacity is not None:
            return {"capacity": self.capacity(step), "capacity_gamma": self.capacity_gamma}
        values = {"kl_weight": self.current_kl_weight(step, epoch)}
        if self.free_bits is not None:
            values["free_bits"] = self.free_bits
        return values
