"""Posterior families q(z|x): one class per file, one yaml each in ``conf/posterior/``.

- ``diagonal``: N(mu(x), diag sigma^2(x)), the default (Kingma & Welling 2014);
- ``full_covariance``: N(mu(x), L(x) L(x)^T) with a Cholesky factor from the encoder;
- ``planar``: K amortized planar flow steps (Rezende & Mohamed 2015);
- ``iaf``: K inverse autoregressive flow steps on an encoder context (Kingma et al. 2016).

The flows use pyro's transforms and are imported when first named, so that the default does not
load pyro.
"""

from typing import Any

from vae_lab.model.posteriors.base import (
    MOMENT_SAMPLES,
    PosteriorFamily,
    estimator_problems,
    has_closed_form_moments,
    latent_dtype,
    pairing_problems,
    posterior_mean,
    posterior_moments,
)
from vae_lab.model.posteriors.diagonal import DiagonalPosterior
from vae_lab.model.posteriors.full_covariance import FullCovariancePosterior

_FLOWS = {"PlanarPosterior": "vae_lab.model.posteriors.planar", "IAFPosterior": "vae_lab.model.posteriors.iaf"}


def __getattr__(name: str) -> Any:
    if name in _FLOWS:
        import importlib

        return getattr(importlib.import_module(_FLOWS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MOMENT_SAMPLES",
    "PosteriorFamily",
    "estimator_problems",
    "DiagonalPosterior",
    "FullCovariancePosterior",
    "PlanarPosterior",
    "IAFPosterior",
    "has_closed_form_moments",
    "latent_dtype",
    "pairing_problems",
    "posterior_mean",
    "posterior_moments",
]
