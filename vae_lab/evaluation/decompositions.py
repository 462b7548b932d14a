"""What each term of the ELBO does, measured: ELBO surgery and the inference gaps.

ELBO surgery (Hoffman & Johnson 2016). Over the N evaluated images, with the aggregate posterior
q(z) = (1/N) sum_n q(z|x_n), the average KL term splits exactly into

    (1/N) sum_n KL(q(z|x_n) || p(z)) = I_q(n; z) + KL(q(z) || p(z)),

the mutual information between the image's index and its code (<= log N) and the marginal KL of
the aggregate posterior against the prior ("does q(z) fill the prior evenly?"). Estimators:

- log q(z) = logsumexp_m log q(z|x_m) - log N over ALL N images (no minibatch), in chunks of
  images x samples (O(N^2) in images x samples). For the N-image aggregate posterior this is exact,
  not an estimate: the only Monte Carlo error is the draw of z.
- mutual information: mean over n and over ``n_samples`` z ~ q(z|x_n) of log q(z|x_n) - log q(z);
- marginal KL: mean over m and over ``n_samples`` z ~ q(z|x_m) (stratified draws from q(z)) of
  log q(z) - log p(z), with z drawn afresh, independently of the mutual information's draws.

Neither is defined as the KL minus the other, so that (mutual information + marginal KL) against
the average KL is a check (they agree up to Monte Carlo error). Both are unbiased for the
N-image quantities. As estimates of the population quantities (the aggregate posterior of the data
distribution) they are biased: the mutual information low (it is an InfoNCE-type bound, <= log N),
the marginal KL high by the same amount; the bias falls to 0 as N grows.

The inference gap (Cremer, Li & Duvenaud 2018). log p(x) - ELBO[q] splits into the approximation gap
log p(x) - ELBO[q*] (the family) and the amortization gap ELBO[q*] - ELBO[q] (the encoder), where
q*(z|x_n) is fitted to each image separately, within the same family: for the diagonal Gaussian
head its mean and log-variance, starting from the encoder's output, by Adam on the ELBO with K
reparameterized samples per step (learning rate annealed to 0 by a cosine schedule), all images'
parameters in one tensor, the decoder frozen. Then
ELBO[q] and ELBO[q*] are estimated with the same k noise draws (common random numbers: the
difference has low variance), and log p(x) by importance sampling with k samples and q* as the
proposal (the tighter proposal; with the encoder as proposal it is reported too). The importance
sampled log p(x) is biased low (about Var(w)/(2k mean(w)^2)), so the approximation gap is, if anything,
underestimated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

import torch
from torch.distributions import Distribution, Independent, Normal

from vae_lab.errors import ConfigError
from vae_lab.evaluation.noise import ImageNoise, standard_normal
from vae_lab.ranges import at_least, check_fields, greater_than

#: Every metric this module reports: a re-evaluation that does not compute one removes its old value.
METRIC_NAMES = tuple(
    f"test/{name}{suffix}"
    for name in ("mutual_information", "marginal_kl", "approximation_gap", "amortization_gap")
    for suffix in ("", "_stderr")
) + ("test/average_kl",)
#: Latent vectors x images per block of the O(N^2) log q(z) computation (float64: 8 bytes each).
AGGREGATE_BLOCK = 2**21
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class SurgerySettings:
    """``eval.surgery``: z drawn per image for each of the two estimators (0 skips ELBO surgery)."""

    n_samples: Annotated[int, at_least(0, "0 skips ELBO surgery")] = 1

    def __post_init__(self) -> None:
        check_fields(self, "eval.surgery")


@dataclass(frozen=True)
class InferenceGapSettings:
    """``eval.inference_gap``: q* fitted on the first ``n_images`` test images (0 = off) by ``steps``
    Adam steps from learning rate ``lr`` (cosine-annealed to 0), each on the ELBO with ``n_samples``
    samples per image, ``images_per_batch`` images optimised together."""

    n_images: Annotated[int, at_least(0, "0 = off")] = 0
    steps: Annotated[int, at_least(1)] = 500
    lr: Annotated[float, greater_than(0, "Adam's learning rate")] = 1.0e-2
    n_samples: Annotated[int, at_least(1)] = 8
    images_per_batch: Annotated[int, at_least(1)] = 500

    def __post_init__(self) -> None:
        check_fields(self, "eval.inference_gap")


def settings_from(cls: type, value: Any, name: str) -> Any:
    """A settings dataclass from a mapping (unknown keys refused with the known ones), or as is."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"eval.{name} must be a section (a mapping), not {value!r}.")
    known = {field.name for field in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) eval.{name}.{', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**{key: item for key, item in value.items() if item is not None})


def diagonal_gaussian(posterior: Distribution) -> Normal | None:
    """The Normal of a diagonal Gaussian q(z|x) (event shape (latent_dim,)), or None for another family."""
    if isinstance(posterior, Independent) and isinstance(posterior.base_dist, Normal):
        return posterior.base_dist
    return None


def unsupported_family(posterior: Distribution) -> str:
    return (
        f"needs the diagonal Gaussian posterior (Independent(Normal)); this model's q(z|x) is "
        f"{type(posterior).__name__}"
    )


# ------------------------------------------------------------------------------------ ELBO surgery
def log_aggregate_posterior(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log q(z) = logsumexp_m log N(z; loc_m, diag scale_m^2) - log N for z [Z, d] against all N
    components (loc, scale [N, d]), in float64, by blocks of AGGREGATE_BLOCK pairs: the squared
    distances are three matmuls, so memory is O(Z_block x N), not O(Z x N x d)."""
    z, loc, scale = z.double(), loc.double(), scale.double()
    precision = scale.pow(-2)  # [N, d]
    constant = -(scale.log().sum(-1)) - 0.5 * loc.shape[-1] * LOG_2PI - 0.5 * (loc.pow(2) * precision).sum(-1)  # [N]
    weighted_loc = loc * precision
    rows = max(1, AGGREGATE_BLOCK // loc.shape[0])
    out = torch.empty(z.shape[0], dtype=torch.float64, device=z.device)
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        log_q = constant - 0.5 * (block.pow(2) @ precision.T) + block @ weighted_loc.T  # [Zb, N]
        out[start : start + rows] = torch.logsumexp(log_q, dim=-1) - math.log(loc.shape[0])
    return out


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """(mean, its Monte Carlo standard error) of terms [S, N]: S independent draws of z for each of N
    images. With S >= 2 the error is the within-image spread, sqrt(sum_n Var_n / S) / N (the images
    are fixed, only z is random); with S = 1 it is the pooled std / sqrt(N), which also counts the
    spread between images and so overstates the error (conservative)."""
    values = values.double()
    n_samples, n_images = values.shape
    if n_samples >= 2:
        stderr = math.sqrt(float(values.var(dim=0, correction=1).sum()) / n_samples) / n_images
    else:
        stderr = float(values.std(correction=1)) / math.sqrt(values.numel()) if values.numel() > 1 else float("nan")
    return float(values.mean()), stderr


@dataclass
class SurgeryResult:
    """ELBO surgery over ``n_images`` images (nats per image), with Monte Carlo standard errors."""

    mutual_information: float
    mutual_information_stderr: float
    marginal_kl: float
    marginal_kl_stderr: float
    average_kl: float
    n_images: int
    n_samples: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        """The summary.json metrics, with their Monte Carlo standard errors (``*_stderr``)."""
        return {
            "test/mutual_information": self.mutual_information,
            "test/mutual_information_stderr": self.mutual_information_stderr,
            "test/marginal_kl": self.marginal_kl,
            "test/marginal_kl_stderr": self.marginal_kl_stderr,
            "test/average_kl": self.average_kl,
        }

    def details(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "n_samples": self.n_samples,
            "mutual_information_stderr": self.mutual_information_stderr,
            "marginal_kl_stderr": self.marginal_kl_stderr,
            "log_n_images": math.log(self.n_images),
            "sum_minus_average_kl": self.mutual_information + self.marginal_kl - self.average_kl,
            "seconds": self.seconds,
            "estimator": "log q(z) = logsumexp over all N images - log N (exact for the N-image aggregate "
            "posterior); independent z draws for the mutual information and the marginal KL",
        }

    def rows(self) -> list[tuple[str, str]]:
        return [
            (
                "I_q(n; z) (test/mutual_information)",
                f"{self.mutual_information:.3f} ± {self.mutual_information_stderr:.3f} nats "
                f"(log N = {math.log(self.n_images):.2f})",
            ),
            ("KL(q(z) || p(z)) (test/marginal_kl)", f"{self.marginal_kl:.3f} ± {self.marginal_kl_stderr:.3f} nats"),
            (
                "their sum vs the average KL",
                f"{self.mutual_information + self.marginal_kl:.3f} vs {self.average_kl:.3f} nats",
            ),
        ]


def elbo_surgery(
    loc: torch.Tensor,
    scale: torch.Tensor,
    prior_log_prob: Any,
    average_kl: float,
    n_samples: int,
    generator: torch.Generator,
) -> SurgeryResult:
    """ELBO surgery for diagonal Gaussian posteriors q(z|x_n) = N(loc_n, diag scale_n^2) [N, d] and
    the prior's ``log_prob`` ([..., d] -> [...]); ``average_kl`` is (1/N) sum_n KL(q(z|x_n) || p(z)),
    reported beside the two terms for the check. See the module docstring for the estimators."""
    started = time.perf_counter()
    n_images = loc.shape[0]
    if n_images < 2:
        raise ConfigError("ELBO surgery needs at least 2 test images (the aggregate posterior is a mixture over them).")
    posterior = Normal(loc.double(), scale.double())

    def draw() -> torch.Tensor:  # [S, N, d], each image's own samples
        noise = torch.randn((n_samples, *loc.shape), generator=generator, device=loc.device, dtype=torch.float64)
        return posterior.loc + posterior.scale * noise

    z = draw()
    log_q_own = posterior.log_prob(z).sum(-1)  # [S, N]
    log_q_aggregate = log_aggregate_posterior(z.reshape(-1, loc.shape[-1]), loc, scale).reshape(n_samples, n_images)
    information, information_error = mean_and_stderr(log_q_own - log_q_aggregate)
    z = draw()  # fresh, independent draws for the marginal KL
    log_q_aggregate = log_aggregate_posterior(z.reshape(-1, loc.shape[-1]), loc, scale).reshape(n_samples, n_images)
    flat = z.reshape(-1, loc.shape[-1]).to(loc.dtype)
    rows = max(1, AGGREGATE_BLOCK // (64 * loc.shape[-1]))  # a mixture prior holds [rows, components, d]
    log_prior = torch.cat([prior_log_prob(flat[i : i + rows]).double() for i in range(0, flat.shape[0], rows)])
    log_prior = log_prior.reshape(n_samples, n_images)
    marginal, marginal_error = mean_and_stderr(log_q_aggregate - log_prior)
    return SurgeryResult(
        mutual_information=information,
        mutual_information_stderr=information_error,
        marginal_kl=marginal,
        marginal_kl_stderr=marginal_error,
        average_kl=float(average_kl),
        n_images=n_images,
        n_samples=n_samples,
        seconds=round(time.perf_counter() - started, 2),
    )


# ------------------------------------------------------------------------------------ inference gap
def elbo_samples(
    model: Any, x: torch.Tensor, posterior: Independent, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ELBO integrand log p(x|z) - KL term, log-weight log p(x|z) + log p(z) - log q(z|x)), both [S, B],
    for z [S, B, d] drawn from ``posterior``; the KL term is the model's own, of each sample on its own:
    analytic [B] when it has one, else each sample's Monte Carlo KL [S, B] (a mean over the chunk of
    samples would make the integrand's variance depend on the chunks)."""
    log_likelihood = model.observation_model(z).log_prob(x)
    log_prior, log_posterior = model.prior.log_prob(z), posterior.log_prob(z)
    kl, _ = model.kl_divergence(posterior, z.unsqueeze(0), log_prior.unsqueeze(0), log_posterior.unsqueeze(0))
    return log_likelihood - kl, log_likelihood + log_prior - log_posterior


def gaussian(loc: torch.Tensor, log_variance: torch.Tensor) -> Independent:
    return Independent(Normal(loc, torch.exp(0.5 * log_variance), validate_args=False), 1)


def fit_local_posteriors(
    model: Any, x: torch.Tensor, start: Normal, settings: InferenceGapSettings, generator: torch.Generator | ImageNoise
) -> Independent:
    """q*(z|x_n) for each image of ``x``: the mean and log-variance of a diagonal Gaussian, from the
    encoder's ``start``, by Adam on the sum over images of the K-sample ELBO (Adam acts elementwise,
    so this is each image's own optimisation); only these tensors get gradients (decoder frozen)."""
    loc = start.loc.detach().clone().requires_grad_(True)
    log_variance = (2 * start.scale.detach().log()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_variance], lr=settings.lr)
    # The learning rate anneals to 0 (cosine): at a constant rate, Adam's normalised steps would leave
    # q* jittering around its optimum by about lr, costing a few hundredths of a nat of ELBO.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    with torch.enable_grad():
        for _ in range(settings.steps):
            q = gaussian(loc, log_variance)
            noise = standard_normal(generator, settings.n_samples, loc.detach())
            z = q.base_dist.loc + q.base_dist.scale * noise
            integrand, _ = elbo_samples(model, x, q, z)
            loss = -integrand.mean(0).sum()
            loc.grad, log_variance.grad = torch.autograd.grad(loss, [loc, log_variance])
            optimizer.step()
            schedule.step()
    return gaussian(loc.detach(), log_variance.detach())


@dataclass
class GapEstimates:
    """Per-image estimates [B] and their Monte Carlo variances, for one batch of images."""

    elbo_encoder: torch.Tensor
    elbo_optimized: torch.Tensor
    amortization_variance: torch.Tensor
    elbo_optimized_variance: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_variance: torch.Tensor
    log_likelihood_encoder: torch.Tensor


def log_mean_exp_and_variance(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log (1/k) sum_i w_i over dim 0, the delta-method variance Var(w) / (k mean(w)^2) of that estimate)."""
    k = log_weights.shape[0]
    estimate = torch.logsumexp(log_weights, 0) - math.log(k)
    relative = torch.exp(log_weights - estimate)  # w_i / mean(w)
    return estimate, relative.var(0, correction=1) / k if k > 1 else torch.zeros_like(estimate)


def gap_estimates(
    model: Any,
    x: torch.Tensor,
    encoder: Independent,
    optimized: Independent,
    k: int,
    chunk: int,
    generator: torch.Generator | ImageNoise,
) -> GapEstimates:
    """ELBO[q] and ELBO[q*] on the same k noise draws, log p(x) by importance sampling with q* (and,
    for comparison, with q) as the proposal; the log-weights of all k samples go through one logsumexp."""
    columns: dict[str, list[torch.Tensor]] = {"encoder": [], "optimized": [], "log_w": [], "log_w_encoder": []}
    with torch.inference_mode():
        for start in range(0, k, chunk):
            noise = standard_normal(generator, min(chunk, k - start), encoder.base_dist.loc)
            pairs = ((encoder, "encoder", "log_w_encoder"), (optimized, "optimized", "log_w"))
            for q, integrand_name, weight_name in pairs:
                integrand, log_weight = elbo_samples(model, x, q, q.base_dist.loc + q.base_dist.scale * noise)
                columns[integrand_name].append(integrand.double())
                columns[weight_name].append(log_weight.double())
    encoder_terms, optimized_terms = torch.cat(columns["encoder"]), torch.cat(columns["optimized"])
    log_likelihood, log_likelihood_variance = log_mean_exp_and_variance(torch.cat(columns["log_w"]))
    log_likelihood_encoder, _ = log_mean_exp_and_variance(torch.cat(columns["log_w_encoder"]))
    correction = 1 if k > 1 else 0
    return GapEstimates(
        elbo_encoder=encoder_terms.mean(0),
        elbo_optimized=optimized_terms.mean(0),
        amortization_variance=(optimized_terms - encoder_terms).var(0, correction=correction) / k,
        elbo_optimized_variance=optimized_terms.var(0, correction=correction) / k,
        log_likelihood=log_likelihood,
        log_likelihood_variance=log_likelihood_variance,
        log_likelihood_encoder=log_likelihood_encoder,
    )


@dataclass
class InferenceGapResult:
    """Averages over the ``n_images`` images (nats per image) and Monte Carlo standard errors."""

    approximation_gap: float
    approximation_gap_stderr: float
    amortization_gap: float
    amortization_gap_stderr: float
    log_likelihood: float
    log_likelihood_encoder_proposal: float
    elbo_encoder: float
    elbo_optimized: float
    settings: InferenceGapSettings
    n_importance_samples: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        """The summary.json metrics, with their Monte Carlo standard errors (``*_stderr``)."""
        return {
            "test/approximation_gap": self.approximation_gap,
            "test/approximation_gap_stderr": self.approximation_gap_stderr,
            "test/amortization_gap": self.amortization_gap,
            "test/amortization_gap_stderr": self.amortization_gap_stderr,
        }

    def details(self) -> dict[str, Any]:
        return {
            **{field.name: getattr(self.settings, field.name) for field in fields(self.settings)},
            "n_importance_samples": self.n_importance_samples,
            "approximation_gap_stderr": self.approximation_gap_stderr,
            "amortization_gap_stderr": self.amortization_gap_stderr,
            "log_likelihood": self.log_likelihood,
            "log_likelihood_encoder_proposal": self.log_likelihood_encoder_proposal,
            "elbo_encoder": self.elbo_encoder,
            "elbo_optimized": self.elbo_optimized,
            "seconds": self.seconds,
            "estimator": "q* = per-image diagonal Gaussian fitted by Adam from the encoder's output; ELBOs on common "
            "noise; log p(x) by importance sampling with q* as the proposal",
        }

    def rows(self) -> list[tuple[str, str]]:
        n = self.settings.n_images
        approximation = f"{self.approximation_gap:.3f} ± {self.approximation_gap_stderr:.3f} nats"
        amortization = f"{self.amortization_gap:.3f} ± {self.amortization_gap_stderr:.3f} nats"
        return [
            (f"approximation gap, {n} images", approximation),
            (f"amortization gap, {n} images", amortization),
            (
                "  -log p(x) (q*) | -ELBO[q*] | -ELBO[q]",
                f"{-self.log_likelihood:.3f} | {-self.elbo_optimized:.3f} | {-self.elbo_encoder:.3f} nats",
            ),
        ]


def inference_gaps(
    model: Any,
    images: torch.Tensor,
    settings: InferenceGapSettings,
    n_importance_samples: int,
    samples_per_chunk: int,
    seed: int,
) -> InferenceGapResult:
    """The approximation and amortization gaps on the first ``settings.n_images`` of ``images``,
    batches of ``settings.images_per_batch`` images (see the module docstring); the noise of the fits
    and of the importance samples is each image's own (vae_lab.evaluation.noise, from ``seed``), so
    the gaps do not depend on the batches or the chunks."""
    started = time.perf_counter()
    if settings.n_images > images.shape[0]:
        raise ConfigError(
            f"eval.inference_gap.n_images={settings.n_images} but only {images.shape[0]} test images are evaluated; "
            "use a smaller number."
        )
    device = next(model.parameters()).device
    estimates: list[GapEstimates] = []
    for start in range(0, settings.n_images, settings.images_per_batch):
        x = images[start : min(settings.n_images, start + settings.images_per_batch)].to(device)
        batch = range(start, start + x.shape[0])
        with torch.inference_mode():
            encoder = model.posterior(x)
        base = diagonal_gaussian(encoder)
        if base is None:
            raise ConfigError(f"eval.inference_gap {unsupported_family(encoder)}; set eval.inference_gap.n_images=0.")
        encoder = gaussian(base.loc.clone(), 2 * base.scale.clone().log())
        fit_noise = ImageNoise(seed, batch, "inference_gap.fit")
        optimized = fit_local_posteriors(model, x, encoder.base_dist, settings, fit_noise)
        noise = ImageNoise(seed, batch, "inference_gap.importance")
        estimates.append(gap_estimates(model, x, encoder, optimized, n_importance_samples, samples_per_chunk, noise))
    joined = {name: torch.cat([getattr(e, name) for e in estimates]) for name in GapEstimates.__dataclass_fields__}
    n = settings.n_images

    def mean(name: str) -> float:
        return float(joined[name].mean())

    def stderr(*names: str) -> float:
        return math.sqrt(float(sum(joined[name].sum() for name in names))) / n

    return InferenceGapResult(
        approximation_gap=mean("log_likelihood") - mean("elbo_optimized"),
        approximation_gap_stderr=stderr("log_likelihood_variance", "elbo_optimized_variance"),
        amortization_gap=mean("elbo_optimized") - mean("elbo_encoder"),
        amortization_gap_stderr=stderr("amortization_variance"),
        log_likelihood=mean("log_likelihood"),
        log_likelihood_encoder_proposal=mean("log_likelihood_encoder"),
        elbo_encoder=mean("elbo_encoder"),
        elbo_optimized=mean("elbo_optimized"),
        settings=settings,
        n_importance_samples=n_importance_samples,
        seconds=round(time.perf_counter() - started, 2),
    )
