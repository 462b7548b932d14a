"""The priors p(z): each density integrates to 1, each sampler draws from that density, the
VampPrior samples its mixture over pseudo-inputs, and every likelihood x prior pair trains on real
MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer, run_cli
from hydra import compose, initialize_config_module
from torch import nn
from torch.distributions import Independent, Normal

from vae_lab.data import MNISTDataModule
from vae_lab.errors import ConfigError
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.networks import MLPEncoder
from vae_lab.model.priors import FlowPrior, MixtureOfGaussiansPrior, Prior, StandardNormalPrior, VampPrior

CONF = Path(__file__).resolve().parents[1] / "conf"
LIKELIHOODS = sorted(path.stem for path in (CONF / "likelihood").glob("*.yaml"))
PRIORS = sorted(path.stem for path in (CONF / "prior").glob("*.yaml"))

#: Quadrature grid on [-HALF_WIDTH, HALF_WIDTH]^2 (midpoint rule).
HALF_WIDTH, POINTS = 14.0, 700


def perturbed(prior: Prior, seed: int, size: float) -> Prior:
    """The prior with every learned parameter moved by size * N(0, 1): a generic, non-identity p(z)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.add_(size * torch.randn(parameter.shape, generator=generator))
    return prior


def mog_2d() -> Prior:
    torch.manual_seed(0)
    return perturbed(MixtureOfGaussiansPrior(2, n_components=3, init_spread=1.5), seed=1, size=0.4)


def vamp_2d() -> Prior:
    torch.manual_seed(0)
    encoder = MLPEncoder(image_shape=(1, 4, 4), latent_dim=2, hidden_sizes=(16,))
    prior = VampPrior(2, encoder=encoder, n_pseudo_inputs=4, init="random", image_shape=(1, 4, 4))
    with torch.no_grad():
        prior.pseudo_input_logits.copy_(3.0 * torch.randn(prior.pseudo_input_logits.shape))
        encoder.mean.weight.mul_(4.0)
    return prior


def flow_2d() -> Prior:
    torch.manual_seed(0)
    return perturbed(FlowPrior(2, n_layers=4, hidden_size=16), seed=2, size=0.3)


PRIORS_2D = {"mog": mog_2d, "vamp": vamp_2d, "flow": flow_2d}


def grid() -> tuple[torch.Tensor, float]:
    """The cell centres [POINTS^2, 2] (float64) and the cell area."""
    step = 2 * HALF_WIDTH / POINTS
    axis = -HALF_WIDTH + step * (torch.arange(POINTS, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(axis, axis), step**2


@torch.no_grad()
def density_on_grid(prior: Prior) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, probability mass of each cell) by the midpoint rule, computed in float64."""
    points, area = grid()
    prior = prior.double()
    mass = torch.cat([prior.log_prob(chunk).exp() for chunk in points.split(100_000)]) * area
    prior.float()
    return points.float(), mass.float()


@pytest.mark.parametrize("name", sorted(PRIORS_2D))
def test_density_integrates_to_one(name: str) -> None:
    _, mass = density_on_grid(PRIORS_2D[name]())
    assert mass.sum().item() == pytest.approx(1.0, abs=2e-3)


def moments(weights: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [2] and covariance [2, 2] of the points under the (normalized) weights."""
    weights = weights / weights.sum()
    mean = (weights[:, None] * points).sum(0)
    centred = points - mean
    return mean, (weights[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)


@pytest.mark.parametrize("name", sorted(PRIORS_2D))
def test_samples_follow_the_density(name: str) -> None:
    """Sample mean, covariance and the mass of each quadrant around the mean agree with the same
    quantities integrated from exp(log_prob), within 5 standard errors of the sample estimate."""
    prior = PRIORS_2D[name]()
    points, mass = density_on_grid(prior)
    mean, covariance = moments(mass, points)
    torch.manual_seed(3)
    n = 100_000
    samples = prior.sample(n)
    assert samples.shape == (n, 2)

    sample_mean = samples.mean(0)
    assert ((sample_mean - mean).abs() < 5 * samples.std(0) / math.sqrt(n)).all(), (sample_mean, mean)
    centred = samples - sample_mean
    products = centred[:, :, None] * centred[:, None, :]
    sample_covariance = products.mean(0)
    assert ((sample_covariance - covariance).abs() < 5 * products.std(0) / math.sqrt(n) + 1e-3).all()

    for sign_0 in (-1, 1):
        for sign_1 in (-1, 1):

            def inside(z: torch.Tensor, sign_0: int = sign_0, sign_1: int = sign_1) -> torch.Tensor:
                return (sign_0 * (z[:, 0] - mean[0]) > 0) & (sign_1 * (z[:, 1] - mean[1]) > 0)

            expected = mass[inside(points)].sum().item()
            observed = inside(samples).float().mean().item()
            assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 2e-3


class ShiftEncoder(nn.Module):
    """q(z|u) = N((10 * (u[0,0,0] - 0.5), 10 * (u[0,0,1] - 0.5)), 0.2^2 I): pseudo-inputs pick the means."""

    def forward(self, u: torch.Tensor) -> Independent:
        mean = 10.0 * (u[:, 0, 0, :2] - 0.5)
        return Independent(Normal(mean, torch.full_like(mean, 0.2)), 1)


def test_vamp_prior_samples_the_mixture_over_pseudo_inputs() -> None:
    """Four pseudo-inputs whose posteriors sit at (+-4, +-4): every sample lies near one of them,
    each is picked about a quarter of the time, and the spread is the mixture's, not N(0, I)'s."""
    prior = VampPrior(2, encoder=ShiftEncoder(), n_pseudo_inputs=4, init="random", image_shape=(1, 2, 2))
    corners = torch.tensor([[0.9, 0.9], [0.9, 0.1], [0.1, 0.9], [0.1, 0.1]])
    with torch.no_grad():
        prior.pseudo_input_logits[:, 0, 0, :] = torch.logit(corners)
    centres = 10.0 * (corners - 0.5)
    torch.manual_seed(0)
    n = 20_000
    samples = prior.sample(n)
    distance, nearest = torch.cdist(samples, centres).min(1)
    assert distance.max() < 0.2 * 6
    counts = torch.bincount(nearest, minlength=4).float()
    assert ((counts - n / 4).abs() < 5 * math.sqrt(n * 0.25 * 0.75)).all(), counts
    assert samples.var(0).min() > 15.0  # mixture variance 16 + 0.04; N(0, I) would give 1
    # log_prob is the same mixture: 1/4 sum_k N(z; centre_k, 0.2^2 I).
    z = torch.tensor([[4.0, 4.0], [0.0, 0.0], [-4.1, 3.9]])
    expected = torch.logsumexp(Independent(Normal(centres, 0.2), 1).log_prob(z[:, None, :]), -1) - math.log(4)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)


def test_vamp_prior_gradient_reaches_pseudo_inputs_and_encoder() -> None:
    prior = vamp_2d()
    prior.log_prob(torch.randn(7, 2)).sum().backward()
    assert prior.pseudo_input_logits.grad.abs().sum() > 0
    assert prior.encoder.mean.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def mnist_binary(data_root: Path) -> MNISTDataModule:
    datamodule = MNISTDataModule(str(data_root), "binary", val_size=500, train_subset=300, seed=5)
    datamodule.setup()
    return datamodule


def test_vamp_prior_starts_at_random_training_images(mnist_binary: MNISTDataModule) -> None:
    encoder = MLPEncoder(image_shape=(1, 28, 28), latent_dim=4, hidden_sizes=(8,))
    prior = VampPrior(4, encoder=encoder, datamodule=mnist_binary, n_pseudo_inputs=20, init="data")
    pseudo_inputs = prior.pseudo_inputs().detach()
    assert pseudo_inputs.shape == (20, 1, 28, 28)
    # Binarized training images, kept 0.01 inside (0, 1) so that the sigmoid can move them.
    assert torch.allclose(pseudo_inputs, pseudo_inputs.round().clamp(0.01, 0.99), atol=1e-6)
    # Each is the binarization of one training image (0 where that image is 0, 1 where it is 255),
    # 20 different ones, drawn at random rather than the first 20.
    grey = mnist_binary.splits["train"].flatten(1)
    bits = pseudo_inputs.flatten(1).round()
    contradicts = ((grey[None] == 0) & (bits[:, None] == 1)) | ((grey[None] == 255) & (bits[:, None] == 0))
    sources = ~contradicts.any(-1)  # [20, 300]: which training images each pseudo-input can come from
    assert (sources.sum(1) == 1).all()
    source = sources.float().argmax(1).tolist()
    assert len(set(source)) == 20 and source != list(range(20))

    with pytest.raises(ConfigError, match=r"prior.n_pseudo_inputs=301 .* 300 training images"):
        VampPrior(4, encoder=encoder, datamodule=mnist_binary, n_pseudo_inputs=301, init="data")


def test_vamp_prior_random_initialisation_and_bad_settings() -> None:
    encoder = MLPEncoder(image_shape=(1, 28, 28), latent_dim=4, hidden_sizes=(8,))
    torch.manual_seed(0)
    prior = VampPrior(4, encoder=encoder, n_pseudo_inputs=50, init="random", image_shape=(1, 28, 28))
    pixels = prior.pseudo_inputs().detach()
    assert pixels.mean().item() == pytest.approx(0.05, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.01, abs=1e-3)
    with pytest.raises(ConfigError, match="prior.init='images' is unknown"):
        VampPrior(4, encoder=encoder, init="images", image_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="prior.init=data needs the data module"):
        VampPrior(4, encoder=encoder, init="data", image_shape=(1, 28, 28))


def test_flow_starts_as_the_standard_normal_and_is_a_valid_bijection() -> None:
    torch.manual_seed(0)
    flow = FlowPrior(3, n_layers=3, hidden_size=8)
    z = torch.randn(10, 3)
    assert torch.allclose(flow.log_prob(z), StandardNormalPrior(3).log_prob(z), atol=1e-6)

    perturbed(flow, seed=4, size=0.5)
    transforms = flow.flow().transforms
    eps = torch.randn(3, dtype=torch.float64)
    flow.double()

    def forward(x: torch.Tensor) -> torch.Tensor:
        for transform in transforms:
            x = transform(x)
        return x

    z = forward(eps)
    back = z
    for transform in reversed(transforms):
        back = transform.inv(back)
    assert torch.allclose(back, eps, atol=1e-10)
    # log p(z) = log N(eps) - log |det df/deps|, with the Jacobian from autograd.
    _, log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(forward, eps))
    expected = Independent(Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1).log_prob(eps) - log_det
    assert flow.log_prob(z).item() == pytest.approx(expected.item(), abs=1e-9)


def test_bad_prior_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        FlowPrior(1)
    with pytest.raises(ConfigError, match="prior.n_components=0"):
        MixtureOfGaussiansPrior(2, n_components=0)


# ---------------------------------------------------------------------- every pair trains
def compose_config(data_root: Path, *overrides: str):
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, f"data.root={data_root}", *overrides])


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_every_likelihood_and_prior_train_one_epoch_on_mnist(
    likelihood: str, prior: str, data_root: Path, tmp_path: Path
) -> None:
    """One tiny epoch on real MNIST (binarization chosen by the likelihood) with finite metrics,
    and samples from the learned prior decode to images on [0, 1]."""
    cfg = compose_config(data_root, f"likelihood={likelihood}", f"prior={prior}", "data.binarization=null")
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 500 // 50
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/elbo", "train/kl", "val/elbo", "val/reconstruction", "val/kl", "val/bpd"):
        assert math.isfinite(metrics[name].item()), (name, metrics[name])
    assert metrics["val/elbo"].item() < 0 or model.data_form.is_density
    images = model.generate(4)
    assert images.shape == (4, *datamodule.image_shape) and images.min() >= 0.0 and images.max() <= 1.0


def test_cli_trains_a_vamp_prior_with_kl_warmup(data_root: Path, tmp_path: Path) -> None:
    """The real command line: prior=vamp with warm-up over 2 epochs logs train/kl_weight 0 then 0.5."""
    import csv
    import json

    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "trainer.max_epochs=2",
        "prior=vamp",
        "prior.n_pseudo_inputs=50",
        "objective.warmup.epochs=2",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["choices"]["prior"] == "vamp"
    assert all(math.isfinite(value) for value in summary["metrics"].values())
    with open(run_dir / "metrics.csv") as handle:
        weights = [float(row["train/kl_weight"]) for row in csv.DictReader(handle) if row.get("train/kl_weight")]
    assert weights == [0.0, 0.5]


@pytest.mark.parametrize("make", ["mog", "vamp"])
def test_mixture_log_prob_is_torch_distributions_mixture(make: str) -> None:
    """The matrix-product log density of the mixture priors equals torch's MixtureSameFamily, in value
    and gradient, on a 50-d latent where the components are sharp and far from the origin."""
    torch.manual_seed(0)
    if make == "mog":
        prior: Prior = perturbed(MixtureOfGaussiansPrior(50, n_components=10, init_spread=3.0), seed=2, size=0.5)
    else:
        encoder = MLPEncoder((1, 28, 28), 50)
        prior = VampPrior(
            50, encoder, n_pseudo_inputs=30, init="random", random_mean=0.3, random_std=0.3, image_shape=(1, 28, 28)
        )
        with torch.no_grad():
            encoder.log_variance.bias.fill_(-6.0)  # posterior sigmas about 0.05: sharp components
            encoder.mean.bias.uniform_(-4.0, 4.0)
    z = prior.sample(64) + 0.1 * torch.randn(64, 50)
    z = torch.cat([z, 3.0 * torch.randn(16, 50)]).requires_grad_(True)  # near components and far from all
    fast = prior.log_prob(z)
    reference = prior.mixture().log_prob(z)
    assert fast.shape == (80,)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-3), (fast - reference).abs().max()
    parameters = [z, *prior.parameters()]
    fast_gradients = torch.autograd.grad(fast.sum(), parameters, allow_unused=True)
    reference_gradients = torch.autograd.grad(reference.sum(), parameters, allow_unused=True)
    for fast_gradient, reference_gradient in zip(fast_gradients, reference_gradients, strict=True):
        if reference_gradient is not None:
            assert torch.allclose(fast_gradient, reference_gradient, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_mixture_prior_weights_follow_a_float64_model(prior: str, data_root: Path) -> None:
    """Issue 12: the VampPrior's -log K weights were float32 whatever the model's dtype, so a float64
    model's log p(z) was off by 9e-8 nats (K = 500). After model.double() both mixture priors (the
    fast matrix-product log density and the torch.distributions mixture) equal a float64 reference
    to 1e-9 nats; the mixture-of-Gaussians prior's weights are parameters (or a buffer) and follow."""
    overrides = ["prior=vamp", "prior.init=random", "prior.n_pseudo_inputs=500"] if prior == "vamp" else ["prior=mog"]
    cfg = compose_config(data_root, *overrides)
    torch.manual_seed(0)
    model = build_model(cfg, build_datamodule(cfg)).double()
    with torch.no_grad():
        z = model.prior.sample(64) + 0.1 * torch.randn(64, model.prior.latent_dim, dtype=torch.float64)
        if prior == "vamp":
            posteriors = model.prior.encoder(model.prior.pseudo_inputs()).base_dist
            loc, scale = posteriors.loc, posteriors.scale
            log_weights = torch.full((500,), -math.log(500.0), dtype=torch.float64)
        else:
            loc, scale = model.prior.means, model.prior.log_scales.exp()
            log_weights = torch.log_softmax(model.prior.logits, dim=-1)
        assert z.dtype == loc.dtype == scale.dtype == torch.float64
        components = Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # [64, K], float64
        reference = torch.logsumexp(components + log_weights, dim=-1)
        for value in (model.prior.log_prob(z), model.prior.mixture().log_prob(z)):
            assert value.dtype == torch.float64
            torch.testing.assert_close(value, reference, rtol=0, atol=1e-9)
