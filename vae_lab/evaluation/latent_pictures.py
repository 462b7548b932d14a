"""Pictures of the latent space of a trained VAE: latent traversals and interpolations.

Latent traversal (as in Higgins et al. 2017, fig. 1, for beta-VAE): encode one test image, keep
every latent dimension at its posterior mean mu(x) except one, and set that one to
mu_j(x) + t * s_j for t in [-3, 3] (11 values), where s_j is the standard deviation of the prior's
marginal p(z_j) (1 for N(0, I)). So each row sweeps the range the prior covers, centred on the
image's own code; the first column is the image itself, the middle one its reconstruction at the
posterior mean. Rows are the latent dimensions with the largest KL(q(z_j|x) || p(z_j)) (mean over a
batch of test images), largest first: the dimensions the model uses; collapsed dimensions (KL ~ 0)
decode to a constant row.

Interpolation (Bowman et al. 2016, section 5): decode z = (1 - t) mu(x_a) + t mu(x_b) for t in [0, 1]
between the posterior means of pairs of test images, with the two originals at the row's ends.

Both grids go to ``<run dir>/images/`` and to wandb; ``images/latent_pictures.json`` records the
dimensions shown and the KL of every dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vae_lab.evaluation.images import save_labelled_grid
from vae_lab.files import write_json_atomically
from vae_lab.model.posteriors import posterior_mean, posterior_moments

#: How many latent dimensions a traversal shows, and how many values each one takes.
TRAVERSAL_DIMENSIONS = 10
TRAVERSAL_STEPS = 11
#: The traversal covers mu_j(x) +- this many prior standard deviations.
TRAVERSAL_RANGE = 3.0
#: Pairs of test images to interpolate between, and decoded points on each line.
INTERPOLATION_PAIRS = 8
INTERPOLATION_STEPS = 10
#: Test images whose mean KL per dimension orders the traversal rows.
KL_IMAGES = 500
#: Prior samples that estimate the marginal moments of a prior without a closed form.
PRIOR_SAMPLES = 10_000

TRAVERSAL_FILE = "latent_traversals.png"
INTERPOLATION_FILE = "latent_interpolations.png"
DESCRIPTION_FILE = "latent_pictures.json"


def decode(model: Any, z: torch.Tensor) -> torch.Tensor:
    """E[x|z] on the [0, 1] scale."""
    return model.likelihood.mean_image(model.observation_model(z))


def prior_marginals(prior: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mean and standard deviation of each marginal p(z_j): exact for a factorized prior with a
    closed form, else estimated from ``PRIOR_SAMPLES`` draws. Returns (mean, std, how)."""
    distribution = prior.distribution()
    if distribution is not None and prior.is_factorized:
        return distribution.base_dist.mean, distribution.base_dist.stddev, "exact"
    samples = prior.sample(PRIOR_SAMPLES)
    return samples.mean(0), samples.std(0), f"estimated from {PRIOR_SAMPLES} prior samples"


@torch.no_grad()
def kl_per_latent_dimension(model: Any, images: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Mean over ``images`` of KL(q(z_j|x) || p(z_j)) for each latent dimension j, in nats.

    Exact (the model's analytic KL, Kingma & Welling 2014, appendix B) when the prior factorizes
    with a closed form. Otherwise the KL does not split into dimensions; the returned value is the
    analytic KL against a Gaussian with the moments of the prior's marginal p(z_j), which orders the
    dimensions by how much the posterior departs from the prior along each. Returns (kl, how).
    """
    terms = model.elbo_terms(images, n_samples=1)
    if terms.kl_per_dim is not None:
        return terms.kl_per_dim.mean(0), "analytic KL(q(z_j|x) || p(z_j))"
    mean, std, _ = posterior_moments(model.posterior(images))  # of each marginal q(z_j|x)
    prior_mean, prior_std, how = prior_marginals(model.prior)
    kl = torch.log(prior_std / std) + (std**2 + (mean - prior_mean) ** 2) / (2 * prior_std**2) - 0.5
    return kl.mean(0), f"KL against a Gaussian with the moments of p(z_j) ({how})"


@torch.no_grad()
def latent_traversal(model: Any, image: torch.Tensor, dimensions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded traversals of ``dimensions`` around the posterior mean of one image ``[C, H, W]``:
    images ``[len(dimensions) * (1 + TRAVERSAL_STEPS), C, H, W]`` (row = dimension, starting with the
    original image) and the offsets t."""
    mean = posterior_mean(model.posterior(image.unsqueeze(0)))[0]
    _, prior_std, _ = prior_marginals(model.prior)
    offsets = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS, device=mean.device)
    codes = mean.repeat(len(dimensions), TRAVERSAL_STEPS, 1)  # [rows, steps, latent_dim]
    for row, dimension in enumerate(dimensions):
        codes[row, :, dimension] = mean[dimension] + offsets * prior_std[dimension]
    decoded = decode(model, codes.flatten(0, 1)).unflatten(0, codes.shape[:2])
    original = model.data_form.to_unit_interval(image).expand(len(dimensions), 1, *image.shape)
    return torch.cat([original, decoded], dim=1).flatten(0, 1), offsets


@torch.no_grad()
def latent_interpolation(model: Any, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Rows of [x_a, decode((1-t) mu(x_a) + t mu(x_b)) for INTERPOLATION_STEPS t in [0, 1], x_b] for
    pairs of images ``first[i]``, ``second[i]``: shape ``[pairs * (INTERPOLATION_STEPS + 2), C, H, W]``."""
    start, end = posterior_mean(model.posterior(first)), posterior_mean(model.posterior(second))  # [pairs, latent_dim]
    weights = torch.linspace(0.0, 1.0, INTERPOLATION_STEPS, device=start.device)[None, :, None]
    codes = (1 - weights) * start[:, None] + weights * end[:, None]  # [pairs, steps, latent_dim]
    decoded = decode(model, codes.flatten(0, 1)).unflatten(0, codes.shape[:2])
    to_unit = model.data_form.to_unit_interval
    return torch.cat([to_unit(first)[:, None], decoded, to_unit(second)[:, None]], dim=1).flatten(0, 1)


def save_latent_pictures(model: Any, datamodule: Any, run_dir: Path, wandb_logger: Any = None) -> dict[str, Any]:
    """Write the traversal and interpolation grids (and their description) to ``run_dir/images``,
    log both to wandb when ``wandb_logger`` is given; returns the description."""
    was_training = model.training
    model.eval()
    images_dir = Path(run_dir) / "images"
    test_images = datamodule.example_images("test", max(KL_IMAGES, 2 * INTERPOLATION_PAIRS)).to(model.device)
    kl, kl_how = kl_per_latent_dimension(model, test_images[:KL_IMAGES])
    dimensions = torch.argsort(kl, descending=True)[: min(TRAVERSAL_DIMENSIONS, kl.numel())].tolist()

    traversal, offsets = latent_traversal(model, test_images[0], dimensions)
    save_labelled_grid(
        traversal,
        images_dir / TRAVERSAL_FILE,
        columns=1 + TRAVERSAL_STEPS,
        row_labels=[f"z{dimension} KL {kl[dimension]:.2f}" for dimension in dimensions],
    )
    pairs = INTERPOLATION_PAIRS
    interpolation = latent_interpolation(model, test_images[0 : 2 * pairs : 2], test_images[1 : 2 * pairs : 2])
    save_labelled_grid(
        interpolation,
        images_dir / INTERPOLATION_FILE,
        columns=INTERPOLATION_STEPS + 2,
        row_labels=[f"test {2 * pair} to {2 * pair + 1}" for pair in range(pairs)],
    )
    description = {
        "traversal": {
            "file": TRAVERSAL_FILE,
            "test_image": 0,
            "dimensions": dimensions,
            "offsets_in_prior_std": [round(float(t), 4) for t in offsets],
        },
        "interpolation": {
            "file": INTERPOLATION_FILE,
            "pairs": [[2 * pair, 2 * pair + 1] for pair in range(pairs)],
            "steps": INTERPOLATION_STEPS,
        },
        "kl_per_dim": [float(value) for value in kl],
        "kl_per_dim_source": f"{kl_how}, mean over the first {min(KL_IMAGES, len(test_images))} test images",
    }
    write_json_atomically(images_dir / DESCRIPTION_FILE, description)
    if wandb_logger is not None:
        # One key per picture: the two grids differ in size, and wandb shows one size per key.
        wandb_logger.log_image(
            key="latent/traversals",
            images=[str(images_dir / TRAVERSAL_FILE)],
            caption=["traversals (rows: latent dims by KL, largest first)"],
        )
        wandb_logger.log_image(
            key="latent/interpolations",
            images=[str(images_dir / INTERPOLATION_FILE)],
            caption=["interpolations between test images"],
        )
    model.train(was_training)
    return description
