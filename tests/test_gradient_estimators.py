"""The gradient estimators of vae_lab.model.objectives.estimators on the linear-Gaussian model, where everything
is known: z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I), p(z|x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1.

- Every estimator's mean gradient (encoder and decoder) equals the reparameterization gradient's mean,
  within the standard errors, for the ELBO and the importance-weighted bounds.
- STL's gradient wrt q's parameters is exactly 0 for every draw when q is the exact posterior (Roeder et
  al. 2017), where the reparameterization gradient is not.
- Combinations that do not apply are refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_lab.errors import ConfigError
from vae_lab.model.objectives import CIWAE, ELBO, IWAE, MIWAE, PIWAE, ELBOTerms
from vae_lab.model.objectives.estimators import sample

D_X, D_Z, NOISE = 4, 2, 0.7


def linear_gaussian(seed: int = 0) -> dict[str, torch.Tensor]:
    """W with orthogonal columns, so that the exact posterior covariance S is diagonal (a diagonal q can equal it)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_X, D_Z, generator=generator, dtype=torch.float64))
    weight = q * torch.tensor([1.5, 0.8], dtype=torch.float64)
    bias = 0.3 * torch.randn(D_X, generator=generator, dtype=torch.float64)
    x = torch.randn(D_X, generator=generator, dtype=torch.float64)
    return {"W": weight, "b": bias, "x": x}


def exact_posterior(model: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias, x = model["W"], model["b"], model["x"]
    covariance = torch.linalg.inv(torch.eye(D_Z, dtype=torch.float64) + weight.T @ weight / NOISE**2)
    return covariance @ weight.T @ (x - bias) / NOISE**2, covariance.diagonal().sqrt()


def gradients(objective, model: dict, mean: torch.Tensor, std: torch.Tensor, batch: int) -> torch.Tensor:
    """The gradient of the objective's loss wrt (q's mean, q's log std, W, b), flattened: the mean of
    ``batch`` independent estimates (a batch of identical images)."""
    loc = mean.clone().requires_grad_()
    log_scale = std.log().clone().requires_grad_()
    weight, bias = model["W"].clone().requires_grad_(), model["b"].clone().requires_grad_()
    posterior = Independent(Normal(loc.expand(batch, D_Z), log_scale.exp().expand(batch, D_Z)), 1)
    z = sample(posterior, objective.n_samples, objective.gradient)
    prior = Independent(Normal(torch.zeros(D_Z, dtype=torch.float64), torch.ones(D_Z, dtype=torch.float64)), 1)
    log_likelihood = Independent(Normal(z @ weight.T + bias, NOISE), 1).log_prob(model["x"])
    log_prior, log_posterior = prior.log_prob(z), posterior.log_prob(z)
    analytic = objective.kl != "mc"
    kl = kl_divergence(posterior, prior) if analytic else (log_posterior - log_prior).mean(0)
    terms = ELBOTerms(log_likelihood, log_prior, log_posterior, kl, None, z, posterior, analytic)
    loss = objective.loss(terms, step=0, epoch=0)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [loc, log_scale, weight, bias])])


def mean_and_error(objective, model, mean, std, repeats: int = 40, batch: int = 500) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    draws = torch.stack([gradients(objective, model, mean, std, batch) for _ in range(repeats)])
    return draws.mean(0), draws.std(0) / math.sqrt(repeats)


def off_posterior(model: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A q away from the exact posterior (else every estimator's mean encoder gradient is 0)."""
    mean, std = exact_posterior(model)
    return mean + torch.tensor([0.4, -0.3], dtype=torch.float64), std * torch.tensor([1.6, 0.7], dtype=torch.float64)


CASES = [
    (ELBO, {"n_samples": 2}, "stl"),
    (ELBO, {"n_samples": 2}, "score_function"),
    (ELBO, {"n_samples": 2, "kl": "mc"}, "score_function"),
    (IWAE, {"k": 5}, "dreg"),
    (IWAE, {"k": 5}, "score_function"),
    (MIWAE, {"m": 2, "k": 3}, "dreg"),
    (CIWAE, {"k": 4, "elbo_fraction": 0.3}, "dreg"),
    (PIWAE, {"m": 2, "k": 3}, "dreg"),
]


CASE_IDS = [
    "elbo-stl",
    "elbo-score",
    "elbo-mc-kl-score",
    "iwae-dreg",
    "iwae-score",
    "miwae-dreg",
    "ciwae-dreg",
    "piwae-dreg",
]


@pytest.mark.parametrize(("cls", "settings", "gradient"), CASES, ids=CASE_IDS)
def test_estimator_has_the_mean_of_the_reparameterization_gradient(cls, settings, gradient) -> None:
    model = linear_gaussian()
    mean, std = off_posterior(model)
    reference, reference_error = mean_and_error(cls(**settings), model, mean, std)
    estimate, error = mean_and_error(cls(**settings, gradient=gradient), model, mean, std)
    combined = (reference_error.square() + error.square()).sqrt()
    assert reference.abs().max() > 0.05  # a gradient worth comparing
    assert ((estimate - reference).abs() <= 4 * combined + 1e-9).all(), (estimate, reference, combined)


def test_piwae_gives_the_decoder_the_iwae_gradient_and_the_encoder_the_miwae_gradient() -> None:
    """On the same draws: PIWAE's decoder gradient is IWAE(M*k)'s, its encoder gradient MIWAE's."""
    model = linear_gaussian()
    mean, std = off_posterior(model)
    results = {}
    for name, objective in {"piwae": PIWAE(m=2, k=3), "iwae": IWAE(k=6), "miwae": MIWAE(m=2, k=3)}.items():
        torch.manual_seed(3)
        results[name] = gradients(objective, model, mean, std, batch=7)
    encoder = slice(0, 2 * D_Z)
    decoder = slice(2 * D_Z, None)
    torch.testing.assert_close(results["piwae"][decoder], results["iwae"][decoder])
    torch.testing.assert_close(results["piwae"][encoder], results["miwae"][encoder])
    assert not torch.allclose(results["iwae"][encoder], results["miwae"][encoder])


def test_stl_gradient_is_exactly_zero_at_the_exact_posterior() -> None:
    """Roeder et al. (2017): with q = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z, so the STL
    gradient wrt q's parameters vanishes draw by draw; the reparameterization gradient does not."""
    model = linear_gaussian()
    mean, std = exact_posterior(model)
    torch.manual_seed(0)
    stl = torch.stack([gradients(ELBO(gradient="stl"), model, mean, std, batch=1)[: 2 * D_Z] for _ in range(50)])
    reparameterized = torch.stack([gradients(ELBO(kl="mc"), model, mean, std, batch=1)[: 2 * D_Z] for _ in range(50)])
    assert stl.abs().max() < 1e-12
    assert reparameterized.var(0).min() > 1e-3


def test_dreg_and_stl_keep_the_value_of_the_loss() -> None:
    model = linear_gaussian()
    mean, std = off_posterior(model)
    for cls, settings, gradient in CASES:
        values = []
        for chosen in ("reparameterization", gradient):
            objective = cls(**settings, gradient=chosen)
            if chosen == "score_function":
                continue  # a surrogate: its value is not the bound
            torch.manual_seed(5)
            values.append(_loss_value(objective, model, mean, std))
        assert all(math.isclose(v, values[0], rel_tol=1e-12) for v in values)


def _loss_value(objective, model, mean, std) -> float:
    posterior = Independent(Normal(mean.expand(3, D_Z), std.expand(3, D_Z)), 1)
    z = posterior.rsample((objective.n_samples,))
    prior = Independent(Normal(torch.zeros(D_Z, dtype=torch.float64), torch.ones(D_Z, dtype=torch.float64)), 1)
    log_likelihood = Independent(Normal(z @ model["W"].T + model["b"], NOISE), 1).log_prob(model["x"])
    log_prior, log_posterior = prior.log_prob(z), posterior.log_prob(z)
    terms = ELBOTerms(log_likelihood, log_prior, log_posterior, (log_posterior - log_prior).mean(0), None, z, posterior)
    return float(objective.loss(terms, step=0, epoch=0))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: ELBO(gradient="dreg"), "is exactly STL"),
        (lambda: ELBO(gradient="stl", kl="analytic"), "objective.kl=analytic"),
        (lambda: ELBO(gradient="stl", free_bits=0.5), "free_bits"),
        (lambda: ELBO(gradient="score_function", capacity={"max": 5.0}), "capacity"),
        (lambda: IWAE(gradient="stl"), "biased"),
        (lambda: MIWAE(gradient="stl"), "biased"),
        (lambda: PIWAE(gradient="score_function"), "reparameterized"),
        (lambda: IWAE(gradient="reinforce"), "unknown"),
        (lambda: CIWAE(elbo_fraction=1.5), "[0, 1]"),
    ],
)
def test_combinations_that_do_not_apply_are_refused(make, words: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        make()
    assert words in str(error.value)


def test_stl_makes_the_kl_monte_carlo() -> None:
    assert ELBO(gradient="stl").kl == "mc"
    assert ELBO().kl == "auto"


def test_bounds_of_the_tighter_family() -> None:
    """MIWAE(1, k) = IWAE(k), MIWAE(M, 1) = the M-sample ELBO, CIWAE's ends are the ELBO and the IWAE, and
    ELBO <= MIWAE(2, 3) <= PIWAE's value IWAE(6) on the same log-weights (Rainforth et al. 2018)."""
    log_weights = torch.randn(6, 9, dtype=torch.float64) * 3
    iwae = IWAE(k=6).bound(log_weights)
    torch.testing.assert_close(MIWAE(m=1, k=6).bound(log_weights), iwae)
    torch.testing.assert_close(MIWAE(m=6, k=1).bound(log_weights), log_weights.mean(0))
    torch.testing.assert_close(CIWAE(k=6, elbo_fraction=1.0).bound(log_weights), log_weights.mean(0))
    torch.testing.assert_close(CIWAE(k=6, elbo_fraction=0.0).bound(log_weights), iwae)
    torch.testing.assert_close(
        CIWAE(k=6, elbo_fraction=0.25).bound(log_weights), 0.25 * log_weights.mean(0) + 0.75 * iwae
    )
    miwae = MIWAE(m=2, k=3).bound(log_weights)
    groups = torch.stack([log_weights[:3], log_weights[3:]])  # samples m * k + i: group m, the i-th
    torch.testing.assert_close(miwae, (torch.logsumexp(groups, 1) - math.log(3)).mean(0))
    assert (log_weights.mean(0) <= miwae + 1e-12).all() and (miwae <= iwae + 1e-12).all()
    torch.testing.assert_close(PIWAE(m=2, k=3).bound(log_weights), iwae)
    assert MIWAE(m=2, k=3).n_samples == PIWAE(m=2, k=3).n_samples == 6


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective.gradient=stl"],
        ["objective.gradient=score_function"],
        ["objective=iwae", "objective.gradient=dreg"],
        ["objective=miwae", "objective.m=2", "objective.k=2", "objective.gradient=dreg"],
        ["objective=piwae", "objective.m=2", "objective.k=2"],
        ["objective=ciwae", "objective.k=3", "objective.gradient=score_function"],
    ],
    ids=["elbo-stl", "elbo-score", "iwae-dreg", "miwae-dreg", "piwae", "ciwae-score"],
)
def test_one_epoch_trains_with_each_estimator(overrides: list[str], data_root) -> None:
    """A real fit (TINY): the loss stays finite, encoder and decoder both move, and validation reports the ELBO."""
    from conftest import TINY, compose_config, quiet_trainer

    from vae_lab.model.build import build_datamodule, build_model

    cfg = compose_config(*TINY, *overrides)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, datamodule=datamodule)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert math.isfinite(float(trainer.callback_metrics["val/elbo"]))
    for group in ("encoder", "decoder"):
        moved = [not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(group)]
        assert all(moved), group
