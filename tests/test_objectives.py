"""The KL switch (analytic | Monte Carlo), the KL schedules (warm-up, free bits, capacity) and the
IWAE bound: values at given steps, the refusals, and the IWAE gradient against an independent
implementation of the bound."""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer, run_cli
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from vae_lab.errors import ConfigError
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.likelihoods import BernoulliLikelihood
from vae_lab.model.networks import MLPDecoder, MLPEncoder
from vae_lab.model.networks.base import LOG_VARIANCE_BOUND
from vae_lab.model.objectives import ELBO, IWAE, ELBOTerms, Objective
from vae_lab.model.objectives.free_bits import free_bits_kl
from vae_lab.model.objectives.schedules import CapacitySchedule, KLWarmup, linear_ramp
from vae_lab.model.priors import StandardNormalPrior
from vae_lab.model.vae import VAE

IMAGE_SHAPE = (1, 4, 4)
LATENT_DIM = 3


def tiny_vae(objective: Objective | None = None, seed: int = 0) -> VAE:
    """A fixed-initialisation MLP VAE on 4x4 binary images with a standard normal prior."""
    torch.manual_seed(seed)
    encoder = MLPEncoder(IMAGE_SHAPE, LATENT_DIM, hidden_sizes=(16,))
    decoder = MLPDecoder(IMAGE_SHAPE, LATENT_DIM, out_channels=1, hidden_sizes=(16,))
    with torch.no_grad():  # a posterior far from the prior, so that the KL is a few nats
        encoder.mean.weight.mul_(8.0)
        encoder.log_variance.bias.fill_(-2.0)
    return VAE(
        encoder,
        decoder,
        BernoulliLikelihood(1),
        StandardNormalPrior(LATENT_DIM),
        objective or ELBO(),
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        image_shape=IMAGE_SHAPE,
    )


def binary_images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *IMAGE_SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def made_up_terms(kl: list[float], kl_per_dim: list[list[float]] | None = None) -> ELBOTerms:
    """Terms of a batch of len(kl) images with reconstruction -10 each (one sample)."""
    batch = len(kl)
    return ELBOTerms(
        log_likelihood=torch.full((1, batch), -10.0),
        log_prior=torch.zeros(1, batch),
        log_posterior=torch.zeros(1, batch),
        kl=torch.tensor(kl),
        kl_per_dim=None if kl_per_dim is None else torch.tensor(kl_per_dim, requires_grad=True),
    )


def compose_objective(*overrides: str):
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# ---------------------------------------------------------------------- the KL switch
def test_analytic_kl_equals_monte_carlo_kl_for_the_standard_prior() -> None:
    """Total and per-dimension: the MC estimate (20,000 samples) is within 4 standard errors of the
    closed form, and the per-dimension MC terms add up to the total MC estimate."""
    model = tiny_vae(ELBO(kl="auto"))
    x = binary_images()
    with torch.no_grad():
        posterior = model.posterior(x)
        z = posterior.rsample((20_000,))
        log_prior, log_posterior = model.prior.log_prob(z), posterior.log_prob(z)
        assert model.use_analytic_kl
        analytic, analytic_per_dim = model.kl_divergence(posterior, z, log_prior, log_posterior)
        model.objective.kl = "mc"
        assert not model.use_analytic_kl
        monte_carlo, monte_carlo_per_dim = model.kl_divergence(posterior, z, log_prior, log_posterior)

    assert analytic.min() > 1.0  # a KL worth comparing
    standard_error = (log_posterior - log_prior).std(0) / math.sqrt(z.shape[0])
    assert ((monte_carlo - analytic).abs() < 4 * standard_error).all(), (monte_carlo, analytic)
    per_dim_samples = posterior.base_dist.log_prob(z) - model.prior.log_prob_per_dim(z)
    per_dim_error = per_dim_samples.std(0) / math.sqrt(z.shape[0])
    assert ((monte_carlo_per_dim - analytic_per_dim).abs() < 4 * per_dim_error).all()
    assert torch.allclose(monte_carlo_per_dim.sum(-1), monte_carlo, atol=1e-4)
    assert torch.allclose(analytic_per_dim.sum(-1), analytic, atol=1e-5)


@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_analytic_kl_and_free_bits_are_refused_with_priors_that_do_not_allow_them(prior: str, data_root: Path) -> None:
    overrides = [*TINY, f"data.root={data_root}", f"prior={prior}"]
    cfg = compose_objective(*overrides, "objective.kl=analytic")
    with pytest.raises(
        ConfigError, match=r"objective.kl=analytic needs a prior with a closed-form KL.*objective.kl=mc"
    ):
        build_model(cfg, build_datamodule(cfg))
    cfg = compose_objective(*overrides, "objective.free_bits=0.5")
    with pytest.raises(ConfigError, match=r"objective.free_bits needs the KL of each latent dimension.*prior=standard"):
        build_model(cfg, build_datamodule(cfg))
    # Monte Carlo KL (auto) is what these priors get.
    cfg = compose_objective(*overrides)
    model = build_model(cfg, build_datamodule(cfg))
    assert not model.use_analytic_kl


def test_cli_refuses_analytic_kl_with_a_flow_prior(tmp_path: Path, data_root: Path) -> None:
    result = run_cli(
        "vae_lab.train",
        *TINY,
        f"data.root={data_root}",
        "prior=flow",
        "objective.kl=analytic",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "objective.kl=analytic needs a prior with a closed-form KL" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- schedules
def test_linear_ramp() -> None:
    assert [linear_ramp(t, 10, 4.0) for t in (0, 5, 10, 20)] == [0.0, 2.0, 4.0, 4.0]
    assert linear_ramp(3, 0, 4.0) == 4.0
    assert linear_ramp(5, 10, 1.0, start=3.0) == 2.0


def test_kl_warmup_by_steps_and_by_epochs() -> None:
    by_steps = KLWarmup(steps=100)
    assert [by_steps.factor(step, epoch=0) for step in (0, 25, 50, 100, 10_000)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    by_epochs = KLWarmup(epochs=10)
    assert [by_epochs.factor(step=999, epoch=epoch) for epoch in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert KLWarmup().factor(0, 0) == 1.0 and not KLWarmup().enabled
    with pytest.raises(ConfigError, match="warmup.steps and objective.warmup.epochs are both set"):
        KLWarmup(steps=10, epochs=10)
    with pytest.raises(ConfigError, match=r"objective.warmup.epochs=-1 must be a whole number >= 0"):
        KLWarmup(epochs=-1)


def test_elbo_with_warmup_weighs_the_kl_by_the_schedule() -> None:
    objective = ELBO(kl_weight=2.0, warmup={"steps": 100})
    terms = made_up_terms(kl=[3.0, 5.0])  # mean KL 4, reconstruction -10
    assert objective.loss(terms, step=0, epoch=0).item() == pytest.approx(10.0)
    assert objective.loss(terms, step=50, epoch=0).item() == pytest.approx(10.0 + 1.0 * 4.0)
    assert objective.loss(terms, step=500, epoch=3).item() == pytest.approx(10.0 + 2.0 * 4.0)
    assert objective.logged_values(step=50, epoch=0) == {"kl_weight": 1.0}
    assert ELBO(kl_weight=0.5, warmup={"epochs": 4}).logged_values(step=0, epoch=1) == {"kl_weight": 0.125}


def test_capacity_schedule_and_loss() -> None:
    schedule = CapacitySchedule(max=25.0, steps=1000)
    assert [schedule(step) for step in (0, 400, 1000, 5000)] == [0.0, 10.0, 25.0, 25.0]
    objective = ELBO(capacity={"max": 25.0, "steps": 1000, "gamma": 100.0})
    terms = made_up_terms(kl=[8.0, 14.0])
    # C = 10 at step 400: gamma * mean(|8 - 10|, |14 - 10|) = 100 * 3, per image as Burgess et al. write it.
    assert objective.loss(terms, step=400, epoch=0).item() == pytest.approx(10.0 + 300.0)
    assert objective.loss(terms, step=0, epoch=0).item() == pytest.approx(10.0 + 100.0 * 11.0)
    assert objective.logged_values(step=400, epoch=0) == {"capacity": 10.0, "capacity_gamma": 100.0}


def test_free_bits_clamp_each_dimension_exactly() -> None:
    kl_per_dim = torch.tensor([[0.1, 2.0, 0.9], [0.3, 1.0, 0.0]], requires_grad=True)  # batch means 0.2, 1.5, 0.45
    value = free_bits_kl(kl_per_dim, 0.5)
    # The clamp acts on the batch mean of each dimension (a per-image clamp would give 0.5 + 1.5 + 0.7).
    assert value.item() == pytest.approx(0.5 + 1.5 + 0.5)
    value.backward()
    # Only the dimension whose batch mean is above lambda is pushed down, by 1 / batch size per image.
    assert torch.equal(kl_per_dim.grad, torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]]))
    assert free_bits_kl(kl_per_dim, 0.0).item() == pytest.approx(0.2 + 1.5 + 0.45)

    objective = ELBO(kl_weight=2.0, free_bits=0.5)
    terms = made_up_terms(kl=[3.0, 1.3], kl_per_dim=[[0.1, 2.0, 0.9], [0.3, 1.0, 0.0]])
    assert objective.loss(terms, step=0, epoch=0).item() == pytest.approx(10.0 + 2.0 * 2.5)
    assert objective.logged_values(0, 0) == {"kl_weight": 2.0, "free_bits": 0.5}
    with pytest.raises(ConfigError, match="objective.free_bits needs the KL of each latent dimension"):
        objective.loss(made_up_terms(kl=[1.0]), step=0, epoch=0)


def test_free_bits_work_with_the_monte_carlo_kl_of_a_factorized_prior() -> None:
    model = tiny_vae(ELBO(kl="mc", free_bits=0.25, n_samples=3))
    terms = model.elbo_terms(binary_images(), n_samples=3)
    assert terms.kl_per_dim is not None and terms.kl_per_dim.shape == (6, LATENT_DIM)
    assert torch.allclose(terms.kl_per_dim.sum(-1), terms.kl, atol=1e-4)
    assert torch.isfinite(model.objective.loss(terms, step=0, epoch=0))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ELBO(n_samples=0), r"objective.n_samples=0 must be a whole number >= 1"),
        (lambda: ELBO(n_samples=1.5), r"objective.n_samples=1.5 must be a whole number >= 1"),
        (lambda: IWAE(k=0), r"objective.k=0 must be a whole number >= 1"),
        (lambda: IWAE(k=2.5), r"objective.k=2.5 must be a whole number >= 1"),
        (lambda: ELBO(kl="exact"), r"objective.kl='exact' is unknown"),
        (lambda: IWAE(kl="exact"), r"objective.kl='exact' is unknown"),
        (lambda: ELBO(kl_weight=-1.0), r"objective.kl_weight=-1.0 must be >= 0"),
        (lambda: ELBO(free_bits=-0.1), r"objective.free_bits=-0.1 must be >= 0"),
        (lambda: ELBO(capacity={"max": -1.0, "steps": 10}), r"objective.capacity.max=-1.0 must be >= 0"),
        (lambda: ELBO(capacity={"max": 5.0, "steps": 10, "gama": 2}), r"unknown keys \['gama'\]"),
        (
            lambda: ELBO(capacity={"max": 5.0, "steps": 10}, warmup={"steps": 5}),
            r"does not combine with objective.warmup",
        ),
        (lambda: ELBO(capacity={"max": 5.0, "steps": 10}, free_bits=0.5), r"does not combine with objective.free_bits"),
        (
            lambda: ELBO(capacity={"max": 5.0, "steps": 10}, kl_weight=4.0),
            r"does not combine with objective.kl_weight=4.0",
        ),
    ],
)
def test_bad_objective_settings_are_refused(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_objective_settings_compose_under_their_public_names() -> None:
    iwae = instantiate(compose_objective("objective=iwae", "objective.k=7", "objective.kl=mc").objective)
    assert isinstance(iwae, IWAE) and (iwae.k, iwae.n_samples, iwae.kl) == (7, 7, "mc")
    elbo = instantiate(
        compose_objective(
            "objective=elbo",
            "objective.n_samples=3",
            "objective.kl_weight=0.5",
            "objective.kl=analytic",
            "objective.warmup.epochs=100",
            "objective.free_bits=0.25",
        ).objective
    )
    assert (elbo.n_samples, elbo.kl_weight, elbo.kl, elbo.free_bits) == (3, 0.5, "analytic", 0.25)
    assert elbo.warmup == KLWarmup(epochs=100) and elbo.capacity is None
    capped = instantiate(
        compose_objective(
            "objective.capacity.max=25", "objective.capacity.steps=1000", "objective.capacity.gamma=30"
        ).objective
    )
    assert capped.capacity == CapacitySchedule(max=25, steps=1000, gamma=30.0) and capped.capacity_gamma == 30.0
    default = instantiate(compose_objective().objective)
    assert (default.n_samples, default.kl_weight, default.free_bits, default.capacity) == (1, 1.0, None, None)
    assert not default.warmup.enabled


# ---------------------------------------------------------------------- IWAE
def test_l1_is_the_elbo_estimate() -> None:
    """With one sample and the Monte Carlo KL, L_1 and the ELBO are the same number; with the
    analytic KL they agree in expectation."""
    model = tiny_vae(ELBO(kl="mc"))
    x = binary_images()
    torch.manual_seed(0)
    terms = model.elbo_terms(x, n_samples=1)
    assert torch.allclose(terms.importance_weighted_bound(), terms.elbo, atol=1e-5)
    assert IWAE(k=1).loss(terms, 0, 0).item() == pytest.approx(ELBO(kl="mc").loss(terms, 0, 0).item(), abs=1e-5)

    model.objective.kl = "auto"
    with torch.no_grad():
        many = model.elbo_terms(x, n_samples=20_000)
    bound_samples = many.log_weights  # each is an L_1 draw
    standard_error = bound_samples.std(0) / math.sqrt(bound_samples.shape[0])
    assert ((bound_samples.mean(0) - many.elbo).abs() < 4 * standard_error).all()


@torch.no_grad()
def bound_estimates(model: VAE, x: torch.Tensor, k: int, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over images of L_k, its standard error) from ``repeats`` independent draws of L_k."""
    log_weights = model.elbo_terms(x, n_samples=k * repeats).log_weights.reshape(repeats, k, -1)
    per_repeat = (torch.logsumexp(log_weights, dim=1) - math.log(k)).mean(-1)
    return per_repeat.mean(), per_repeat.std() / math.sqrt(repeats)


def assert_bound_increases_with_k(model: VAE, x: torch.Tensor) -> list[float]:
    torch.manual_seed(0)
    estimates = [bound_estimates(model, x, k, repeats=40) for k in (1, 5, 50)]
    for (low, low_error), (high, high_error) in itertools.pairwise(estimates):
        assert high - low > 3 * math.hypot(low_error, high_error), estimates
    return [value.item() for value, _ in estimates]


def test_bound_increases_with_k_on_a_fixed_random_model() -> None:
    assert_bound_increases_with_k(tiny_vae(), binary_images(n=20))


def test_bound_increases_with_k_on_a_briefly_trained_model(data_root: Path, tmp_path: Path) -> None:
    cfg = compose_objective(
        *TINY,
        f"data.root={data_root}",
        "trainer.max_epochs=3",
        "model.latent_dim=10",
        "model.encoder.hidden_sizes=[64]",
        "objective=iwae",
        "objective.k=5",
    )
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = quiet_trainer(max_epochs=3, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert math.isfinite(trainer.callback_metrics["val/elbo"].item())
    bounds = assert_bound_increases_with_k(model.eval(), datamodule.example_images("test", 50))
    assert bounds[0] > -400  # it learned something: 784 * log 2 = 543 nats is a coin flip per pixel


def independent_iwae_loss(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """-mean_x log (1/k) sum_i p(x, z_i) / q(z_i|x), written out from the formulas: Gaussian
    densities by hand, Bernoulli log-likelihood as minus the binary cross-entropy, one draw of
    eps of shape [k, B, Dz] from torch's normal generator (the same stream rsample uses)."""
    encoder = model.encoder
    features = encoder.features(x)
    # The encoder's documented bound: log sigma^2 = B tanh(raw / B) (vae_lab.model.networks.base).
    mean = encoder.mean(features)
    log_variance = LOG_VARIANCE_BOUND * torch.tanh(encoder.log_variance(features) / LOG_VARIANCE_BOUND)
    std = torch.exp(0.5 * log_variance)
    eps = torch.empty(k, *mean.shape).normal_()
    z = mean + std * eps
    log_2pi = math.log(2 * math.pi)
    log_posterior = (-0.5 * ((z - mean) / std) ** 2 - torch.log(std) - 0.5 * log_2pi).sum(-1)
    log_prior = (-0.5 * z**2 - 0.5 * log_2pi).sum(-1)
    logits = model.decoder(z)
    targets = x.expand_as(logits)
    log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(
        (-3, -2, -1)
    )
    log_weights = log_likelihood + log_prior - log_posterior  # [k, B]
    bound = torch.log(torch.exp(log_weights - log_weights.max(0).values).mean(0)) + log_weights.max(0).values
    return -bound.mean()


def test_iwae_gradient_matches_autograd_of_the_exact_bound() -> None:
    k = 7
    model = tiny_vae(IWAE(k=k))
    x = binary_images(n=5)
    parameters = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(42)
    loss = model.objective.loss(model.elbo_terms(x, n_samples=k), step=0, epoch=0)
    gradients = torch.autograd.grad(loss, parameters)
    torch.manual_seed(42)
    reference = independent_iwae_loss(model, x, k)
    reference_gradients = torch.autograd.grad(reference, parameters)

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for gradient, expected in zip(gradients, reference_gradients, strict=True):
        assert torch.allclose(gradient, expected, rtol=1e-4, atol=1e-6)

    # Not the gradient of the k-sample ELBO (the average of the log-weights) on the same draw.
    torch.manual_seed(42)
    elbo_loss = -model.elbo_terms(x, n_samples=k).log_weights.mean()
    elbo_gradients = torch.autograd.grad(elbo_loss, parameters)
    assert max((a - b).abs().max().item() for a, b in zip(gradients, elbo_gradients, strict=True)) > 1e-2


def test_iwae_training_step_uses_k_samples_and_logs_the_bound(data_root: Path, tmp_path: Path) -> None:
    cfg = compose_objective(*TINY, f"data.root={data_root}", "objective=iwae", "objective.k=3", "objective.kl=mc")
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    assert model.objective.n_samples == 3
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert metrics["train/k"].item() == 3.0
    # -loss is the mean L_3 >= the mean 3-sample ELBO on the same draws (Burda et al. 2016, Theorem 1).
    assert -metrics["train/loss"].item() >= metrics["train/elbo"].item() - 1e-3
