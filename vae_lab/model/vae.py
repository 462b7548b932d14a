"""The LightningModule: a VAE with a pluggable likelihood p(x|z), prior p(z) and objective."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

from vae_lab.data.forms import DataForm
from vae_lab.errors import ConfigError
from vae_lab.model.epoch_means import EpochMeans
from vae_lab.model.likelihoods import Likelihood
from vae_lab.model.objectives import ELBOTerms, Objective
from vae_lab.model.objectives.estimators import sample
from vae_lab.model.posteriors import DiagonalPosterior, PosteriorFamily, pairing_problems, posterior_mean
from vae_lab.model.priors import Prior
from vae_lab.seeds import epoch_seed

METRICS = ("elbo", "reconstruction", "kl", "bpd")
#: The family of an encoder that names none: today's diagonal Gaussian head.
DIAGONAL = DiagonalPosterior(feature_size=0, latent_dim=0)


def kl_per_dim_names(stage: str, n_dims: int) -> list[str]:
    """The logged names of the KL of each latent dimension: ``<stage>/kl_per_dim/00`` ... (zero-padded,
    so that loggers and dashboards sort them in dimension order)."""
    width = len(str(n_dims - 1))
    return [f"{stage}/kl_per_dim/{dim:0{width}d}" for dim in range(n_dims)]


class VAE(L.LightningModule):
    """Variational autoencoder (Kingma & Welling 2014) trained on a chosen objective.

    ``encoder(x)`` returns q(z|x); ``decoder(z)`` returns the parameters that ``likelihood`` turns
    into p(x|z); ``prior`` is p(z). Every metric is in nats per image (summed over pixels), except
    ``bpd`` (bits per dimension, with the offset the data form requires).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        prior: Prior,
        objective: Objective,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        image_shape: tuple[int, int, int],
        seed: int = 0,
        lr_scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.image_shape = tuple(image_shape)
        self.n_dims = int(torch.Size(image_shape).numel())  # D, pixel values per image
        self.seed = seed
        self.data_form: DataForm = likelihood.data_form
        self.train_means = EpochMeans()  # the train/ metrics, logged once per epoch
        if objective.kl == "analytic" and prior.distribution() is None:
            raise ConfigError(
                f"objective.kl=analytic needs a prior with a closed-form KL against the Gaussian posterior, "
                f"and {type(prior).__name__} has none. Use objective.kl=mc (or auto), or prior=standard."
            )
        if objective.kl == "analytic" and not self.has_analytic_kl:
            raise ConfigError(
                f"objective.kl=analytic needs a Gaussian posterior (a closed-form KL), and "
                f"{type(self.posterior_family).__name__} is a flow. Use objective.kl=mc (or auto), or "
                "posterior=diagonal|full_covariance."
            )
        for problem in pairing_problems(type(self.posterior_family), type(prior), objective.needs_kl_per_dim):
            raise ConfigError(problem)
        if objective.needs_kl_per_dim and not prior.is_factorized:
            # Free bits clamp the KL of each latent dimension; a mixture or flow prior couples the
            # dimensions, so their KL does not split into per-dimension terms.
            raise ConfigError(
                f"objective.free_bits needs the KL of each latent dimension, but {type(prior).__name__} does not "
                "factorize over dimensions. Use prior=standard with free bits, or objective.capacity (a target on "
                "the total KL) with this prior."
            )

    # ------------------------------------------------------------------ the model
    @property
    def posterior_family(self) -> PosteriorFamily:
        """The family of q(z|x) the encoder builds (diagonal Gaussian for an encoder without one)."""
        family = getattr(self.encoder, "family", None)
        return DIAGONAL if family is None else family

    @property
    def has_analytic_kl(self) -> bool:
        return self.posterior_family.has_closed_form_kl and self.prior.distribution() is not None

    @property
    def kl_splits_by_dim(self) -> bool:
        """KL(q || p) = sum_j KL(q(z_j|x) || p(z_j)): both q(z|x) and p(z) factorize."""
        return self.posterior_family.is_factorized and self.prior.is_factorized

    @property
    def use_analytic_kl(self) -> bool:
        return self.objective.kl != "mc" and self.has_analytic_kl

    def posterior(self, x: torch.Tensor) -> Distribution:
        """q(z|x), from images in the served form."""
        return self.encoder(self.data_form.to_unit_interval(x))

    def observation_model(self, z: torch.Tensor) -> Distribution:
        """p(x|z), with event shape (C, H, W)."""
        return self.likelihood(self.decoder(z))

    def elbo_terms(self, x: torch.Tensor, n_samples: int) -> ELBOTerms:
        """The terms of the ELBO with ``n_samples`` reparameterized z per image (Kingma & Welling
        2014, eq. 7): the same computation the training step spells out."""
        posterior = self.posterior(x)
        z = posterior.rsample((n_samples,))
        log_prior, log_posterior = self.prior.log_prob(z), posterior.log_prob(z)
        kl, kl_per_dim = self.kl_divergence(posterior, z, log_prior, log_posterior)
        log_likelihood = self.observation_model(z).log_prob(x)
        return ELBOTerms(log_likelihood, log_prior, log_posterior, kl, kl_per_dim, z, posterior, self.use_analytic_kl)

    def kl_divergence(
        self, posterior: Distribution, z: torch.Tensor, log_prior: torch.Tensor, log_posterior: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """KL(q(z|x) || p(z)): (total [B], per latent dimension [B, Dz] or None).

        Analytic (Kingma & Welling 2014, appendix B; a full covariance through torch's registered
        closed form) when the posterior family and the prior have one and ``objective.kl`` allows it;
        otherwise the Monte Carlo estimate mean_l[log q(z_l|x) - log p(z_l)] over the samples z
        [L, B, Dz]. Split per dimension only when both q(z|x) and p(z) factorize.
        """
        if self.use_analytic_kl:
            prior = self.prior.distribution()
            if self.kl_splits_by_dim:
                per_dim = kl_divergence(posterior.base_dist, prior.base_dist)
                return per_dim.sum(-1), per_dim
            return kl_divergence(posterior, prior), None
        prior_per_dim = self.prior.log_prob_per_dim(z) if self.kl_splits_by_dim else None
        per_dim = None if prior_per_dim is None else (posterior.base_dist.log_prob(z) - prior_per_dim).mean(0)
        return (log_posterior - log_prior).mean(0), per_dim

    # ------------------------------------------------------------------ training
    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """One gradient step on the ELBO (Kingma & Welling 2014, eqs. 3 and 7):

            ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x),

        with z = mu(x) + sigma(x) * eps, eps ~ N(0, I), L = objective.n_samples samples per image
        (a plain draw, with no path to q's parameters, for objective.gradient=score_function).
        """
        posterior = self.posterior(x)  # q(z|x), by default N(mu(x), diag sigma^2(x)); vae_lab/posteriors
        z = sample(posterior, self.objective.n_samples, self.objective.gradient)  # reparameterized, [L, B, latent_dim]
        log_likelihood = self.observation_model(z).log_prob(x)  # log p(x|z), summed over pixels: [L, B]
        log_prior, log_posterior = self.prior.log_prob(z), posterior.log_prob(z)  # [L, B] each
        kl, kl_per_dim = self.kl_divergence(posterior, z, log_prior, log_posterior)  # KL(q || p): [B]
        terms = ELBOTerms(  # ELBO = E_q log p(x|z) - KL
            log_likelihood, log_prior, log_posterior, kl, kl_per_dim, z, posterior, self.use_analytic_kl
        )
        self.latest_terms = terms  # for the message of vae_lab.run.finite_guard when a term is not finite
        loss = self.objective.loss(terms, step=self.global_step, epoch=self.current_epoch)
        with torch.no_grad():
            self.train_means.add({**self.metric_values(terms), "loss": loss.expand(x.shape[0])})
        return loss

    def on_train_epoch_start(self) -> None:
        # The epoch's noise (reparameterization) is a function of (seed, epoch, rank) only, so a run
        # resumed from an epoch-end checkpoint draws exactly what the uninterrupted run drew.
        torch.manual_seed(epoch_seed(self.seed, self.current_epoch, self.global_rank))
        self.train_means.reset()
        self.likelihood.train_epoch_started()
        for name, value in self.objective.logged_values(self.global_step, self.current_epoch).items():
            self.log(f"train/{name}", float(value), on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit":  # the training batches of this epoch are done
            self.likelihood.train_epoch_finished()

    def on_train_epoch_end(self) -> None:
        self.likelihood.train_epoch_finished()  # a no-op when validation already finished the epoch
        for name, value in self.train_means.means().items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True, prog_bar=name == "loss")

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        terms = self.elbo_terms(x, n_samples=1)
        self.log_terms("val", terms)
        if terms.kl_per_dim is not None:
            # The KL of each latent dimension (nats), averaged over the validation images: shows which
            # dimensions the model uses (free bits, warm-up and capacity move these).
            names = kl_per_dim_names("val", terms.kl_per_dim.shape[-1])
            for name, value in zip(names, terms.kl_per_dim.mean(0), strict=True):
                self.log(name, value, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    def test_step(self, x: torch.Tensor, batch_idx: int) -> None:
        self.log_terms("test", self.elbo_terms(x, n_samples=1))

    def metric_values(self, terms: ELBOTerms) -> dict[str, torch.Tensor]:
        """elbo, reconstruction, kl (nats per image) and bpd, one value per image."""
        elbo = terms.elbo
        return {
            "elbo": elbo,
            "reconstruction": terms.reconstruction,
            "kl": terms.kl,
            "bpd": self.data_form.bits_per_dim(-elbo, self.n_dims),
        }

    def log_terms(self, stage: str, terms: ELBOTerms) -> None:
        """Log the metric values averaged over images and ranks."""
        for name, value in self.metric_values(terms).items():
            self.log(
                f"{stage}/{name}",
                value.mean(),
                on_step=False,
                on_epoch=True,
                batch_size=value.shape[0],
                sync_dist=True,
                prog_bar=stage == "val" and name in ("elbo", "kl"),  # with train/loss, on the progress bar
            )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] at z = the posterior mean (a sample mean where q(z|x) has no closed form), on the [0, 1] scale."""
        return self.likelihood.mean_image(self.observation_model(posterior_mean(self.posterior(x))))

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """E[x|z] for n draws z ~ p(z), on the [0, 1] scale."""
        return self.likelihood.mean_image(self.observation_model(self.prior.sample(n)))
