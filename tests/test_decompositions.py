"""ELBO surgery and the inference gaps (vae_lab.evaluation.decompositions) on a linear-Gaussian model, where
everything is known in closed form: z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I), so that
p(z|x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1 and, for the exact posterior,
I(x; z) = 1/2 log det(I + W^T W / s^2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from vae_lab.errors import ConfigError
from vae_lab.evaluation.decompositions import InferenceGapSettings, elbo_surgery, inference_gaps
from vae_lab.evaluation.importance_sampling import EvaluationSettings


@pytest.fixture(autouse=True)
def double_precision():
    """Closed forms compared to 2-3 decimals: float64 in these tests only."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class StandardNormalPrior:
    latent_dim = 2

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return Normal(0.0, 1.0).log_prob(z).sum(-1)


class LinearGaussian(nn.Module):
    """The linear-Gaussian model with the model interface vae_lab.evaluation.decompositions uses (posterior,
    observation_model, prior, kl_divergence); ``encoder`` maps x to the (mean, std) of a diagonal q."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, noise: float, encoder: str = "exact") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.noise = noise
        self.encoder = encoder
        self.prior = StandardNormalPrior()
        d = weight.shape[1]
        self.precision = torch.eye(d) + weight.T @ weight / noise**2  # of p(z|x)
        self.covariance = torch.linalg.inv(self.precision)

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.bias) @ self.weight @ self.covariance.T / self.noise**2

    def posterior(self, x: torch.Tensor) -> Independent:
        mean = self.posterior_mean(x)
        # "exact" (W^T W diagonal): the exact posterior is a diagonal Gaussian; otherwise the "optimal diagonal":
        # mean of p(z|x), variances 1 / Lambda_jj (minimizes KL(q || p(z|x)))
        scale = self.covariance.diagonal().sqrt() if self.encoder == "exact" else self.precision.diagonal().rsqrt()
        if self.encoder == "shifted":  # a poor encoder: mean off by 0.5 in every dimension
            mean = mean + 0.5
        return Independent(Normal(mean, scale.expand_as(mean)), 1)

    def observation_model(self, z: torch.Tensor) -> Independent:
        return Independent(Normal(z @ self.weight.T + self.bias, self.noise), 1)

    def kl_divergence(self, posterior, z, log_prior, log_posterior):  # noqa: ANN001, ANN201 (the VAE's signature)
        prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        return kl_divergence(posterior, prior), None

    def sample_x(self, n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.weight.shape[1], generator=generator)
        return z @ self.weight.T + self.bias + self.noise * torch.randn(n, self.weight.shape[0], generator=generator)


def orthogonal_model() -> LinearGaussian:
    """W = Q diag(c) with orthonormal Q: W^T W diagonal, so the exact posterior is diagonal."""
    q, _ = torch.linalg.qr(torch.randn(5, 2, generator=torch.Generator().manual_seed(0)))
    return LinearGaussian(q * torch.tensor([1.5, 0.8]), torch.linspace(-1, 1, 5), noise=0.7)


def correlated_model(encoder: str) -> LinearGaussian:
    weight = torch.tensor([[1.0, 0.5], [0.4, 1.0], [0.3, -0.2], [0.6, 0.5], [0.0, 0.5]])
    return LinearGaussian(weight, torch.zeros(5), noise=0.6, encoder=encoder)


def surgery(model: LinearGaussian, n_images: int, n_samples: int, seed: int = 1):
    x = model.sample_x(n_images, seed)
    posterior = model.posterior(x)
    average_kl = float(model.kl_divergence(posterior, None, None, None)[0].mean())
    generator = torch.Generator().manual_seed(seed + 100)
    loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
    return elbo_surgery(loc, scale, model.prior.log_prob, average_kl, n_samples, generator)


def test_surgery_of_the_exact_posterior_marginal_kl_is_zero_and_information_is_the_average_kl() -> None:
    model = orthogonal_model()
    information = 0.5 * float(torch.logdet(model.precision))  # I(x; z) of the exact posterior
    result = surgery(model, n_images=4000, n_samples=4)
    # The aggregate posterior of the exact posterior is the prior: marginal KL -> 0, I_q -> average KL -> I(x; z).
    assert abs(result.marginal_kl) < 0.02
    assert result.mutual_information == pytest.approx(result.average_kl, abs=0.03)
    assert result.mutual_information == pytest.approx(information, abs=0.05)
    assert result.mutual_information < math.log(4000)
    # Independent estimators: their sum matches the average KL up to Monte Carlo error.
    error = math.hypot(result.mutual_information_stderr, result.marginal_kl_stderr)
    assert abs(result.mutual_information + result.marginal_kl - result.average_kl) < 4 * error


def test_surgery_estimators_converge_as_images_and_samples_grow() -> None:
    model = orthogonal_model()
    information = 0.5 * float(torch.logdet(model.precision))
    results = [surgery(model, n_images=n, n_samples=16) for n in (50, 400, 3200)]
    marginals = [r.marginal_kl for r in results]
    # The N-image marginal KL is biased high (the mixture of N posteriors is lumpier than the prior);
    # the bias shrinks as N grows, and I_q tends to I(x; z).
    assert marginals[0] > marginals[1] > marginals[2] > -0.005
    assert marginals[0] > 0.03 and marginals[2] < 0.01
    assert results[2].mutual_information == pytest.approx(information, abs=0.04)
    for result in results:
        error = math.hypot(result.mutual_information_stderr, result.marginal_kl_stderr)
        assert abs(result.mutual_information + result.marginal_kl - result.average_kl) < 4 * error
    # The Monte Carlo error falls like 1/sqrt(samples).
    few, many = surgery(model, 400, n_samples=2), surgery(model, 400, n_samples=32)
    assert many.marginal_kl_stderr < few.marginal_kl_stderr / 2.5
    assert many.mutual_information_stderr < few.mutual_information_stderr / 2.5


def gaps(model: LinearGaussian, n_images: int = 100, k: int = 400, steps: int = 150):
    settings = InferenceGapSettings(n_images=n_images, steps=steps, lr=0.05, n_samples=8, images_per_batch=64)
    x = model.sample_x(n_images, seed=3)
    return inference_gaps(model, x, settings, k, samples_per_chunk=100, seed=4)


def closed_form_approximation_gap(model: LinearGaussian) -> float:
    """KL(q* || p(z|x)) for the optimal diagonal q*: 1/2 (sum_j log Lambda_jj - log det Lambda)."""
    return 0.5 * float(model.precision.diagonal().log().sum() - torch.logdet(model.precision))


def test_approximation_gap_is_its_closed_form_and_amortization_gap_is_zero_for_the_optimal_encoder() -> None:
    model = correlated_model("optimal diagonal")
    expected = closed_form_approximation_gap(model)
    assert expected > 0.1  # the true posterior is correlated: the diagonal family cannot reach it
    result = gaps(model)
    assert result.approximation_gap == pytest.approx(expected, abs=max(0.01, 4 * result.approximation_gap_stderr))
    assert abs(result.amortization_gap) < max(0.005, 4 * result.amortization_gap_stderr)
    # log p(x) by importance sampling matches the closed form N(b, W W^T + s^2 I).
    x = model.sample_x(100, seed=3)
    covariance = model.weight @ model.weight.T + model.noise**2 * torch.eye(5)
    marginal = torch.distributions.MultivariateNormal(model.bias, covariance)
    assert result.log_likelihood == pytest.approx(float(marginal.log_prob(x).mean()), abs=0.01)


def test_amortization_gap_of_a_poor_encoder_is_its_closed_form() -> None:
    model = correlated_model("shifted")
    result = gaps(model)
    # q has the optimal variances but its mean is off by delta: KL(q || p(z|x)) grows by 1/2 delta^T Lambda delta.
    delta = torch.full((2,), 0.5)
    expected = 0.5 * float(delta @ model.precision @ delta)
    assert result.amortization_gap == pytest.approx(expected, abs=0.02)
    assert result.approximation_gap == pytest.approx(closed_form_approximation_gap(model), abs=0.02)
    # The gaps add up to log p(x) - ELBO[q] on the same images.
    total = result.approximation_gap + result.amortization_gap
    assert total == pytest.approx(result.log_likelihood - result.elbo_encoder)


def test_settings_are_checked_before_any_work() -> None:
    with pytest.raises(ConfigError, match="inference_gap.steps"):
        EvaluationSettings(inference_gap={"n_images": 10, "steps": 0})
    with pytest.raises(ConfigError, match="unknown setting.*inference_gap.n_image"):
        EvaluationSettings.from_config({"inference_gap": {"n_image": 10}})
    with pytest.raises(ConfigError, match="surgery.n_samples"):
        EvaluationSettings(surgery={"n_samples": -1})
    assert EvaluationSettings.from_config({"inference_gap": {"n_images": 7}}).inference_gap.n_images == 7


# ---------------------------------------------------------------- a trained MNIST model, through the commands
def test_surgery_and_gaps_of_a_trained_mnist_model(tmp_path: Path, data_root: Path) -> None:
    """A tiny real run with both decompositions at the end of training, then ``vae_lab.evaluate`` on
    the same images: the identities hold within the stated Monte Carlo errors."""
    run_dir = tmp_path / "run"
    gap_settings = ["n_images=40", "steps=100", "lr=0.02", "n_samples=4"]
    trained = run_cli(
        "vae_lab.train",
        *TINY,
        "eval.n_importance_samples=100",
        "eval.n_test_images=300",
        "eval.surgery.n_samples=4",
        *(f"eval.inference_gap.{setting}" for setting in gap_settings),
        "threads=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "amortization gap" in trained.stdout and "test/mutual_information" in trained.stdout
    at_end = json.loads((run_dir / "summary.json").read_text())["metrics"]
    for name in ("test/mutual_information", "test/marginal_kl", "test/approximation_gap", "test/amortization_gap"):
        assert math.isfinite(at_end[name]) and at_end[f"{name}_stderr"] > 0, name
    surgery_error = math.hypot(at_end["test/mutual_information_stderr"], at_end["test/marginal_kl_stderr"])
    total_kl = at_end["test/mutual_information"] + at_end["test/marginal_kl"]
    assert abs(total_kl - at_end["test/average_kl"]) < 4 * surgery_error
    with (run_dir / "metrics.csv").open() as file:  # logged like the other test metrics
        assert "test/marginal_kl" in file.readline()
    evaluated = run_cli(
        "vae_lab.evaluate",
        f"run_dir={run_dir}",
        "n_importance_samples=100",
        "n_test_images=40",
        "surgery.n_samples=4",
        *(f"inference_gap.{setting}" for setting in gap_settings),
        "threads=1",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    metrics, details = after["metrics"], after["evaluation"]
    surgery, gaps = details["surgery"], details["inference_gap"]
    # ELBO surgery: I_q + marginal KL = the average KL, within the estimators' Monte Carlo error; I_q <= log N.
    surgery_error = math.hypot(surgery["mutual_information_stderr"], surgery["marginal_kl_stderr"])
    total_kl = metrics["test/mutual_information"] + metrics["test/marginal_kl"]
    assert abs(total_kl - metrics["test/average_kl"]) < 4 * surgery_error
    assert 0 < metrics["test/mutual_information"] < math.log(40)
    assert metrics["test/marginal_kl"] > -4 * surgery["marginal_kl_stderr"]
    # The gaps are >= 0 within their Monte Carlo error ...
    assert metrics["test/approximation_gap"] > -4 * gaps["approximation_gap_stderr"]
    assert metrics["test/amortization_gap"] > -4 * gaps["amortization_gap_stderr"]
    assert metrics["test/amortization_gap"] > 0.1  # a model trained for one epoch leaves the encoder far from q*
    # ... and add up to -ELBO - NLL of the same 40 images, as vae_lab.evaluate measured them (its own noise,
    # the encoder as the proposal): within the error of the two IS estimates and the ELBO.
    total = metrics["test/approximation_gap"] + metrics["test/amortization_gap"]
    assert total == pytest.approx(gaps["log_likelihood"] - gaps["elbo_encoder"])
    measured = -metrics["test/elbo_k_samples"] - metrics["test/nll_is"]
    assert total == pytest.approx(measured, abs=max(0.5, 0.1 * measured))
    # A re-evaluation without the gaps leaves no stale gap in the summary (its evaluation block has none).
    again = run_cli(
        "vae_lab.evaluate", f"run_dir={run_dir}", "n_importance_samples=5", "n_test_images=40", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert "test/amortization_gap" not in after["metrics"] and "inference_gap" not in after["evaluation"]
    assert after["evaluation"]["surgery"]["n_samples"] == 1 and "test/mutual_information" in after["metrics"]


# ---------------------------------------------------------------- the report of a real beta multirun
def test_report_of_a_beta_multirun_draws_the_rate_distortion_plane_and_collapse_heatmaps(tmp_path: Path) -> None:
    import csv

    import numpy as np
    from PIL import Image

    from vae_lab.evaluation.collapse import kl_history

    sweep_dir = tmp_path / "beta"
    overrides = [o for o in TINY if not o.startswith(("logger=", "trainer.max_epochs="))]
    multirun = run_cli(
        "vae_lab.train",
        "-m",
        "objective.kl_weight=0.5,2.0",
        *overrides,
        "trainer.max_epochs=2",
        "logger=wandb",
        "threads=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert multirun.returncode == 0, multirun.stderr[-3000:]
    for job in ("0", "1"):
        run_dir = sweep_dir / job
        epochs, values = kl_history(run_dir / "metrics.csv")
        assert epochs == [1, 2] and all(len(vector) == 50 for vector in values)
        with (run_dir / "metrics.csv").open(newline="") as file:
            rows = [row for row in csv.DictReader(file) if row["val/kl_per_dim/00"]]
        # The two epochs' rows, not the re-validation of the best checkpoint after training (at the test row's step).
        assert len(rows) == 3 and values[1][7] == pytest.approx(float(rows[1]["val/kl_per_dim/07"]))
        assert (run_dir / "images" / "kl_per_dim_heatmap.png").is_file()
        (records,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        assert b"kl_per_dim_heatmap" in records.read_bytes()
        metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
        # The plane's coordinates: D + R is the negative test ELBO of the job.
        assert -metrics["test/reconstruction"] + metrics["test/kl"] == pytest.approx(-metrics["test/elbo"], abs=1e-3)
    report = run_cli("vae_lab.report", str(sweep_dir), "--no-wandb", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (sweep_dir / "report.md").read_text()
    for name in ("rate_distortion.png", "kl_per_dim_heatmaps.png"):
        assert f"](report_plots/{name})" in markdown
        with Image.open(sweep_dir / "report_plots" / name) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        assert image.width >= 500 and pixels.var() > 100 and (pixels.min(axis=2) < 200).mean() > 0.02, name


def test_bad_decomposition_settings_are_refused_before_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "eval.inference_gap.steps=0",
        "eval.surgery.n_samples=-1",
        "eval.inference_gap.lr=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    for problem in ("eval.surgery.n_samples=-1", "eval.inference_gap.steps=0", "eval.inference_gap.lr=0"):
        assert problem in result.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


def test_surgery_and_gaps_with_a_mixture_prior(data_root: Path) -> None:
    """With the VampPrior (no closed-form KL: the model's Monte Carlo KL), ELBO surgery's parts still add
    up to the average KL and the gaps are measured (an untrained model on real MNIST test images)."""
    from conftest import compose_config

    from vae_lab.evaluation.importance_sampling import evaluate
    from vae_lab.model.build import build_datamodule, build_model

    torch.set_default_dtype(torch.float32)  # a real model, as vae_lab builds it (the fixture restores the default)
    cfg = compose_config("data.train_subset=500", "data.val_size=500", "prior=vamp", f"data.root={data_root}")
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    datamodule.setup("test")
    settings = EvaluationSettings(
        n_importance_samples=50,
        n_test_images=200,
        surgery={"n_samples": 4},
        inference_gap={"n_images": 10, "steps": 20},
    )
    result = evaluate(model, datamodule.splits["test"], settings)
    surgery = result.surgery
    error = math.hypot(surgery.mutual_information_stderr, surgery.marginal_kl_stderr)
    assert abs(surgery.mutual_information + surgery.marginal_kl - surgery.average_kl) < 4 * error + 0.02
    assert result.inference_gap.amortization_gap > -4 * result.inference_gap.amortization_gap_stderr
