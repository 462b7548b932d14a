"""The VampPrior: a mixture of variational posteriors at learned pseudo-inputs (Tomczak & Welling
2018, "VAE with a VampPrior", eq. 9)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vae_lab.errors import ConfigError
from vae_lab.model.priors.base import Prior, diagonal_gaussian_mixture_log_prob
from vae_lab.ranges import at_least, checked, one_of

PSEUDO_INPUT_INITS = ("data", "random")

#: Pseudo-inputs live on sigmoid(logits); initial values are kept this far inside (0, 1).
EDGE = 1e-2


class VampPrior(Prior):
    """p(z) = 1/K sum_k q(z | u_k) (Tomczak & Welling 2018, eq. 9).

    The K pseudo-inputs u_k are images on the [0, 1] scale the encoder sees, learned with the rest
    of the model through u_k = sigmoid(a_k) (the paper's code bounds them with a hardtanh instead,
    whose gradient vanishes on pixels that start at exactly 0 or 1). ``q(.|u_k)`` is the model's own
    encoder, so the prior moves with it. ``init=data`` starts u_k at K training images drawn at
    random (with the run's seed) in the form the data module serves them; ``init=random`` starts
    every pixel at N(random_mean, random_std^2), the initialisation of the paper's code.

    Sampling picks k uniformly and then draws z ~ q(z | u_k). There is no closed-form KL between
    the Gaussian posterior and this mixture (Monte Carlo KL), and it does not factorize. It needs
    q(z|u_k) at arbitrary z, so a flow posterior (planar, IAF) is refused (vae_lab/run/settings.py).
    """

    evaluates_posterior_anywhere = True

    @checked("prior")
    def __init__(
        self,
        latent_dim: int,
        encoder: nn.Module,
        datamodule: Any = None,
        n_pseudo_inputs: Annotated[int, at_least(1)] = 500,
        init: Annotated[str, one_of(PSEUDO_INPUT_INITS)] = "data",
        random_mean: float = 0.05,
        random_std: float = 0.01,
        image_shape: Sequence[int] | None = None,
        **context: Any,
    ) -> None:
        super().__init__(latent_dim)
        if image_shape is None:
            if datamodule is None:
                raise ConfigError("VampPrior needs the data module (or image_shape) to shape its pseudo-inputs.")
            image_shape = datamodule.image_shape
        self.encoder = encoder  # shared with the VAE: the same parameters, registered under both names
        self.n_pseudo_inputs = n_pseudo_inputs
        if init == "data":
            pixels = self._training_images(datamodule, n_pseudo_inputs)
        else:
            pixels = random_mean + random_std * torch.randn(n_pseudo_inputs, *image_shape)
        self.pseudo_input_logits = nn.Parameter(torch.logit(pixels.float().clamp(EDGE, 1.0 - EDGE)))

    @staticmethod
    def _training_images(datamodule: Any, n: int) -> torch.Tensor:
        """n training images drawn at random with the data module's seed, on the [0, 1] scale."""
        if datamodule is None:
            raise ConfigError("prior.init=data needs the data module; use prior.init=random without one.")
        datamodule.setup()
        available = datamodule.splits["train"].shape[0]
        if n > available:
            raise ConfigError(
                f"prior.n_pseudo_inputs={n} is more than the {available} training images to initialise them from; "
                f"use prior.n_pseudo_inputs<={available} or prior.init=random."
            )
        images = datamodule.example_images("train", n, generator=torch.Generator().manual_seed(datamodule.seed))
        return datamodule.data_form.to_unit_interval(images)

    def pseudo_inputs(self) -> torch.Tensor:
        """u_1..u_K, shape ``[K, C, H, W]``, in (0, 1)."""
        return torch.sigmoid(self.pseudo_input_logits)

    def mixture(self, components: Distribution | None = None) -> MixtureSameFamily:
        """1/K sum_k q(z | u_k) as a ``torch.distributions`` mixture with event shape (latent_dim,);
        ``components``: the encoder's q(z | u_k), when already computed."""
        if components is None:
            components = self.encoder(self.pseudo_inputs())  # q(z | u_k): batch shape [K], event (latent_dim,)
        uniform = Categorical(logits=self.log_weights(), validate_args=False)
        return MixtureSameFamily(uniform, components, validate_args=False)

    def log_weights(self) -> torch.Tensor:
        """log(1/K) for each component, in the model's dtype and device (a float32 -log K in a float64
        model would be off by up to 1e-7 nats)."""
        like = self.pseudo_input_logits
        value = -math.log(self.n_pseudo_inputs)
        return torch.full((self.n_pseudo_inputs,), value, dtype=like.dtype, device=like.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        components = self.encoder(self.pseudo_inputs())  # q(z | u_k): batch shape [K]
        if not (isinstance(components, Independent) and isinstance(components.base_dist, Normal)):
            # A full-covariance posterior (vae_lab/posteriors): torch's mixture, [..., K, latent_dim] in memory.
            return self.mixture(components).log_prob(z)
        posteriors = components.base_dist  # [K, latent_dim]
        return diagonal_gaussian_mixture_log_prob(z, posteriors.loc, posteriors.scale, self.log_weights())

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """k ~ Uniform{1..K}, then z ~ q(z | u_k)."""
        return self.mixture().sample((n,))
