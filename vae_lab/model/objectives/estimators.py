"""Gradient estimators of a bound: ``objective.gradient``.

Every estimator gives an unbiased gradient of the same bound (same value, same expectation of the
gradient); they differ in variance.

- ``reparameterization`` (Kingma & Welling 2014): z = mu + sigma * eps, autograd through everything.
- ``stl``, sticking the landing (Roeder, Wu & Duvenaud 2017): as reparameterization, but log q(z|x) keeps
  only its gradient through z (the path), not the one through q's parameters (the score term, whose
  expectation is 0). When q is the exact posterior the ELBO's gradient is then exactly 0 for every z.
- ``dreg``, doubly reparameterized (Tucker, Lawson, Gu & Maddison 2019, eqs. 5-6): for importance-weighted
  bounds, the encoder's gradient sum_i w~_i^2 d log w_i / d z_i * d z_i / d phi (path only); the decoder
  keeps the usual IWAE gradient.
- ``score_function`` (REINFORCE; Williams 1992, Paisley et al. 2012): z = q.sample() carries no path;
  the encoder learns from (f - b) * grad log q(z|x), f the bound's value and b a baseline.

How one backward pass gives each: log q(z|x) splits into its path part and a ``direct`` part,
``direct = log q_phi(stop(z)) - stop(log q_phi(stop(z)))``, whose value is 0 and whose gradient is the
score term. STL drops it; the importance-weighted objectives reweight the gradient reaching z (a hook on z)
and the direct part, so that the encoder gets the coefficients of its own estimator while the decoder
keeps the bound's (see :func:`reweighted_log_weights`). Any posterior that is a torch Distribution with
``rsample`` and a ``log_prob`` that can be evaluated at any z works.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch.distributions import Distribution

from vae_lab.ranges import one_of

GRADIENTS = ("reparameterization", "stl", "dreg", "score_function")
#: ``objective.gradient``: one of :data:`GRADIENTS`.
Gradient = Annotated[str, one_of(GRADIENTS)]

#: Decay of the score-function baseline, an exponential moving average of the batch mean of the
#: learning signal over past training steps (independent of the current draw, so the estimator stays unbiased).
BASELINE_DECAY = 0.9


def sample(posterior: Distribution, n_samples: int, gradient: str) -> torch.Tensor:
    """n z per image from q(z|x): reparameterized (a path from q's parameters to z), or, for the score
    function, a plain draw with no path."""
    shape = torch.Size((n_samples,))
    return posterior.sample(shape) if gradient == "score_function" else posterior.rsample(shape)


def direct_log_prob(posterior: Distribution, z: torch.Tensor) -> torch.Tensor:
    """log q_phi(stop(z)) - stop(log q_phi(stop(z))): value 0, gradient the score term d log q / d phi at
    fixed z (the part STL removes and that DReG/PIWAE reweight), shape [L, B]."""
    log_prob = posterior.log_prob(z.detach())
    return log_prob - log_prob.detach()


def scale_path_gradient(z: torch.Tensor, ratio: torch.Tensor) -> None:
    """Multiply the gradient that reaches z (and, through it, the encoder) by ``ratio`` [L, B], per sample."""
    if z.requires_grad:
        scale = ratio.detach().reshape(ratio.shape + (1,) * (z.dim() - ratio.dim()))
        z.register_hook(lambda grad: grad * scale)


class ScoreBaseline:
    """b for the score-function estimator: an exponential moving average (decay :data:`BASELINE_DECAY`) of
    the batch mean of the learning signal at the previous training steps; 0 at the first step. Not saved
    in checkpoints: a resumed run restarts it at 0 (the estimator stays unbiased, only its variance moves)."""

    def __init__(self) -> None:
        self.value: float | None = None

    def center(self, signal: torch.Tensor) -> torch.Tensor:
        """signal - b, detached; then b moves towards this batch's mean signal (only in training mode of
        autograd: gradients enabled)."""
        centered = signal.detach() - (self.value or 0.0)
        if torch.is_grad_enabled():
            mean = float(signal.detach().mean())
            self.value = mean if self.value is None else BASELINE_DECAY * self.value + (1 - BASELINE_DECAY) * mean
        return centered


def reweighted_log_weights(
    log_likelihood: torch.Tensor,
    log_prior: torch.Tensor,
    log_posterior: torch.Tensor,
    direct: torch.Tensor,
    z: torch.Tensor,
    path_ratio: torch.Tensor | None,
    direct_ratio: torch.Tensor | float,
) -> torch.Tensor:
    """log w_l = log p(x|z_l) + log p(z_l) - log q(z_l|x), with the encoder's share of the gradient rescaled.

    The value is the usual log-weight. The gradient reaching z is multiplied by ``path_ratio`` (None: left
    alone) and the score term of log q by ``direct_ratio`` (0: dropped, as STL and DReG do). With a loss
    whose gradient coefficient on log w_l is a_l, the encoder then gets a_l * ratio_l: choosing
    ratio = d / a gives it the coefficients d of another estimator, while the decoder keeps a.
    """
    if path_ratio is not None:
        scale_path_gradient(z, path_ratio)
    if isinstance(direct_ratio, float) and direct_ratio == 1.0:
        return log_likelihood + log_prior - log_posterior
    return log_likelihood + log_prior - (log_posterior - direct) - direct_ratio * direct
