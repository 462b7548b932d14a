"""Exact evaluation of a trained VAE on the test set: the importance-sampled log-likelihood, the
ELBO, bits/dim of both, active units and the KL of each latent dimension.

The log-likelihood is estimated by importance sampling with the encoder as proposal (Rezende et al.
2014, appendix E; Burda et al. 2016, eq. 8, the bound L_k):

    log p(x) ~= log (1/k) sum_i w_i,   w_i = p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x),

a lower bound in expectation that tightens as k grows. q(z|x) is computed once per data point; the
k log-weights of every data point are gathered in chunks of samples that fit a memory budget, and
then go through ONE logsumexp over all k. (The mean of the estimates of chunks of S samples would
estimate L_S, a looser bound.) Data points and samples are batched together: a chunk of S samples for B images
is z of shape [S, B, latent_dim], decoded in one call.

The noise is drawn per image and per sample (vae_lab.evaluation.noise), so the figures do not depend on
the batches, the chunks or the thread count beyond float rounding; the thread count is measured on the
first batches (vae_lab.evaluation.thread_choice).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, TransformedDistribution

from vae_lab.errors import ConfigError
from vae_lab.evaluation.decompositions import (
    InferenceGapResult,
    InferenceGapSettings,
    SurgeryResult,
    SurgerySettings,
    diagonal_gaussian,
    elbo_surgery,
    inference_gaps,
    settings_from,
    unsupported_family,
)
from vae_lab.evaluation.noise import ImageNoise, standard_normal, stream_generator
from vae_lab.evaluation.progress import CountProgress
from vae_lab.evaluation.thread_choice import ThreadChoice
from vae_lab.model.objectives import ELBOTerms
from vae_lab.model.posteriors import MOMENT_SAMPLES, has_closed_form_moments, latent_dtype
from vae_lab.model.vae import VAE, kl_per_dim_names
from vae_lab.ranges import SEED, at_least, check_fields, greater_than

log = logging.getLogger(__name__)

#: Burda et al. (2016, sec. 5.2): unit u is active when Cov_x(E_q(z|x)[z_u]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01
#: Temporaries per decoder output value while log p(x|z) is computed (the elementwise terms of the
#: log-probability and their intermediates). With every decoder activation counted as well, the
#: estimate is conservative: the default MNIST model peaked at about 45% of the budget (measured).
LIKELIHOOD_TEMPORARIES = 4
#: Temporaries per latent value: the noise, z, log p(z) and log q(z|x) elementwise.
LATENT_TEMPORARIES = 4
#: The fewest images a batch holds, so that the encoder and the per-batch bookkeeping run on
#: batches even when the memory budget is small.
MIN_IMAGES_PER_BATCH = 16
#: The memory budget when none is set. On the CPU, chunks that stay in cache run fastest: on 2 cores,
#: 1 thread, the k = 5000 evaluation took 18-25 s per 200 images with 4-32 MB chunks, 30 s with 128 MB
#: and 51 s with 512 MB; so 16 MB per thread. On a GPU, large chunks amortize kernel launches.
AUTO_BUDGET_MB_PER_CPU_THREAD = 16
AUTO_BUDGET_MB_GPU = 2048


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate (the ``eval`` block of conf/config.yaml, or conf/evaluate.yaml).

    ``images_per_batch`` and ``samples_per_chunk`` are chosen from ``memory_budget_mb`` unless set;
    ``memory_budget_mb=None`` picks cache-sized chunks on the CPU and large ones on a GPU.
    """

    n_importance_samples: Annotated[
        int, at_least(1, "k, the samples of z per test image; 5000 is the standard of Burda et al. 2016")
    ] = 5000
    seed: Annotated[int, SEED] = 0
    memory_budget_mb: Annotated[float | None, greater_than(0, "megabytes per chunk")] = None
    n_test_images: Annotated[int | None, at_least(1, "or null")] = None
    active_unit_threshold: Annotated[float, at_least(0)] = ACTIVE_UNIT_THRESHOLD
    images_per_batch: Annotated[int | None, at_least(1, "or null")] = None
    samples_per_chunk: Annotated[int | None, at_least(1, "or null")] = None
    #: ELBO surgery (vae_lab.evaluation.decompositions): z per image for each estimator; 0 skips it.
    surgery: SurgerySettings = field(default_factory=SurgerySettings)
    #: The inference gaps (vae_lab.evaluation.decompositions): n_images=0 skips them.
    inference_gap: InferenceGapSettings = field(default_factory=InferenceGapSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "surgery", settings_from(SurgerySettings, self.surgery, "surgery"))
        object.__setattr__(
            self, "inference_gap", settings_from(InferenceGapSettings, self.inference_gap, "inference_gap")
        )
        check_fields(self)
        if self.n_test_images is not None and self.inference_gap.n_images > self.n_test_images:
            raise ConfigError(
                f"inference_gap.n_images={self.inference_gap.n_images} is more than the "
                f"n_test_images={self.n_test_images} evaluated; "
                "the gaps are measured on the first of those images: lower it, or raise n_test_images."
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> EvaluationSettings:
        """Settings from a config mapping; unknown keys are refused with the list of known ones."""
        known = set(cls.__dataclass_fields__)
        values = {**{key: value for key, value in config.items() if value is not None}, **overrides}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**values)


@dataclass(frozen=True)
class ChunkPlan:
    """B images per batch (one encoder pass), S samples of z per chunk (one decoder pass on S*B z)."""

    images_per_batch: int
    samples_per_chunk: int
    bytes_per_sample: int


def decoded_values_per_sample(model: VAE) -> tuple[int, int]:
    """(values of all decoder activations, values of the decoder output) for one z: measured by
    running the decoder once with hooks on its leaf modules, so that it holds for any network."""
    return decoder_values_per_sample(model.decoder, model.prior.latent_dim)


def decoder_values_per_sample(decoder: torch.nn.Module, latent_dim: int) -> tuple[int, int]:
    """:func:`decoded_values_per_sample` of a decoder on its own (on the ``meta`` device it costs no memory)."""
    sizes: list[int] = []
    hooks = [
        module.register_forward_hook(lambda module, inputs, output: sizes.append(output.numel()))
        for module in decoder.modules()
        if not any(module.children())
    ]
    try:
        parameter = next(decoder.parameters())
        with torch.inference_mode():
            output = decoder(torch.zeros(1, latent_dim, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes) + output.numel(), output.numel()


def automatic_budget_mb(device: torch.device) -> float:
    """The memory for one chunk when the settings leave it open (see AUTO_BUDGET_MB_PER_CPU_THREAD)."""
    if device.type == "cpu":
        return AUTO_BUDGET_MB_PER_CPU_THREAD * torch.get_num_threads()
    return AUTO_BUDGET_MB_GPU


def plan_chunks(model: VAE, n_images: int, settings: EvaluationSettings) -> ChunkPlan:
    """Choose B (images per batch) and S (samples per chunk) so that one chunk's tensors fit
    ``memory_budget_mb``: S*B pairs of (sample, image) at the decoder's bytes per pair, plus the
    [k, B] log-weight buffers. The k samples are split into chunks of equal size."""
    k = settings.n_importance_samples
    activations, outputs = decoded_values_per_sample(model)
    element_size = next(model.parameters()).element_size()
    bytes_per_sample = element_size * (
        activations + LIKELIHOOD_TEMPORARIES * outputs + LATENT_TEMPORARIES * model.prior.latent_dim
    )
    budget = (settings.memory_budget_mb or automatic_budget_mb(next(model.parameters()).device)) * 2**20
    images = settings.images_per_batch or max(MIN_IMAGES_PER_BATCH, int(budget // bytes_per_sample) // k)
    images = min(images, n_images)
    # What is left per image once its three [k] buffers (log p(x|z), log p(z), log q(z|x)) are paid.
    per_image = budget / images - 3 * element_size * k
    samples = settings.samples_per_chunk or max(1, min(k, int(per_image // bytes_per_sample)))
    samples = math.ceil(k / math.ceil(k / min(samples, k)))  # equal chunks
    return ChunkPlan(images, samples, bytes_per_sample)


def draw_latents(posterior: Distribution, n: int, generator: torch.Generator | ImageNoise) -> torch.Tensor:
    """n samples z ~ q(z|x), shape [n, *batch_shape, latent_dim], from the noise of ``generator``: one
    generator for the batch, or each image's own samples (:class:`ImageNoise`, what :func:`evaluate` uses),
    so that an evaluation is repeatable without touching the global random state."""
    if isinstance(posterior, TransformedDistribution):  # a flow (vae_lab/posteriors): base noise, then each step
        z = draw_latents(posterior.base_dist, n, generator)
        for transform in posterior.transforms:
            z = transform(z)  # each step keeps this pass, so log q(z|x) needs no inverse
        return z
    base = posterior.base_dist if isinstance(posterior, Independent) else posterior
    if isinstance(base, Normal):
        return base.loc + base.scale * standard_normal(generator, n, base.loc)
    if isinstance(posterior, MultivariateNormal):  # z = mu + L eps, as MultivariateNormal.rsample
        noise = standard_normal(generator, n, posterior.loc)
        return posterior.loc + (posterior.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)
    # Any other q(z|x) samples from the global stream: fork it, seeded from the generator.
    if isinstance(generator, ImageNoise):
        seed = generator.fork_seed(posterior.mean.device)
    else:
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    devices = [posterior.mean.device] if posterior.mean.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return posterior.sample((n,))


def importance_sampled_terms(
    model: VAE, x: torch.Tensor, n_samples: int, samples_per_chunk: int, generator: torch.Generator | ImageNoise
) -> tuple[ELBOTerms, torch.Tensor]:
    """The ELBO terms of ``n_samples`` z_i ~ q(z|x) per image, gathered chunk by chunk into
    [k, B] tensors, and the posterior means E_q[z] [B, latent_dim] (exact for a Gaussian q(z|x), else
    the mean of the k draws, topped up to ``MOMENT_SAMPLES``). A Monte Carlo KL per dimension is the
    mean over all k samples too, accumulated chunk by chunk.

    q(z|x) is computed once; each chunk decodes z of shape [S, B, latent_dim] in one call.
    ``terms.importance_weighted_bound()`` is then the estimate of log p(x) with one logsumexp over
    all k log-weights (Burda et al. 2016, eq. 8)."""
    posterior = model.posterior(x)
    batch = x.shape[0]
    dtype = latent_dtype(posterior)
    exact_mean = has_closed_form_moments(posterior)
    z_sum = 0.0
    per_dim_sum: torch.Tensor | None = None  # a Monte Carlo KL per dimension, summed over the samples
    log_likelihood, log_prior, log_posterior = (
        torch.empty(n_samples, batch, device=x.device, dtype=dtype) for _ in range(3)
    )
    for start in range(0, n_samples, samples_per_chunk):
        stop = min(n_samples, start + samples_per_chunk)
        z = draw_latents(posterior, stop - start, generator)  # [S, B, latent_dim]
        log_likelihood[start:stop] = model.observation_model(z).log_prob(x)
        log_prior[start:stop] = model.prior.log_prob(z)
        log_posterior[start:stop] = posterior.log_prob(z)
        if not exact_mean:
            z_sum = z_sum + z.sum(0)
        if not model.use_analytic_kl:
            _, chunk_per_dim = model.kl_divergence(posterior, z, log_prior[start:stop], log_posterior[start:stop])
            if chunk_per_dim is not None:
                chunk_sum = chunk_per_dim * (stop - start)
                per_dim_sum = chunk_sum if per_dim_sum is None else per_dim_sum + chunk_sum
    # The total KL uses all k samples (the buffers); so does a Monte Carlo KL per dimension (the sums).
    kl, kl_per_dim = model.kl_divergence(posterior, z, log_prior, log_posterior)
    if per_dim_sum is not None:
        kl_per_dim = per_dim_sum / n_samples
    if exact_mean:
        means = posterior.mean
    else:  # at least MOMENT_SAMPLES draws: the noise of the mean adds Var_q(z_u) / draws to the activity
        extra = max(0, MOMENT_SAMPLES - n_samples)
        if extra:
            z_sum = z_sum + draw_latents(posterior, extra, generator).sum(0)
        means = z_sum / (n_samples + extra)
    return ELBOTerms(log_likelihood, log_prior, log_posterior, kl, kl_per_dim), means


def active_units(posterior_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """(number of active units, the activity Cov_x(E_q(z|x)[z_u]) of each unit) from the posterior
    means of the test images [N, latent_dim] (Burda et al. 2016, sec. 5.2)."""
    activity = posterior_means.double().var(dim=0, correction=1)
    return int((activity > threshold).sum()), activity


@dataclass
class EvaluationResult:
    """Test-set averages in nats per image; bits/dim with the data form's offset."""

    n_importance_samples: int
    n_images: int
    seed: int
    log_likelihood: float
    elbo: float
    bpd_importance_sampled: float
    bpd_elbo: float
    active_units: int
    active_unit_threshold: float
    latent_dim: int
    unit_activity: list[float]
    kl_per_dim: list[float] | None
    images_per_batch: int
    samples_per_chunk: int
    seconds: float
    surgery: SurgeryResult | None = None
    inference_gap: InferenceGapResult | None = None
    notes: list[str] = field(default_factory=list)
    #: Draws of z per image behind E_q[z] for the active units: 0 where q(z|x) has it in closed form
    #: (Gaussian), else max(k, MOMENT_SAMPLES): the importance samples, topped up (a flow posterior).
    posterior_mean_samples: int = 0
    #: The torch threads the evaluation ran on after its first batches (vae_lab.evaluation.thread_choice),
    #: and the seconds per image of each candidate's fastest timed batch (None: one candidate, not timed).
    threads: int = 1
    thread_timings: dict[str, float] | None = None

    def metrics(self) -> dict[str, Any]:
        """The summary.json metrics: ``test/nll_is`` (-log p(x), positive nats), ``test/bpd_is``,
        the ELBO over the same k samples, ``test/active_units``, ``test/kl_per_dim`` (when the
        model's KL splits by dimension)."""
        metrics: dict[str, Any] = {
            "test/nll_is": -self.log_likelihood,
            "test/bpd_is": self.bpd_importance_sampled,
            "test/elbo_k_samples": self.elbo,
            "test/bpd_elbo_k_samples": self.bpd_elbo,
            "test/active_units": self.active_units,
        }
        if self.kl_per_dim is not None:
            metrics["test/kl_per_dim"] = self.kl_per_dim
        for part in (self.surgery, self.inference_gap):
            if part is not None:
                metrics.update(part.metrics())
        return metrics

    def details(self) -> dict[str, Any]:
        """How the numbers were obtained (for summary.json's ``evaluation`` block)."""
        fields = asdict(self)
        details = {
            key: fields[key]
            for key in (
                "n_importance_samples",
                "n_images",
                "seed",
                "active_unit_threshold",
                "unit_activity",
                "images_per_batch",
                "samples_per_chunk",
                "seconds",
                "posterior_mean_samples",
                "threads",
            )
        }
        if self.thread_timings is not None:
            details["seconds_per_image_by_threads"] = self.thread_timings
        for name, part in (("surgery", self.surgery), ("inference_gap", self.inference_gap)):
            if part is not None:
                details[name] = part.details()
        return {**details, **({"notes": self.notes} if self.notes else {})}

    def table(self, extra_rows: Sequence[tuple[str, str]] = ()) -> str:
        """A short plain-text table of the figures (and of ``extra_rows``: (name, value))."""
        kl = "n/a (q(z|x) or p(z) does not factorize)"
        if self.kl_per_dim is not None:
            kl = f"sum {sum(self.kl_per_dim):.2f}, max {max(self.kl_per_dim):.2f} nats over {self.latent_dim} dims"
        rows = [
            ("-log p(x), IS (test/nll_is)", f"{-self.log_likelihood:.3f} nats"),
            ("bits/dim, IS (test/bpd_is)", f"{self.bpd_importance_sampled:.4f}"),
            ("ELBO, same samples", f"{self.elbo:.3f} nats"),
            ("bits/dim, ELBO", f"{self.bpd_elbo:.4f}"),
            (
                f"active units (Cov > {self.active_unit_threshold:g})",
                f"{self.active_units} / {self.latent_dim}"
                + (f" (E_q[z] from {self.posterior_mean_samples} samples)" if self.posterior_mean_samples else ""),
            ),
            ("KL per dimension", kl),
            ("k, test images, seed", f"{self.n_importance_samples}, {self.n_images}, {self.seed}"),
            ("batch x chunk", f"{self.images_per_batch} images x {self.samples_per_chunk} samples"),
            ("time", f"{self.seconds:.1f} s on {self.threads} thread{'s' if self.threads > 1 else ''}"),
            *(self.surgery.rows() if self.surgery is not None else []),
            *(self.inference_gap.rows() if self.inference_gap is not None else []),
            *(("note", note) for note in self.notes),
            *extra_rows,
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate(
    model: VAE,
    images: torch.Tensor,
    settings: EvaluationSettings,
    progress: Callable[[int, int], None] | None = None,
    threads: Sequence[int] | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` on ``images`` [N, C, H, W] (test images in the form the data module
    serves): batches of B images, chunks of S samples, all under ``torch.inference_mode``.

    ``threads``: the torch thread counts to choose from, by timing the first batches (see
    vae_lab.evaluation.thread_choice; None keeps the current count); the chunks are planned for the
    largest, and the thread count in force before is restored at the end."""
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    choice = ThreadChoice(threads or [threads_before])
    try:
        choice.set(choice.candidates[-1])  # the plan's automatic budget grows with the threads
        return run_evaluation(model, images, settings, progress, choice, started)
    finally:
        choice.set(threads_before)


def run_evaluation(
    model: VAE,
    images: torch.Tensor,
    settings: EvaluationSettings,
    progress: Callable[[int, int], None] | None,
    choice: ThreadChoice,
    started: float,
) -> EvaluationResult:
    """The body of :func:`evaluate`, on the threads ``choice`` sets batch by batch."""
    if settings.n_test_images is not None:
        if settings.n_test_images > images.shape[0]:
            raise ConfigError(
                f"n_test_images={settings.n_test_images} but the test set has {images.shape[0]} images; "
                "use a smaller number, or null for all."
            )
        images = images[: settings.n_test_images]
    n_images, k = images.shape[0], settings.n_importance_samples
    plan = plan_chunks(model, n_images, settings)
    device = next(model.parameters()).device
    totals = {"log_likelihood": 0.0, "elbo": 0.0, "kl": 0.0}
    kl_per_dim_total: torch.Tensor | None = None
    posterior_means = []
    posteriors: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if settings.surgery.n_samples else None
    notes: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n_images, plan.images_per_batch):
                x = images[start : start + plan.images_per_batch].to(device)
                noise = ImageNoise(settings.seed, range(start, start + x.shape[0]), "importance")
                with choice.timed(x.shape[0]):
                    terms, means = importance_sampled_terms(model, x, k, plan.samples_per_chunk, noise)
                    totals["log_likelihood"] += float(terms.importance_weighted_bound().double().sum())
                    totals["elbo"] += float(terms.elbo.double().sum())
                    totals["kl"] += float(terms.kl.double().sum())
                posterior_means.append(means.cpu())
                if posteriors is not None:
                    posteriors = collect_posterior(model, x, posteriors, notes)
                if terms.kl_per_dim is not None:
                    batch_sum = terms.kl_per_dim.double().sum(0).cpu()
                    kl_per_dim_total = batch_sum if kl_per_dim_total is None else kl_per_dim_total + batch_sum
                if progress is not None:
                    progress(min(n_images, start + plan.images_per_batch), n_images)
            choice.settle()  # the chosen count, for what follows
            surgery = (
                None
                if not posteriors
                else elbo_surgery(
                    *(torch.cat(part) for part in zip(*posteriors, strict=True)),
                    model.prior.log_prob,
                    totals["kl"] / n_images,
                    settings.surgery.n_samples,
                    stream_generator(settings.seed, "surgery", device),
                )
            )
        gaps = None
        if settings.inference_gap.n_images:
            gaps = inference_gaps(model, images, settings.inference_gap, k, plan.samples_per_chunk, settings.seed)
    finally:
        model.train(was_training)
    log_likelihood = totals["log_likelihood"] / n_images
    elbo = totals["elbo"] / n_images
    n_active, activity = active_units(torch.cat(posterior_means), settings.active_unit_threshold)
    bits_per_dim = model.data_form.bits_per_dim
    return EvaluationResult(
        n_importance_samples=k,
        n_images=n_images,
        seed=settings.seed,
        log_likelihood=log_likelihood,
        elbo=elbo,
        bpd_importance_sampled=float(bits_per_dim(torch.tensor(-log_likelihood, dtype=torch.float64), model.n_dims)),
        bpd_elbo=float(bits_per_dim(torch.tensor(-elbo, dtype=torch.float64), model.n_dims)),
        active_units=n_active,
        active_unit_threshold=settings.active_unit_threshold,
        latent_dim=activity.shape[0],
        unit_activity=activity.tolist(),
        kl_per_dim=None if kl_per_dim_total is None else (kl_per_dim_total / n_images).tolist(),
        images_per_batch=plan.images_per_batch,
        samples_per_chunk=plan.samples_per_chunk,
        seconds=round(time.perf_counter() - started, 2),
        surgery=surgery,
        inference_gap=gaps,
        notes=notes,
        posterior_mean_samples=0 if model.posterior_family.is_gaussian else max(k, MOMENT_SAMPLES),
        threads=choice.chosen,
        thread_timings=choice.details(),
    )


def collect_posterior(
    model: VAE, x: torch.Tensor, collected: list[tuple[torch.Tensor, torch.Tensor]], notes: list[str]
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Append the (mean, scale) of q(z|x) for ELBO surgery; None (and a note) for a posterior that is
    not a diagonal Gaussian, whose aggregate this estimator does not cover."""
    posterior = model.posterior(x)
    base = diagonal_gaussian(posterior)
    if base is None:
        notes.append(f"ELBO surgery skipped: it {unsupported_family(posterior)}")
        return None
    collected.append((base.loc, base.scale))
    return collected


class ProgressPrinter(CountProgress):
    """A ``progress`` callback for :func:`evaluate` (vae_lab.evaluation.progress.CountProgress): a bar with the
    rate and ETA on a terminal, elsewhere a line with them each time another tenth of the test set is done."""

    def __init__(self) -> None:
        super().__init__("test images", "vae_lab.evaluate")


def evaluate_at_end_of_training(
    cfg: Mapping[str, Any],
    model: VAE,
    datamodule: Any,
    loggers: Sequence[Any] = (),
    step: int = 0,
    safe_point: Callable[[int, int], None] | None = None,
    threads: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The evaluation train.py runs on the best checkpoint after ``trainer.test`` (rank 0 only):
    settings from the config's ``eval`` block, ``eval.n_importance_samples=0`` skips it. Returns the
    metrics for summary.json and logs them, at ``step``, to every Lightning logger of the run
    (metrics.csv, wandb). ``safe_point(done, total)`` runs after every batch of images: where a
    signal may stop the evaluation (vae_lab.run.interrupts). ``threads``: the thread counts it may
    choose from (vae_lab.run.threads.evaluation_threads); training's count is restored after it."""
    config = dict(cfg.get("eval") or {})
    if not config.get("n_importance_samples", EvaluationSettings.n_importance_samples):
        return {}
    config.setdefault("seed", cfg.get("seed", 0))
    settings = EvaluationSettings.from_config(config)
    datamodule.setup("test")
    printer = ProgressPrinter()

    def progress(done: int, total: int) -> None:
        printer(done, total)
        if safe_point is not None:
            safe_point(done, total)

    result = evaluate(model, datamodule.splits["test"], settings, progress=progress, threads=threads)
    log.info(result.table())
    metrics = result.metrics()
    for logger in loggers:
        log_metrics(logger, metrics, step)
    return metrics


def log_metrics(logger: Any, metrics: Mapping[str, Any], step: int) -> None:
    """Log the evaluation's metrics to a Lightning logger: the scalars, and the KL per dimension as
    ``test/kl_per_dim/00`` ... (the names validation uses). wandb also gets the KL per dimension as
    a bar chart, and every metric, the list included, in its run summary; a wandb failure is
    recorded by the fail-safe logger, never fatal."""
    scalars: dict[str, float] = {name: value for name, value in metrics.items() if not isinstance(value, list)}
    per_dim = metrics.get("test/kl_per_dim")
    if per_dim is not None:
        scalars.update(zip(kl_per_dim_names("test", len(per_dim)), per_dim, strict=True))
    if not hasattr(logger, "run_safely"):  # CSV and other file loggers
        logger.log_metrics(scalars, step=step)
        logger.save()
        return

    def log_to_wandb() -> None:
        import wandb

        # The KL per dimension goes to wandb as one chart, not one scalar key per dimension.
        logged: dict[str, Any] = {name: value for name, value in metrics.items() if not isinstance(value, list)}
        if per_dim is not None:
            table = wandb.Table(columns=["dimension", "kl"], data=[[j, v] for j, v in enumerate(per_dim)])
            logged["test/kl_per_dim_chart"] = wandb.plot.bar(
                table, "dimension", "kl", title="KL per latent dimension (nats)"
            )
        logger.experiment.log(logged)
        logger.experiment.summary.update(dict(metrics))

    logger.run_safely("evaluation logging", log_to_wandb)
