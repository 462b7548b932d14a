"""Unit tests written to kill the mutants of the gradient estimators and the tighter bounds
(vae_lab.model.objectives: estimators.py, iwae.py, the ELBO's stl and score-function paths) that survived
``make mutation`` (docs/mutation.md).

Each test compares an objective's loss, value and gradient, on a tiny linear-Gaussian model with fixed
noise (float64, a few samples), with a reference written here from the paper's formula, independently of
how vae_lab gets it in one backward pass (hooks on z, the "direct" part of log q):

- reparameterization: autograd of the bound (Kingma & Welling 2014; Burda et al. 2016, eq. 8);
- STL (Roeder, Wu & Duvenaud 2017): log q(z|x) evaluated with q's parameters stopped, z keeping its path;
- DReG (Tucker, Lawson, Gu & Maddison 2019, eq. 8): the encoder's gradient
  sum_i stop(w~_i^2) d log w_i / d z_i d z_i / d phi (q's parameters stopped in log w_i), the decoder's the
  IWAE gradient; for MIWAE per group with w~_{i|m}^2 / M, for CIWAE f / k + (1 - f) w~_i^2 (the ELBO part
  STL's, the IWAE part DReG's);
- MIWAE, PIWAE, CIWAE (Rainforth et al. 2018, section 4): PIWAE's decoder gets the IWAE gradient of all
  M * k samples, its encoder the MIWAE gradient of the same samples;
- the score function (Williams 1992; the surrogate -f - stop(f - b) log q of Schulman et al. 2015) with
  the baseline b, an exponential moving average of the batch-mean signal of earlier steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_lab.errors import ConfigError
from vae_lab.model.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, ELBOTerms
from vae_lab.model.objectives.base import Objective
from vae_lab.model.objectives.estimators import (
    BASELINE_DECAY,
    ScoreBaseline,
    direct_log_prob,
    reweighted_log_weights,
    sample,
    scale_path_gradient,
)
from vae_lab.model.objectives.iwae import ImportanceWeighted, normalized_log_weights

D_X, D_Z, NOISE, BATCH = 3, 2, 0.7, 2
F64 = torch.float64


class Tiny:
    """z ~ N(0, I), x | z ~ N(W z + b, NOISE^2 I), q(z|x) = N(loc, exp(log_scale)^2) per image, with L
    fixed noise draws eps: z_l = loc + scale * eps_l (a path to q's parameters unless ``path`` is false)."""

    def __init__(self, samples: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.loc = torch.randn(BATCH, D_Z, generator=generator, dtype=F64).requires_grad_()
        self.log_scale = (0.4 * torch.randn(BATCH, D_Z, generator=generator, dtype=F64)).requires_grad_()
        self.weight = (1.5 * torch.randn(D_X, D_Z, generator=generator, dtype=F64)).requires_grad_()
        self.bias = torch.randn(D_X, generator=generator, dtype=F64).requires_grad_()
        self.x = 2 * torch.randn(BATCH, D_X, generator=generator, dtype=F64)
        self.eps = torch.randn(samples, BATCH, D_Z, generator=generator, dtype=F64)
        self.prior = Independent(Normal(torch.zeros(D_Z, dtype=F64), torch.ones(D_Z, dtype=F64)), 1)

    def posterior(self, stopped: bool = False) -> Independent:
        loc, log_scale = (self.loc.detach(), self.log_scale.detach()) if stopped else (self.loc, self.log_scale)
        return Independent(Normal(loc, log_scale.exp()), 1)

    def z(self, path: bool = True) -> torch.Tensor:
        z = self.loc + self.log_scale.exp() * self.eps
        return z if path else z.detach()

    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        return Independent(Normal(z @ self.weight.T + self.bias, NOISE), 1).log_prob(self.x)

    def log_weights(self, z: torch.Tensor, stopped: bool = False) -> torch.Tensor:
        """log p(x, z_l) - log q(z_l|x), [L, B]; ``stopped``: q's parameters stopped in log q (the path only)."""
        return self.log_likelihood(z) + self.prior.log_prob(z) - self.posterior(stopped).log_prob(z)

    def terms(self, path: bool = True, analytic: bool = False, keep_z: bool = True) -> ELBOTerms:
        z = self.z(path)
        posterior = self.posterior()
        log_prior, log_posterior = self.prior.log_prob(z), posterior.log_prob(z)
        kl = kl_divergence(posterior, self.prior) if analytic else (log_posterior - log_prior).mean(0)
        return ELBOTerms(
            self.log_likelihood(z),
            log_prior,
            log_posterior,
            kl,
            None,
            z if keep_z else None,
            posterior if keep_z else None,
            analytic,
        )

    def encoder(self, loss: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [g.flatten() for g in torch.autograd.grad(loss, [self.loc, self.log_scale], retain_graph=True)]
        )

    def decoder(self, loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [self.weight, self.bias], retain_graph=True)])


def iwae(log_weights: torch.Tensor) -> torch.Tensor:
    """L_k = log (1/k) sum_i w_i (Burda et al. 2016, eq. 8), [B]."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


def miwae(log_weights: torch.Tensor, m: int) -> torch.Tensor:
    """(1/M) sum_m L_k^(m), group m the samples m * k .. m * k + k - 1 (Rainforth et al. 2018, section 4)."""
    return torch.stack([iwae(group) for group in log_weights.chunk(m)]).mean(0)


def dreg_encoder_surrogate(tiny: Tiny, coefficients) -> torch.Tensor:
    """-mean_batch sum_i stop(c_i) log w_i(z_i) with q's parameters stopped: its encoder gradient is
    -sum_i c_i d log w_i / d z_i d z_i / d phi (Tucker et al. 2019, eq. 8), c computed from the log-weights."""
    z = tiny.z()
    path_only = tiny.log_weights(z, stopped=True)
    return -(coefficients(path_only.detach()) * path_only).sum(0).mean()


def squared_normalized(log_weights: torch.Tensor) -> torch.Tensor:
    return torch.softmax(log_weights, 0).square()


def assert_gradients(tiny: Tiny, loss: torch.Tensor, encoder_reference, decoder_reference) -> None:
    torch.testing.assert_close(tiny.encoder(loss), tiny.encoder(encoder_reference), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tiny.decoder(loss), tiny.decoder(decoder_reference), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- DReG, IWAE family
def test_iwae_dreg_gives_the_encoder_squared_normalized_weights_on_the_path_and_the_decoder_the_iwae_gradient() -> None:
    tiny = Tiny(samples=4)
    objective = IWAE(k=4, gradient="dreg")
    loss = objective.loss(tiny.terms(), step=0, epoch=0)
    reference = -iwae(tiny.log_weights(tiny.z())).mean()
    torch.testing.assert_close(loss, reference)  # the same value: the bound
    assert_gradients(tiny, loss, dreg_encoder_surrogate(tiny, squared_normalized), reference)
    # and not the reparameterization gradient of the encoder (which keeps the score term)
    assert not torch.allclose(tiny.encoder(loss), tiny.encoder(reference))


def test_miwae_dreg_squares_the_weights_within_each_group_over_m() -> None:
    tiny = Tiny(samples=6)
    loss = MIWAE(m=2, k=3, gradient="dreg").loss(tiny.terms(), step=0, epoch=0)
    reference = -miwae(tiny.log_weights(tiny.z()), 2).mean()
    torch.testing.assert_close(loss, reference)

    def coefficients(log_weights: torch.Tensor) -> torch.Tensor:
        return torch.cat([squared_normalized(group) / 2 for group in log_weights.chunk(2)])

    assert_gradients(tiny, loss, dreg_encoder_surrogate(tiny, coefficients), reference)


def test_ciwae_dreg_is_stl_for_its_elbo_part_and_dreg_for_its_iwae_part() -> None:
    tiny = Tiny(samples=3)
    fraction = 0.3
    loss = CIWAE(k=3, elbo_fraction=fraction, gradient="dreg").loss(tiny.terms(), step=0, epoch=0)
    log_weights = tiny.log_weights(tiny.z())
    reference = -(fraction * log_weights.mean(0) + (1 - fraction) * iwae(log_weights)).mean()
    torch.testing.assert_close(loss, reference)

    def coefficients(log_weights: torch.Tensor) -> torch.Tensor:
        return fraction / 3 + (1 - fraction) * squared_normalized(log_weights)

    assert_gradients(tiny, loss, dreg_encoder_surrogate(tiny, coefficients), reference)


@pytest.mark.parametrize("gradient", ["reparameterization", "dreg"])
def test_piwae_trains_the_decoder_on_the_iwae_of_all_samples_and_the_encoder_on_the_miwae(gradient: str) -> None:
    """Rainforth et al. (2018, section 4): PIWAE's decoder ascends IWAE_{Mk}, its encoder MIWAE_{M,k} (with
    dreg: MIWAE's DReG gradient), on the same draws; the loss value is -IWAE_{Mk}."""
    tiny = Tiny(samples=6)
    loss = PIWAE(m=3, k=2, gradient=gradient).loss(tiny.terms(), step=0, epoch=0)
    log_weights = tiny.log_weights(tiny.z())
    decoder_reference = -iwae(log_weights).mean()
    torch.testing.assert_close(loss, decoder_reference)
    if gradient == "dreg":

        def coefficients(log_weights: torch.Tensor) -> torch.Tensor:
            return torch.cat([squared_normalized(group) / 3 for group in log_weights.chunk(3)])

        encoder_reference = dreg_encoder_surrogate(tiny, coefficients)
    else:
        encoder_reference = -miwae(log_weights, 3).mean()
    assert_gradients(tiny, loss, encoder_reference, decoder_reference)


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        (lambda: IWAE(k=4), iwae),
        (lambda: MIWAE(m=2, k=2), lambda lw: miwae(lw, 2)),
        (lambda: CIWAE(k=4, elbo_fraction=0.25), lambda lw: 0.25 * lw.mean(0) + 0.75 * iwae(lw)),
    ],
    ids=["iwae", "miwae", "ciwae"],
)
def test_reparameterized_bounds_need_only_the_log_weights(make, bound) -> None:
    """objective.gradient=reparameterization: the loss is -bound(log w), autograd through everything; it
    needs neither z nor q (ELBOTerms without them works)."""
    tiny = Tiny(samples=4)
    loss = make().loss(tiny.terms(keep_z=False), step=0, epoch=0)
    reference = -bound(tiny.log_weights(tiny.z())).mean()
    torch.testing.assert_close(loss, reference)
    assert_gradients(tiny, loss, reference, reference)


def test_dreg_encoder_ratio_is_zero_where_a_weight_underflows() -> None:
    """A sample whose normalized weight is 0 (underflow) gets ratio 0, not 0 / 0 = nan."""
    log_weights = torch.tensor([[0.0, 0.0], [-2000.0, math.log(3.0)]], dtype=F64)
    path_ratio, direct_ratio = IWAE(k=2, gradient="dreg").encoder_ratios(log_weights)
    # DReG's coefficient w~^2 over the IWAE's w~: w~ itself
    torch.testing.assert_close(path_ratio, torch.tensor([[1.0, 0.25], [0.0, 0.75]], dtype=F64))
    assert direct_ratio == 0.0
    assert IWAE(k=2).encoder_ratios(log_weights) == (None, 1.0)


def test_piwae_encoder_ratios_are_miwae_over_iwae_coefficients() -> None:
    """d_l / a_l with a_l = w~_l (IWAE over all M k samples) and d_l = w~_{l|m} / M (or w~_{l|m}^2 / M, no
    score term, for dreg), on a hand-computed case: M = 2 groups of k = 2, one image."""
    log_weights = torch.log(torch.tensor([[1.0], [3.0], [2.0], [2.0]], dtype=F64))
    total = torch.tensor([[1.0], [3.0], [2.0], [2.0]], dtype=F64) / 8
    within = torch.tensor([[0.25], [0.75], [0.5], [0.5]], dtype=F64)
    path, direct = PIWAE(m=2, k=2).encoder_ratios(log_weights)
    torch.testing.assert_close(path, within / 2 / total)
    torch.testing.assert_close(direct, within / 2 / total)
    path, direct = PIWAE(m=2, k=2, gradient="dreg").encoder_ratios(log_weights)
    torch.testing.assert_close(path, within.square() / 2 / total)
    assert direct == 0.0


def test_dreg_coefficients_by_hand() -> None:
    """IWAE: w~^2; MIWAE: w~_{i|m}^2 / M per group; CIWAE: f / k + (1 - f) w~^2 (one image)."""
    log_weights = torch.log(torch.tensor([[1.0], [3.0], [2.0], [2.0]], dtype=F64))
    torch.testing.assert_close(
        IWAE(k=4).dreg_coefficients(log_weights), torch.tensor([[1.0], [9.0], [4.0], [4.0]], dtype=F64) / 64
    )
    torch.testing.assert_close(
        MIWAE(m=2, k=2).dreg_coefficients(log_weights),
        torch.tensor([[0.0625], [0.5625], [0.25], [0.25]], dtype=F64) / 2,
    )
    torch.testing.assert_close(
        CIWAE(k=4, elbo_fraction=0.2).dreg_coefficients(log_weights),
        0.2 / 4 + 0.8 * torch.tensor([[1.0], [9.0], [4.0], [4.0]], dtype=F64) / 64,
    )


def test_miwae_groups_are_consecutive_blocks_of_k_samples() -> None:
    """[M * k, B, ...] -> [k, M, B, ...]: sample m * k + i is the i-th of group m, for any trailing shape."""
    log_weights = torch.arange(12.0).reshape(6, 2)
    groups = MIWAE(m=3, k=2).groups(log_weights)
    assert groups.shape == (2, 3, 2)
    torch.testing.assert_close(groups[1, 2], log_weights[5])
    torch.testing.assert_close(groups[0, 1], log_weights[2])
    torch.testing.assert_close(
        MIWAE(m=3, k=2).groups(torch.arange(24.0).reshape(6, 2, 2))[1, 0], torch.tensor([[4.0, 5.0], [6.0, 7.0]])
    )


def test_bounds_by_hand() -> None:
    """Two images, four samples: IWAE log mean w, MIWAE(2, 2) the mean over the groups of IWAE(2) (one value
    per image), CIWAE the mixture of the ELBO and the IWAE."""
    weights = torch.tensor([[1.0, 4.0], [3.0, 2.0], [2.0, 1.0], [6.0, 1.0]], dtype=F64)
    log_weights = weights.log()
    expected_iwae = torch.tensor([3.0, 2.0], dtype=F64).log()
    # group 0 (samples 0, 1): mean weights 2 and 3; group 1 (samples 2, 3): 4 and 1
    expected_miwae = torch.tensor([(math.log(2.0) + math.log(4.0)) / 2, (math.log(3.0) + math.log(1.0)) / 2], dtype=F64)
    torch.testing.assert_close(IWAE(k=4).bound(log_weights), expected_iwae)
    torch.testing.assert_close(PIWAE(m=2, k=2).bound(log_weights), expected_iwae)
    torch.testing.assert_close(MIWAE(m=2, k=2).bound(log_weights), expected_miwae)
    torch.testing.assert_close(
        CIWAE(k=4, elbo_fraction=0.4).bound(log_weights), 0.4 * log_weights.mean(0) + 0.6 * expected_iwae
    )


def test_normalized_log_weights_sum_to_one_over_the_samples() -> None:
    log_weights = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=F64))
    torch.testing.assert_close(
        normalized_log_weights(log_weights).exp(), torch.tensor([[0.25, 0.5], [0.75, 0.5]], dtype=F64)
    )
    assert normalized_log_weights(torch.zeros(3, 1, 2)).shape == (3, 1, 2)


def test_tighter_bounds_settings_and_logged_values() -> None:
    miwae_objective, ciwae_objective = MIWAE(), CIWAE()
    assert (miwae_objective.m, miwae_objective.k, miwae_objective.n_samples) == (4, 4, 16)
    assert (miwae_objective.kl, miwae_objective.gradient) == ("auto", "reparameterization")
    assert (ciwae_objective.k, ciwae_objective.elbo_fraction, ciwae_objective.n_samples) == (5, 0.5, 5)
    assert (ciwae_objective.kl, ciwae_objective.gradient) == ("auto", "reparameterization")
    custom = MIWAE(m=3, k=2, kl="mc", gradient="dreg")
    assert (custom.n_samples, custom.kl, custom.gradient) == (6, "mc", "dreg")
    assert MIWAE(m=3, k=2).logged_values(0, 0) == {"m": 3.0, "k": 2.0}
    assert CIWAE(k=3, elbo_fraction=1).logged_values(0, 0) == {"k": 3.0, "elbo_fraction": 1.0}
    assert isinstance(CIWAE(elbo_fraction=1).elbo_fraction, float)
    ciwae_custom = CIWAE(k=2, elbo_fraction=0.0, kl="analytic", gradient="dreg")
    assert (ciwae_custom.n_samples, ciwae_custom.kl, ciwae_custom.gradient) == (2, "analytic", "dreg")
    iwae_custom = IWAE(k=3, kl="mc", gradient="score_function")
    assert (iwae_custom.n_samples, iwae_custom.kl, iwae_custom.gradient) == (3, "mc", "score_function")


def test_a_new_importance_weighted_objective_gets_the_objective_defaults() -> None:
    class Best(ImportanceWeighted):
        def __init__(self) -> None:
            super().__init__(n_samples=2)

        def bound(self, log_weights: torch.Tensor) -> torch.Tensor:
            return log_weights.max(0).values

    objective = Best()
    assert (objective.n_samples, objective.kl, objective.gradient) == (2, "auto", "reparameterization")
    assert isinstance(objective.baseline, ScoreBaseline) and objective.baseline.value is None


@pytest.mark.parametrize(
    ("make", "opening", "closing"),
    [
        (
            lambda: IWAE(gradient="stl"),
            "objective.gradient=stl does not apply to IWAE: sticking the landing",
            "use objective.gradient=dreg, its unbiased counterpart.",
        ),
        (
            lambda: MIWAE(gradient="stl"),
            "objective.gradient=stl does not apply to MIWAE: ",
            "its unbiased counterpart.",
        ),
        (
            lambda: PIWAE(gradient="score_function"),
            "objective.gradient=score_function does not apply to PIWAE: PIWAE splits",
            "use objective=miwae or iwae with the score function.",
        ),
        (lambda: ELBO(gradient="dreg"), "objective.gradient=dreg does not apply to ELBO: ", "gradient=stl."),
        (
            lambda: ELBO(gradient="stl", kl="analytic"),
            "objective.gradient=stl drops the score term of log q(z|x) from a Monte Carlo KL, and "
            "objective.kl=analytic has none;",
            "use objective.kl=mc (or auto), or gradient=reparameterization.",
        ),
        (
            lambda: ELBO(gradient="stl", free_bits=0.5),
            "objective.gradient=stl does not cover the per-dimension KL of objective.free_bits; ",
            "use gradient=reparameterization with free bits.",
        ),
        (
            lambda: ELBO(gradient="score_function", free_bits=0.5),
            "objective.gradient=score_function needs a KL term that is an expectation over z; "
            "objective.free_bits and objective.capacity are not.",
            " Use gradient=reparameterization with them.",
        ),
        (
            lambda: ELBO(gradient="score_function", capacity={"max": 5.0}),
            "objective.gradient=score_function needs a KL term",
            "objective.capacity are not. Use gradient=reparameterization with them.",
        ),
    ],
)
def test_estimator_combinations_that_do_not_apply_are_refused_saying_why(make, opening: str, closing: str) -> None:
    """The message names the setting and why it does not apply (its opening), and what to use (its end)."""
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value).startswith(opening)
    assert str(error.value).endswith(closing)


def test_estimator_combinations_that_apply_are_accepted() -> None:
    assert ELBO(gradient="stl").kl == "mc"  # STL needs the Monte Carlo KL: auto becomes mc
    assert ELBO(gradient="stl", kl="mc", capacity={"max": 2.0}).kl == "mc"
    assert ELBO(gradient="score_function").kl == "auto"
    assert ELBO(gradient="score_function", kl="analytic").gradient == "score_function"
    assert ELBO(free_bits=0.5).gradient == "reparameterization"
    assert ELBO(capacity={"max": 2.0}).capacity is not None
    assert IWAE(gradient="dreg").gradient == "dreg"


# ---------------------------------------------------------------- STL, ELBO
def test_elbo_stl_keeps_only_the_path_gradient_of_log_q() -> None:
    """Roeder et al. (2017): the ELBO with log q_{stop(phi)}(z(phi)), beta-weighted; value unchanged."""
    tiny = Tiny(samples=3)
    objective = ELBO(n_samples=3, kl_weight=0.5, gradient="stl")
    loss = objective.loss(tiny.terms(), step=0, epoch=0)
    z = tiny.z()
    kl = (tiny.posterior(stopped=True).log_prob(z) - tiny.prior.log_prob(z)).mean(0)
    reference = -tiny.log_likelihood(z).mean(0).mean() + 0.5 * kl.mean()
    torch.testing.assert_close(loss, reference)
    assert_gradients(tiny, loss, reference, reference)


def test_elbo_stl_with_capacity_takes_each_images_kl() -> None:
    """With capacity the KL term is gamma * mean_b |KL_b - C| (Burgess et al. 2018): the STL estimate of
    each image's KL, with C between the two images' KLs (so their signs differ)."""
    tiny = Tiny(samples=3)
    z = tiny.z()
    kl = (tiny.posterior(stopped=True).log_prob(z) - tiny.prior.log_prob(z)).mean(0)
    assert kl[0] != kl[1]
    capacity = float(kl.detach().mean())
    objective = ELBO(n_samples=3, gradient="stl", capacity={"max": capacity, "steps": 0, "gamma": 2.0})
    loss = objective.loss(tiny.terms(), step=0, epoch=0)
    reference = -tiny.log_likelihood(z).mean(0).mean() + 2.0 * (kl - capacity).abs().mean()
    torch.testing.assert_close(loss, reference)
    assert_gradients(tiny, loss, reference, reference)


def test_direct_log_posterior_is_zero_valued_with_the_score_gradient() -> None:
    tiny = Tiny(samples=3)
    terms = tiny.terms()
    direct = terms.direct_log_posterior()
    assert direct.shape == (3, BATCH)
    assert torch.equal(direct, torch.zeros(3, BATCH, dtype=F64))
    score = tiny.posterior().log_prob(tiny.z(path=False)).sum()  # d log q / d phi at fixed z
    torch.testing.assert_close(tiny.encoder(direct.sum()), tiny.encoder(score))
    torch.testing.assert_close(direct_log_prob(tiny.posterior(), tiny.z()), direct)
    for missing in ({"z": None}, {"posterior": None}):
        incomplete = ELBOTerms(**{**terms.__dict__, **missing})
        with pytest.raises(ValueError, match=r"^ELBOTerms\.direct_log_posterior needs the samples z and the posterior"):
            incomplete.direct_log_posterior()


# ---------------------------------------------------------------- score function
def test_elbo_score_function_with_an_analytic_kl_and_its_baseline() -> None:
    """Surrogate -mean(log p(x|z)) + beta KL - mean(stop(log p(x|z_l) - b) log q(z_l|x)), z without a path;
    b = 0 at the first step, then the batch-mean signal of the first step."""
    tiny = Tiny(samples=3)
    objective = ELBO(n_samples=3, kl_weight=1.0, warmup={"steps": 4}, gradient="score_function")
    beta = 0.5  # step 2 of a 4-step warm-up
    terms = tiny.terms(path=False, analytic=True)
    log_likelihood, log_q = terms.log_likelihood, terms.log_posterior
    kl = kl_divergence(tiny.posterior(), tiny.prior)
    baseline = 0.0
    for _ in range(2):
        loss = objective.loss(terms, step=2, epoch=0)
        reference = -log_likelihood.mean() + beta * kl.mean() - ((log_likelihood.detach() - baseline) * log_q).mean()
        torch.testing.assert_close(loss, reference)
        assert_gradients(tiny, loss, reference, reference)
        baseline = float(log_likelihood.detach().mean())


@pytest.mark.parametrize("warmup", [{"steps": 4}, {"epochs": 4}])
def test_elbo_score_function_with_a_monte_carlo_kl_includes_the_kl_in_the_signal(warmup: dict) -> None:
    """f_l = log p(x|z_l) - beta_t (log q(z_l|x) - log p(z_l)): surrogate -mean(f) - mean(stop(f - b) log q),
    beta_t = 1/4 at step 1 of a 4-step warm-up, or in epoch 1 of a 4-epoch one."""
    tiny = Tiny(samples=3)
    objective = ELBO(n_samples=3, kl="mc", warmup=warmup, gradient="score_function")
    terms = tiny.terms(path=False)
    signal = terms.log_likelihood - 0.25 * (terms.log_posterior - terms.log_prior)
    loss = objective.loss(terms, step=1, epoch=1)
    reference = -signal.mean() - (signal.detach() * terms.log_posterior).mean()
    torch.testing.assert_close(loss, reference)
    assert_gradients(tiny, loss, reference, reference)
    assert objective.baseline.value == pytest.approx(float(signal.detach().mean()), rel=1e-12)


@pytest.mark.parametrize("cls", [IWAE, CIWAE])
def test_importance_weighted_score_function(cls: type[ImportanceWeighted]) -> None:
    """-mean_b (L(x_b) + stop(L(x_b) - b) sum_l log q(z_l|x_b)), z without a path, b the baseline."""
    objective = cls(k=3, gradient="score_function")  # made here: its baseline starts afresh
    tiny = Tiny(samples=3)
    terms = tiny.terms(path=False)
    bound = objective.bound(terms.log_weights)
    baseline = 0.0
    for _ in range(2):
        loss = objective.loss(terms, step=0, epoch=0)
        reference = -(bound + (bound.detach() - baseline) * terms.log_posterior.sum(0)).mean()
        torch.testing.assert_close(loss, reference)
        assert_gradients(tiny, loss, reference, reference)
        baseline = float(bound.detach().mean())


def test_score_baseline_is_an_exponential_moving_average_of_past_batch_means() -> None:
    baseline = ScoreBaseline()
    assert baseline.value is None
    first = torch.tensor([1.0, 3.0], requires_grad=True)
    centered = baseline.center(first)
    assert torch.equal(centered, first.detach()) and not centered.requires_grad  # b = 0 at the first step
    assert baseline.value == 2.0
    torch.testing.assert_close(baseline.center(torch.tensor([10.0, 14.0])), torch.tensor([8.0, 12.0]))
    assert baseline.value == pytest.approx(BASELINE_DECAY * 2.0 + (1 - BASELINE_DECAY) * 12.0)
    assert BASELINE_DECAY == 0.9
    with torch.no_grad():  # validation: b is used, not moved
        torch.testing.assert_close(baseline.center(torch.tensor([0.0])), torch.tensor([-3.0]))
    assert baseline.value == pytest.approx(3.0)
    negative = ScoreBaseline()
    negative.center(torch.tensor([-4.0]))
    torch.testing.assert_close(negative.center(torch.tensor([0.0])), torch.tensor([4.0]))


# ---------------------------------------------------------------- the pieces
def test_sample_has_a_path_only_when_reparameterized() -> None:
    tiny = Tiny(samples=1)
    torch.manual_seed(0)
    drawn = sample(tiny.posterior(), 3, "score_function")
    assert drawn.shape == (3, BATCH, D_Z) and not drawn.requires_grad
    for gradient in ("reparameterization", "stl", "dreg"):
        drawn = sample(tiny.posterior(), 2, gradient)
        assert drawn.shape == (2, BATCH, D_Z) and drawn.requires_grad


def test_scale_path_gradient_multiplies_the_gradient_reaching_each_sample() -> None:
    loc = torch.zeros(2, 3, requires_grad=True)
    z = loc.expand(4, 2, 3) * 1.0  # [L, B, D]
    ratio = torch.arange(8.0).reshape(4, 2)
    scale_path_gradient(z, ratio)
    z.sum().backward()
    torch.testing.assert_close(loc.grad, ratio.sum(0)[:, None].expand(2, 3))
    plain = torch.ones(2)  # a z without a path is left alone
    scale_path_gradient(plain, torch.zeros(2))
    assert not plain.requires_grad


def test_reweighted_log_weights_keep_the_value_and_rescale_the_encoder_gradient() -> None:
    """Value log p(x|z) + log p(z) - log q(z|x); the path gradient times path_ratio, the score term of log q
    times direct_ratio; with (None, 1.0) the plain log-weights."""
    tiny = Tiny(samples=2)
    terms = tiny.terms()
    ratio = torch.tensor([[2.0, 0.5], [1.5, 3.0]], dtype=F64)
    plain = terms.log_weights
    for path_ratio, direct_ratio in ((None, 1.0), (None, 0.0), (ratio, 0.0), (ratio, ratio)):
        terms = tiny.terms()
        direct = terms.direct_log_posterior()
        log_weights = reweighted_log_weights(
            terms.log_likelihood, terms.log_prior, terms.log_posterior, direct, terms.z, path_ratio, direct_ratio
        )
        torch.testing.assert_close(log_weights, plain)
        scale = torch.ones_like(ratio) if path_ratio is None else path_ratio
        z = tiny.z()
        path_only = tiny.log_weights(z, stopped=True)
        score = tiny.posterior().log_prob(z.detach())
        reference = (scale * path_only).sum() - (direct_ratio * score).sum()
        torch.testing.assert_close(tiny.encoder(log_weights.sum()), tiny.encoder(reference))
        torch.testing.assert_close(tiny.decoder(log_weights.sum()), tiny.decoder(plain.sum()))


def test_objective_refusal_names_the_objective_and_keeps_the_gradient() -> None:
    class Picky(Objective):
        refused_gradients = {"dreg": "no reason"}

        def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
            return terms.elbo.mean()

    with pytest.raises(ConfigError, match=r"^objective\.gradient=dreg does not apply to Picky: no reason$"):
        Picky(gradient="dreg")
    assert Picky(gradient="stl").gradient == "stl"
