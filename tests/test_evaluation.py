"""The exact evaluation: importance-sampled log p(x) against a model whose log p(x) is known in
closed form, one logsumexp over all k samples, active units, KL per dimension, and the
``vae_lab.evaluate`` command on a real (tiny) MNIST run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli
from torch.distributions import MultivariateNormal

from vae_lab.errors import CheckpointError
from vae_lab.evaluate import load_weights
from vae_lab.evaluation.importance_sampling import (
    EvaluationSettings,
    active_units,
    draw_latents,
    evaluate,
    importance_sampled_terms,
)
from vae_lab.model.likelihoods import GaussianLikelihood
from vae_lab.model.networks import MLPDecoder, MLPEncoder
from vae_lab.model.networks.base import LOG_VARIANCE_BOUND
from vae_lab.model.objectives import ELBO
from vae_lab.model.priors import StandardNormalPrior
from vae_lab.model.vae import VAE

# ---------------------------------------------------------------- probabilistic PCA
# z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3): log p(x) = log N(x; b, W W^T + s^2 I) (Tipping & Bishop 1999).
W = torch.tensor([[1.5, 0.4], [-0.8, 1.2], [0.6, -1.0]], dtype=torch.float64)
B = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
SIGMA = 0.5
LATENT_DIM, DIMS = W.shape[1], W.shape[0]
IMAGE_SHAPE = (1, 1, DIMS)


def linear_gaussian_vae(mean_error: float = 0.3, variance_factor: float = 1.6, weight: torch.Tensor = W) -> VAE:
    """Probabilistic PCA built from the real classes: linear decoder (an MLP without hidden layers)
    under a fixed-sigma Gaussian likelihood, standard normal prior, and a linear Gaussian encoder
    that is deliberately imperfect: diagonal (the true posterior is correlated), its mean off by
    ``mean_error`` and its variances ``variance_factor`` times the true marginal variances."""
    decoder = MLPDecoder(IMAGE_SHAPE, LATENT_DIM, out_channels=1, hidden_sizes=[])
    encoder = MLPEncoder(IMAGE_SHAPE, LATENT_DIM, hidden_sizes=[])
    posterior_covariance = torch.linalg.inv(torch.eye(LATENT_DIM, dtype=torch.float64) + weight.T @ weight / SIGMA**2)
    posterior_mean_map = posterior_covariance @ weight.T / SIGMA**2  # E[z|x] = A (x - b)
    with torch.no_grad():
        decoder.output.weight.copy_(weight)
        decoder.output.bias.copy_(B)
        encoder.mean.weight.copy_(posterior_mean_map)
        encoder.mean.bias.copy_(-posterior_mean_map @ B + mean_error)
        encoder.log_variance.weight.zero_()
        # The encoder bounds log sigma^2 = B tanh(raw / B) (vae_lab.model.networks.base): invert it exactly.
        log_variance = torch.log(variance_factor * posterior_covariance.diagonal())
        encoder.log_variance.bias.copy_(LOG_VARIANCE_BOUND * torch.atanh(log_variance / LOG_VARIANCE_BOUND))
    model = VAE(
        encoder=encoder,
        decoder=decoder,
        likelihood=GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=SIGMA),
        prior=StandardNormalPrior(LATENT_DIM),
        objective=ELBO(),
        optimizer=lambda parameters: torch.optim.Adam(parameters),
        image_shape=IMAGE_SHAPE,
    )
    return model.double()


def exact_log_likelihood(x: torch.Tensor, weight: torch.Tensor = W) -> torch.Tensor:
    marginal = MultivariateNormal(
        B, covariance_matrix=weight @ weight.T + SIGMA**2 * torch.eye(DIMS, dtype=torch.float64)
    )
    return marginal.log_prob(x.reshape(-1, DIMS))


def data_points(n: int = 8, weight: torch.Tensor = W) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(n, LATENT_DIM, generator=generator, dtype=torch.float64)
    x = z @ weight.T + B + SIGMA * torch.randn(n, DIMS, generator=generator, dtype=torch.float64)
    return x.reshape(n, *IMAGE_SHAPE)


def test_importance_sampling_recovers_the_exact_log_likelihood_of_probabilistic_pca() -> None:
    model, x = linear_gaussian_vae(), data_points(32)
    exact = float(exact_log_likelihood(x).mean())
    repeats = 20
    means, errors, elbos = {}, {}, {}
    for k in (1, 10, 100, 1000):
        results = [evaluate(model, x, EvaluationSettings(n_importance_samples=k, seed=seed)) for seed in range(repeats)]
        estimates = torch.tensor([result.log_likelihood for result in results], dtype=torch.float64)
        means[k], errors[k] = float(estimates.mean()), float(estimates.std() / math.sqrt(repeats))
        elbos[k] = sum(result.elbo for result in results) / repeats

    # The imperfect q leaves a real gap at k = 1 (an estimate of the ELBO); the gap closes with k ...
    assert exact - means[1] > 0.5
    assert means[1] + 3 * errors[1] < means[10] < means[1000] - 3 * errors[10]
    assert abs(means[1000] - exact) < 0.01
    # ... and the estimate never exceeds log p(x) in expectation (within 3 standard errors).
    for k in means:
        assert means[k] <= exact + 3 * errors[k], (k, means[k], exact, errors[k])
    # ELBO <= IS estimate <= exact; with k = 1 the IS estimate is an unbiased estimate of the ELBO.
    assert elbos[1000] < means[10] < means[1000] <= exact + 3 * errors[1000]
    assert abs(elbos[1000] - means[1]) < 4 * errors[1]


def test_the_importance_sampled_estimate_is_exact_for_the_true_posterior() -> None:
    # With q(z|x) = p(z|x) every weight equals p(x): the estimate is exact for any k and any noise.
    # The true posterior is correlated, so take W with orthogonal columns: then it is diagonal.
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    model = linear_gaussian_vae(mean_error=0.0, variance_factor=1.0, weight=weight)
    x = data_points(weight=weight)
    exact = exact_log_likelihood(x, weight=weight)
    terms, _ = importance_sampled_terms(model, x, 7, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms.log_weights, exact.expand(7, -1))
    torch.testing.assert_close(terms.importance_weighted_bound(), exact)


def test_one_logsumexp_over_all_k_samples_not_an_average_of_chunk_estimates() -> None:
    model, x = linear_gaussian_vae(mean_error=0.6), data_points()
    k, chunk = 1000, 100
    with torch.no_grad():
        terms, _ = importance_sampled_terms(model, x, k, chunk, torch.Generator().manual_seed(3))
    chunked = terms.importance_weighted_bound()

    # The same noise, drawn the same way, with the log-weights computed in ONE pass over all k z.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        posterior = model.posterior(x)
        z = torch.cat([draw_latents(posterior, chunk, generator) for _ in range(k // chunk)])
        log_weights = model.observation_model(z).log_prob(x) + model.prior.log_prob(z) - posterior.log_prob(z)
    unchunked = torch.logsumexp(log_weights, dim=0) - math.log(k)
    torch.testing.assert_close(chunked, unchunked, rtol=0, atol=1e-10)

    # Averaging the per-chunk estimates is L_100, a looser bound: lower by a visible margin.
    chunk_average = (torch.logsumexp(log_weights.reshape(k // chunk, chunk, -1), dim=1) - math.log(chunk)).mean(0)
    assert bool((chunk_average < chunked).all())
    assert float((chunked - chunk_average).mean()) > 0.01


def test_latents_are_drawn_from_the_seeded_generator_for_any_posterior() -> None:
    from torch.distributions import Independent, Laplace

    model, x = linear_gaussian_vae(), data_points()
    gaussian = model.posterior(x)
    draws = [draw_latents(gaussian, 5, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert draws[0].shape == (5, 8, LATENT_DIM)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # A posterior other than a Gaussian is sampled through torch.distributions, still seeded.
    laplace = Independent(Laplace(torch.zeros(8, 2), torch.ones(8, 2)), 1)
    torch.manual_seed(0)
    next_global_draw = torch.rand(3)
    torch.manual_seed(0)
    draws = [draw_latents(laplace, 5, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(torch.rand(3), next_global_draw)  # the global random stream is left as it was


def test_chunk_plan_follows_the_memory_budget() -> None:
    from vae_lab.evaluation.importance_sampling import plan_chunks

    model = linear_gaussian_vae()
    small = plan_chunks(model, 10_000, EvaluationSettings(n_importance_samples=5000, memory_budget_mb=1))
    large = plan_chunks(model, 10_000, EvaluationSettings(n_importance_samples=5000, memory_budget_mb=64))
    for plan in (small, large):
        n_chunks = math.ceil(5000 / plan.samples_per_chunk)
        assert plan.samples_per_chunk * n_chunks >= 5000 > plan.samples_per_chunk * (n_chunks - 1)
    assert small.images_per_batch * small.samples_per_chunk < large.images_per_batch * large.samples_per_chunk
    assert small.images_per_batch * small.samples_per_chunk * small.bytes_per_sample <= 2**20


# ---------------------------------------------------------------- active units and KL per dimension
def test_active_units_count_the_latents_whose_posterior_mean_varies_with_x() -> None:
    model = linear_gaussian_vae()
    with torch.no_grad():
        # Unit 0 follows x (Cov = |w|^2 = 1 for x ~ N(0, I)); unit 1 barely (Cov = 1e-4 < 0.01).
        model.encoder.mean.weight.copy_(torch.tensor([[0.6, 0.8, 0.0], [0.01, 0.0, 0.0]]))
    images = torch.randn(4000, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = evaluate(model, images, EvaluationSettings(n_importance_samples=2))
    assert result.active_units == 1
    assert result.unit_activity[0] == pytest.approx(1.0, rel=0.1)
    assert result.unit_activity[1] == pytest.approx(1e-4, rel=0.1)

    constant = torch.zeros(100, 3, dtype=torch.float64)
    constant[:, 0] = torch.linspace(-1, 1, 100)  # variance 0.343
    constant[:, 1] = torch.linspace(-0.1, 0.1, 100)  # variance 0.0034 < 0.01
    count, activity = active_units(constant)
    assert count == 1 and activity[2] == 0
    assert float(activity[0]) == pytest.approx(float(torch.linspace(-1, 1, 100).var()))


def test_kl_per_dimension_is_the_analytic_kl_of_each_latent_averaged_over_images() -> None:
    model, x = linear_gaussian_vae(), data_points()
    result = evaluate(model, x, EvaluationSettings(n_importance_samples=3))
    posterior = model.posterior(x).base_dist
    mean, variance = posterior.loc.detach(), posterior.scale.detach() ** 2
    expected = (0.5 * (mean**2 + variance - 1 - variance.log())).mean(0)
    assert result.kl_per_dim == pytest.approx(expected.tolist(), rel=1e-9)
    assert "test/kl_per_dim" in result.metrics() and len(result.metrics()["test/kl_per_dim"]) == LATENT_DIM


# ---------------------------------------------------------------- the command on real MNIST
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A tiny real MNIST run, logged to an offline wandb run, with a small end-of-training evaluation."""
    run_dir = tmp_path_factory.mktemp("evaluation") / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = run_cli(
        "vae_lab.train",
        *overrides,
        "logger=wandb",
        "eval.n_importance_samples=20",
        "eval.n_test_images=300",
        "threads=1",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_training_ends_with_the_evaluation_in_summary_and_wandb(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "summary.json").read_text())["metrics"]
    assert 0 < metrics["test/nll_is"] < -metrics["test/elbo_k_samples"]
    assert metrics["test/bpd_is"] == pytest.approx(metrics["test/nll_is"] / (784 * math.log(2)))
    assert 0 <= metrics["test/active_units"] <= 50
    assert len(metrics["test/kl_per_dim"]) == 50
    (records,) = trained_run.glob("wandb/offline-run-*/run-*.wandb")
    content = records.read_bytes()
    # The values themselves, as wandb's records hold them (JSON): logged, and in the run summary.
    assert b"test/nll_is" in content and repr(metrics["test/nll_is"]).encode() in content
    assert json.dumps(metrics["test/kl_per_dim"], separators=(",", ":")).encode() in content
    assert b"test/kl_per_dim_chart" in content


def test_evaluate_command_updates_summary_and_is_repeatable(trained_run: Path, data_root: Path) -> None:
    summary_path = trained_run / "summary.json"
    before = json.loads(summary_path.read_text())
    command = [
        "vae_lab.evaluate",
        f"run_dir={trained_run}",
        "n_importance_samples=50",
        f"data_root={data_root}",
        "threads=1",
    ]
    first = run_cli(*command, cwd=trained_run.parent)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "test/nll_is" in first.stdout
    after = json.loads(summary_path.read_text())
    metrics = after["metrics"]
    # -log p(x) by importance sampling is positive and below the negative test ELBO of trainer.test.
    assert 0 < metrics["test/nll_is"] < -metrics["test/elbo"]
    assert metrics["test/nll_is"] < -metrics["test/elbo_k_samples"]
    assert after["evaluation"]["n_importance_samples"] == 50 and after["evaluation"]["n_images"] == 10_000
    assert after["evaluation"]["checkpoint"] == "checkpoints/best.ckpt"
    assert after["evaluation"]["threads"] == 1  # threads=1: no choice to time
    assert "seconds_per_image_by_threads" not in after["evaluation"]
    # Everything else in the summary is kept.
    for key in ("status", "config", "overrides", "seed", "best_checkpoint"):
        assert after[key] == before[key]
    assert metrics["test/elbo"] == before["metrics"]["test/elbo"]

    second = run_cli(*command, cwd=trained_run.parent)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(summary_path.read_text())["metrics"]
    for name in ("test/nll_is", "test/bpd_is", "test/elbo_k_samples", "test/active_units", "test/kl_per_dim"):
        assert again[name] == metrics[name], name


def test_evaluate_command_refuses_a_truncated_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    content = (trained_run / "checkpoints" / "best.ckpt").read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    summary_before = (trained_run / "summary.json").read_text()
    result = run_cli("vae_lab.evaluate", f"run_dir={trained_run}", f"checkpoint={truncated}", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot be read: the file is truncated or corrupt" in result.stderr and str(truncated) in result.stderr
    assert "Traceback" not in result.stderr
    assert (trained_run / "summary.json").read_text() == summary_before


def test_foreign_and_missing_checkpoints_are_refused(trained_run: Path, tmp_path: Path) -> None:
    model = linear_gaussian_vae()
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(model, trained_run / "checkpoints" / "best.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_weights(model, tmp_path / "checkpoints" / "best.ckpt")
    not_lightning = tmp_path / "weights.pt"
    torch.save(model.state_dict(), not_lightning)
    with pytest.raises(CheckpointError, match="is not a Lightning checkpoint: it lacks state_dict"):
        load_weights(model, not_lightning)
    run_copy = tmp_path / "copy"
    shutil.copytree(trained_run / ".hydra", run_copy / ".hydra")
    result = run_cli("vae_lab.evaluate", f"run_dir={run_copy}", cwd=tmp_path)
    assert result.returncode == 2 and "no checkpoint at" in result.stderr
