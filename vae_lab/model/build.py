"""Assemble a data module and a VAE from a composed config: the one place that knows how the
config groups fit together (train, evaluate and the tests all build through here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vae_lab.data import ImageDataModule
from vae_lab.errors import VaeLabError
from vae_lab.model.initialization import initialize_output_bias
from vae_lab.model.likelihoods import Likelihood
from vae_lab.model.posteriors import PosteriorFamily
from vae_lab.model.vae import VAE


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that our own errors (a VaeLabError raised by a constructor,
    e.g. missing data or an impossible pair) come out unwrapped, so the CLI prints their message."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, VaeLabError):
            raise cause from None
        raise


def build_likelihood(cfg: DictConfig, channels: int) -> Likelihood:
    return instantiate(cfg.likelihood, channels=channels)


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """The data module, serving the form of pixels the chosen likelihood models.

    The likelihood's class declares the form, so an impossible pair (a Bernoulli likelihood on grey
    pixels) is refused here, before anything is loaded; then the files are fetched and verified.
    """
    from hydra.utils import get_class

    data_form = get_class(cfg.likelihood._target_).data_form
    datamodule = instantiate(cfg.data, data_form=data_form)
    datamodule.prepare_data()  # fetched (data.download=true) and verified before anything reads or trains
    return datamodule


def build_posterior(cfg: DictConfig) -> Callable[..., PosteriorFamily] | None:
    """The posterior family's constructor (the encoder calls it with its feature size and latent_dim);
    None, the diagonal Gaussian, for a config from before the ``posterior`` group."""
    return instantiate(cfg.posterior, _partial_=True) if cfg.get("posterior") else None


def build_networks(cfg: DictConfig, image_shape: tuple[int, int, int]) -> tuple[Likelihood, Any, Any]:
    """(likelihood, encoder, decoder) for images of ``image_shape``: the decoder emits the
    likelihood's parameters for every pixel. (vae_lab.run.machine_checks builds them on the meta device
    to size a run before it starts.)"""
    latent_dim = cfg.model.latent_dim
    likelihood = build_likelihood(cfg, channels=image_shape[0])
    encoder = instantiate(
        cfg.model.encoder, image_shape=image_shape, latent_dim=latent_dim, posterior=build_posterior(cfg)
    )
    decoder = instantiate(
        cfg.model.decoder,
        image_shape=image_shape,
        latent_dim=latent_dim,
        out_channels=likelihood.parameters_per_channel * image_shape[0],
    )
    return likelihood, encoder, decoder


def build_model(cfg: DictConfig, datamodule: ImageDataModule) -> VAE:
    """The VAE for this config; every shape comes from the data module."""
    image_shape = datamodule.image_shape
    latent_dim = cfg.model.latent_dim
    likelihood, encoder, decoder = build_networks(cfg, image_shape)
    initialize_output_bias(cfg.model.get("initialize_output_bias", "auto"), decoder, likelihood, datamodule)
    prior = instantiate(cfg.prior, latent_dim=latent_dim, encoder=encoder, datamodule=datamodule)
    return VAE(
        encoder=encoder,
        decoder=decoder,
        likelihood=likelihood,
        prior=prior,
        objective=instantiate(cfg.objective),
        optimizer=instantiate(cfg.optimizer),
        image_shape=image_shape,
        seed=cfg.seed,
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
    )
