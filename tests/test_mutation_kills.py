"""Unit tests written to kill the mutants that survived ``make mutation`` (docs/mutation.md): each
pins a value of the likelihoods, priors, objectives, evaluation, data forms or the report's table
that no earlier test checked."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vae_lab.data.base import ImageDataModule
from vae_lab.errors import ConfigError
from vae_lab.evaluation.importance_sampling import (
    EvaluationResult,
    EvaluationSettings,
    ProgressPrinter,
    active_units,
    automatic_budget_mb,
    collect_posterior,
    decoded_values_per_sample,
    draw_latents,
    evaluate,
    evaluate_at_end_of_training,
    importance_sampled_terms,
    log_metrics,
    plan_chunks,
)
from vae_lab.evaluation.noise import ImageNoise
from vae_lab.model.likelihoods import DiscretizedLogisticLikelihood, GaussianLikelihood, LaplaceLikelihood
from vae_lab.model.likelihoods.calibrated import CalibratedNormal, TrainingSetScale
from vae_lab.model.likelihoods.continuous_bernoulli import StableContinuousBernoulli, log_mean_of_exponential_decay
from vae_lab.model.networks import MLPEncoder
from vae_lab.model.objectives import ELBO, IWAE, ELBOTerms
from vae_lab.model.objectives.schedules import CapacitySchedule, KLWarmup, linear_ramp
from vae_lab.model.posteriors import MOMENT_SAMPLES
from vae_lab.model.priors import MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior
from vae_lab.model.priors.base import diagonal_gaussian_mixture_log_prob
from vae_lab.model.priors.vamp import EDGE
from vae_lab.report.jobs import Job as ReportJob
from vae_lab.report.table import (
    Statistic,
    build_report,
    job_cells,
    markdown_table,
    numeric_table,
    status_text,
    table_cells,
    to_csv,
)


# ---------------------------------------------------------------- the report's table
def sweep_jobs() -> list[ReportJob]:
    """Seven jobs of a batch-size sweep with two seeds: complete ones (two, one and none per
    setting), a failed, an unfinished, an interrupted and a pending one."""

    def job(batch_size: int, seed: int, status: str, summary: dict | None = None) -> ReportJob:
        return ReportJob(
            Path(f"sweep/{batch_size}-{seed}"), status, [f"data.batch_size={batch_size}", f"seed={seed}"], summary or {}
        )

    return [
        job(
            50,
            0,
            "complete",
            {
                "metrics": {"test/elbo": -100.0, "test/bpd": 0.18, "test/active_units": 10},
                "epochs": 2,
                "wall_time_seconds": 3.5,
            },
        ),
        job(100, 1, "failed", {"status": "failed", "error": "ValueError: boom\nsecond | line"}),
        job(
            50,
            1,
            "complete",
            {
                "metrics": {"test/elbo": -102.0, "test/bpd": 0.2, "test/active_units": 12},
                "epochs": 2,
                "wall_time_seconds": 4.5,
            },
        ),
        job(
            100,
            0,
            "complete",
            {"metrics": {"test/elbo": -105.5, "test/kl_per_dim": [1.0, 2.0]}, "epochs": 2, "wall_time_seconds": 2.0},
        ),
        job(200, 0, "unfinished"),
        job(200, 1, "interrupted", {"status": "interrupted", "metrics": {"test/elbo": -1.0}}),
        ReportJob(Path("sweep/(not started)"), "pending", ["data.batch_size=200", "seed=2"]),
    ]


def test_report_table_cells_are_mean_and_sample_std_over_seeds_with_each_metrics_digits() -> None:
    report = build_report(sweep_jobs())
    assert report.axes == ["data.batch_size"]
    assert report.metrics == ["test/elbo", "test/bpd", "test/active_units", "epochs", "wall_time_seconds"]
    assert report.jobs == sweep_jobs()
    header, cells = table_cells(report)
    assert header == [
        "data.batch_size",
        "seeds (n)",
        "test/elbo",
        "test/bpd",
        "test/active_units",
        "epochs",
        "wall time (s)",
        "jobs",
    ]
    assert cells == [
        ["50", "0, 1 (2)", "-101.00 ± 1.41", "0.1900 ± 0.0141", "11.0 ± 1.4", "2.0 ± 0.0", "4.0 ± 0.7", "2 complete"],
        ["100", "0 (1)", "-105.50", "-", "-", "2.0", "2.0", "1 complete, 1 failed"],
        ["200", "- (0)", "-", "-", "-", "-", "-", "0 complete, 1 unfinished, 1 pending, 1 interrupted"],
    ]
    assert [row.label() for row in report.rows] == ["data.batch_size=50", "data.batch_size=100", "data.batch_size=200"]
    assert build_report(sweep_jobs()[:1]).rows[0].label() == "all jobs"
    assert report.status_counts() == {"complete": 3, "failed": 1, "unfinished": 1, "interrupted": 1, "pending": 1}
    assert [job.status for job in report.not_complete] == ["failed", "unfinished", "interrupted", "pending"]


def test_status_text_counts_each_status_once() -> None:
    jobs = sweep_jobs()
    report = build_report(
        [
            *jobs,
            ReportJob(Path("x"), "interrupted", ["data.batch_size=200", "seed=3"]),
            ReportJob(Path("y"), "crashed", ["data.batch_size=200", "seed=4"]),
        ]
    )
    assert status_text(report.rows[2]) == "0 complete, 1 unfinished, 1 pending, 1 crashed, 2 interrupted"


def test_report_numeric_table_and_csv_hold_full_precision_and_the_jobs_not_complete() -> None:
    report = build_report(sweep_jobs())
    columns, data = numeric_table(report)
    assert columns == [
        "data.batch_size",
        "n_seeds",
        "seeds",
        "test/elbo mean",
        "test/elbo std",
        "test/bpd mean",
        "test/bpd std",
        "test/active_units mean",
        "test/active_units std",
        "epochs mean",
        "epochs std",
        "wall_time_seconds mean",
        "wall_time_seconds std",
        "complete",
        "failed",
        "diverged",
        "unfinished",
        "pending",
        "unreadable",
    ]
    expected = [
        [
            "50",
            2,
            "0 1",
            -101.0,
            math.sqrt(2),
            0.19,
            math.sqrt(2) / 100,
            11.0,
            math.sqrt(2),
            2.0,
            0.0,
            4.0,
            math.sqrt(0.5),
            2,
            0,
            0,
            0,
            0,
            0,
        ],
        ["100", 1, "0", -105.5, None, None, None, None, None, 2.0, None, 2.0, None, 1, 1, 0, 0, 0, 0],
        ["200", 0, "", *[None] * 10, 0, 0, 0, 1, 1, 0],
    ]
    assert len(data) == len(expected)
    for line, wanted in zip(data, expected, strict=True):
        assert line == [pytest.approx(v) if isinstance(v, float) else v for v in wanted]
    text = to_csv(report)
    assert "\r" not in text and text.endswith("\n") and text.count("\n") == 4
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [*columns, "not_complete_jobs"]
    for row, line, jobs in zip(
        rows[1:],
        data,
        ["", "failed:sweep/100-1", "unfinished:sweep/200-0;interrupted:sweep/200-1;pending:sweep/(not started)"],
        strict=True,
    ):
        assert row == ["" if value is None else str(value) for value in line] + [jobs]


def test_markdown_table_and_the_list_of_jobs_not_complete() -> None:
    assert markdown_table(["a", "b|c"], [["x\n  y", 1], ["", "z"]]) == "| a | b\\|c |\n|---|---|\n| x y | 1 |\n|  | z |"
    header, cells = job_cells(build_report(sweep_jobs()))
    assert header == ["status", "job", "data.batch_size", "seed", "error"]
    assert cells == [
        ["failed", "sweep/100-1", "100", "1", "ValueError: boom\nsecond | line"],
        ["unfinished", "sweep/200-0", "200", "0", ""],
        ["interrupted", "sweep/200-1", "200", "1", ""],
        ["pending", "sweep/(not started)", "200", "2", ""],
    ]


def test_statistic_of_values() -> None:
    assert Statistic.of([]) is None
    one = Statistic.of([3.25])
    assert (one.mean, one.std, one.n) == (3.25, None, 1)
    assert one.format(1) == "3.2" and one.format(3) == "3.250"
    two = Statistic.of([1.0, 2.0, 6.0])
    assert (two.mean, two.n) == (3.0, 3) and two.std == pytest.approx(math.sqrt(7.0))
    assert two.format(2) == "3.00 ± 2.65"


# ---------------------------------------------------------------- evaluation


def evaluation_result(kl_per_dim: list[float] | None = (0.5, 2.25)) -> EvaluationResult:
    return EvaluationResult(
        n_importance_samples=500,
        n_images=200,
        seed=7,
        log_likelihood=-91.25,
        elbo=-97.5,
        bpd_importance_sampled=0.1679,
        bpd_elbo=0.1794,
        active_units=3,
        active_unit_threshold=0.01,
        latent_dim=4,
        unit_activity=[1.0, 0.5, 0.02, 0.001],
        kl_per_dim=None if kl_per_dim is None else list(kl_per_dim),
        images_per_batch=100,
        samples_per_chunk=250,
        seconds=12.5,
        threads=2,
        thread_timings={"1": 0.04, "2": 0.025},
    )


def test_evaluation_metrics_and_details_name_every_figure() -> None:
    result = evaluation_result()
    assert result.metrics() == {
        "test/nll_is": 91.25,
        "test/bpd_is": 0.1679,
        "test/elbo_k_samples": -97.5,
        "test/bpd_elbo_k_samples": 0.1794,
        "test/active_units": 3,
        "test/kl_per_dim": [0.5, 2.25],
    }
    assert "test/kl_per_dim" not in evaluation_result(kl_per_dim=None).metrics()
    assert result.details() == {
        "n_importance_samples": 500,
        "n_images": 200,
        "seed": 7,
        "active_unit_threshold": 0.01,
        "unit_activity": [1.0, 0.5, 0.02, 0.001],
        "images_per_batch": 100,
        "samples_per_chunk": 250,
        "seconds": 12.5,
        "posterior_mean_samples": 0,  # E_q[z] in closed form (a Gaussian q)
        "threads": 2,
        "seconds_per_image_by_threads": {"1": 0.04, "2": 0.025},
    }


def test_evaluation_table_lists_every_figure_aligned() -> None:
    assert evaluation_result().table([("checkpoint", "best.ckpt")]) == (
        "-log p(x), IS (test/nll_is)  91.250 nats\n"
        "bits/dim, IS (test/bpd_is)   0.1679\n"
        "ELBO, same samples           -97.500 nats\n"
        "bits/dim, ELBO               0.1794\n"
        "active units (Cov > 0.01)    3 / 4\n"
        "KL per dimension             sum 2.75, max 2.25 nats over 4 dims\n"
        "k, test images, seed         500, 200, 7\n"
        "batch x chunk                100 images x 250 samples\n"
        "time                         12.5 s on 2 threads\n"
        "checkpoint                   best.ckpt"
    )
    assert "KL per dimension             n/a (q(z|x) or p(z) does not factorize)" in evaluation_result(None).table()


def test_evaluation_settings_from_a_config() -> None:
    assert EvaluationSettings.from_config(
        {"n_importance_samples": 10, "memory_budget_mb": None}, seed=3
    ) == EvaluationSettings(n_importance_samples=10, seed=3)
    assert EvaluationSettings.from_config({"seed": 1}, seed=2).seed == 2
    with pytest.raises(ConfigError) as error:
        EvaluationSettings.from_config({"zeta": 1, "bogus": None, "seed": 0}, extra=2)
    assert str(error.value) == (
        "unknown evaluation setting(s) extra, zeta; known: active_unit_threshold, images_per_batch, inference_gap, "
        "memory_budget_mb, n_importance_samples, n_test_images, samples_per_chunk, seed, surgery."
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"n_importance_samples": 0},
            (
                "n_importance_samples=0 must be a whole number >= 1 (k, the samples of z per test image; "
                "5000 is the standard of Burda et al. 2016)."
            ),
        ),
        ({"memory_budget_mb": 0}, "memory_budget_mb=0 must be > 0 (megabytes per chunk)."),
        ({"n_test_images": 0}, "n_test_images=0 must be a whole number >= 1 (or null)."),
        ({"images_per_batch": 0}, "images_per_batch=0 must be a whole number >= 1 (or null)."),
        ({"samples_per_chunk": -1}, "samples_per_chunk=-1 must be a whole number >= 1 (or null)."),
    ],
)
def test_evaluation_settings_refuse_bad_values_naming_them(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        EvaluationSettings(**settings)
    assert str(error.value) == message


def test_evaluation_settings_accept_the_smallest_values() -> None:
    settings = EvaluationSettings(
        n_importance_samples=1, memory_budget_mb=0.5, n_test_images=1, images_per_batch=1, samples_per_chunk=1
    )
    assert (
        settings.n_importance_samples,
        settings.n_test_images,
        settings.images_per_batch,
        settings.samples_per_chunk,
    ) == (1, 1, 1, 1)


def progress_counts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``done/total`` of each progress line that vae_lab.evaluation.importance_sampling logged (stderr is no
    terminal here)."""
    prefix = "vae_lab.evaluate: "
    return [
        r.getMessage()[len(prefix) :].split(" test images")[0]
        for r in caplog.records
        if r.getMessage().startswith(prefix)
    ]


def test_progress_printer_prints_each_tenth_and_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vae_lab")
    printer = ProgressPrinter()
    assert printer.reported == 0
    for done in (5, 10, 15, 19, 20, 35, 99, 100):
        printer(done, 100)
    assert progress_counts(caplog) == [f"{done}/100" for done in (10, 20, 35, 99, 100)]
    assert "in all)" in caplog.records[-1].getMessage() and "left)" in caplog.records[0].getMessage()


def test_automatic_budget_is_per_cpu_thread_or_a_gpus_share() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert automatic_budget_mb(torch.device("cpu")) == 32
    finally:
        torch.set_num_threads(threads)
    assert automatic_budget_mb(torch.device("cuda")) == 2048


def test_active_units_need_more_than_the_threshold() -> None:
    means = torch.tensor([[0.0, 1.0, 0.0], [0.2, -1.0, 0.0], [0.4, 0.0, 0.0]])
    _, activity = active_units(means)
    torch.testing.assert_close(activity, torch.tensor([0.04, 1.0, 0.0], dtype=torch.float64))  # sample variances
    count, _ = active_units(means, threshold=float(activity[0]))  # unit 0 sits exactly at the threshold
    assert activity.dtype == torch.float64 and count == 1
    assert active_units(means)[0] == 2


def test_log_metrics_to_a_csv_logger_writes_the_kl_per_dimension_as_scalars(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="", version="")
    log_metrics(logger, {"test/nll_is": 91.5, "test/kl_per_dim": [0.25] * 9 + [4.0, 1.5]}, step=7)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 1
    row = {key: float(value) for key, value in rows[0].items()}
    assert row == {
        "step": 7.0,
        "test/nll_is": 91.5,
        **{f"test/kl_per_dim/{j:02d}": 0.25 for j in range(9)},
        "test/kl_per_dim/09": 4.0,
        "test/kl_per_dim/10": 1.5,
    }


# ---------------------------------------------------------------- priors


class SyntheticImages(ImageDataModule):
    """A real data module over 40 training and 12 test images of 2x3 grey pixels made in memory
    (the data-module logic, splits and served forms included, without reading a data set)."""

    image_shape = (1, 2, 3)
    name = "synthetic images"

    def expected_files(self) -> list[Path]:
        return []

    def how_to_get(self) -> str:
        return "They are made in memory."

    def file_problems(self) -> list[str]:
        return []  # no files to damage

    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(11)
        images = torch.randint(0, 256, (52, *self.image_shape), generator=generator, dtype=torch.uint8)
        return images[:40], images[40:]


def synthetic_images(data_form: str = "continuous", seed: int = 3) -> SyntheticImages:
    return SyntheticImages(root=".", data_form=data_form, batch_size=4, eval_batch_size=8, val_size=10, seed=seed)


def test_diagonal_gaussian_mixture_log_prob_keeps_any_batch_shape() -> None:
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(5, 2, generator=generator)
    scale = torch.rand(5, 2, generator=generator) + 0.5
    log_weights = torch.log_softmax(torch.randn(5, generator=generator), dim=0)
    z = torch.randn(4, 3, 2, generator=generator)  # [L, B, D] with L, B and D all different
    expected = MixtureSameFamily(Categorical(logits=log_weights), Independent(Normal(loc, scale), 1)).log_prob(z)
    value = diagonal_gaussian_mixture_log_prob(z, loc, scale, log_weights)
    assert value.shape == (4, 3) and value.dtype == z.dtype
    torch.testing.assert_close(value, expected)


def test_mixture_of_gaussians_defaults_are_the_documented_ones() -> None:
    torch.manual_seed(5)
    prior = MixtureOfGaussiansPrior(latent_dim=3)
    torch.manual_seed(5)
    expected_means = 0.1 * torch.randn(10, 3)
    assert prior.latent_dim == 3 and prior.n_components == 10
    torch.testing.assert_close(prior.means.detach(), expected_means)
    torch.testing.assert_close(prior.log_scales.detach(), torch.zeros(10, 3))
    assert isinstance(prior.logits, torch.nn.Parameter) and bool((prior.logits == 0).all())
    fixed = MixtureOfGaussiansPrior(latent_dim=2, n_components=1, learn_weights=False)
    assert fixed.n_components == 1 and fixed.means.shape == (1, 2)
    assert [name for name, _ in fixed.named_parameters()] == ["means", "log_scales"]
    assert dict(fixed.named_buffers()).keys() == {"logits"}
    torch.testing.assert_close(fixed.logits, torch.zeros(1))
    with pytest.raises(ConfigError) as error:
        MixtureOfGaussiansPrior(latent_dim=2, n_components=0)
    assert str(error.value) == "prior.n_components=0 must be a whole number >= 1 (mixture components)."


def test_mixture_of_gaussians_samples_pick_a_component_then_its_gaussian() -> None:
    prior = MixtureOfGaussiansPrior(latent_dim=2, n_components=2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-5.0, 0.0], [5.0, 0.0]]))
        prior.log_scales.fill_(math.log(0.1))
        prior.logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # weights 1/4, 3/4
    torch.manual_seed(0)
    z = prior.sample(4000)
    assert z.shape == (4000, 2)
    assert float((z[:, 0] > 0).float().mean()) == pytest.approx(0.75, abs=0.03)
    assert float(z[:, 1].std()) == pytest.approx(0.1, rel=0.1)


def test_standard_normal_prior_samples_n_draws_of_n01() -> None:
    torch.manual_seed(0)
    z = StandardNormalPrior(3).sample(20_000)
    assert z.shape == (20_000, 3)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=0.03, rtol=0)


def vamp_encoder() -> MLPEncoder:
    torch.manual_seed(0)
    return MLPEncoder((1, 2, 3), 2, hidden_sizes=[])


def test_vamp_prior_random_init_is_the_papers() -> None:
    encoder = vamp_encoder()
    torch.manual_seed(1)
    prior = VampPrior(latent_dim=2, encoder=encoder, image_shape=(1, 2, 3), init="random")
    torch.manual_seed(1)
    expected = (0.05 + 0.01 * torch.randn(500, 1, 2, 3)).clamp(EDGE, 1 - EDGE)
    assert prior.latent_dim == 2 and prior.n_pseudo_inputs == 500 and prior.encoder is encoder
    torch.testing.assert_close(prior.pseudo_inputs().detach(), expected)
    shaped_by_data = VampPrior(
        latent_dim=2, encoder=encoder, datamodule=synthetic_images(), n_pseudo_inputs=1, init="random"
    )
    assert shaped_by_data.pseudo_inputs().shape == (1, 1, 2, 3)


def test_vamp_prior_data_init_takes_training_images_drawn_with_the_data_seed() -> None:
    datamodule = synthetic_images(seed=3)
    prior = VampPrior(latent_dim=2, encoder=vamp_encoder(), datamodule=datamodule, n_pseudo_inputs=30)  # all 30
    expected = datamodule.example_images("train", 30, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(prior.pseudo_inputs().detach(), expected.clamp(EDGE, 1 - EDGE))
    discrete = synthetic_images("discrete")
    eight_bit = VampPrior(latent_dim=2, encoder=vamp_encoder(), datamodule=discrete, n_pseudo_inputs=4)
    served = discrete.example_images("train", 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(eight_bit.pseudo_inputs().detach(), (served / 255).clamp(EDGE, 1 - EDGE))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"datamodule": "synthetic"},
            (
                "prior.n_pseudo_inputs=500 is more than the 30 training images to initialise them "
                "from; use prior.n_pseudo_inputs<=30 or prior.init=random."
            ),
        ),
        (
            {"datamodule": "synthetic", "n_pseudo_inputs": 31},
            (
                "prior.n_pseudo_inputs=31 is more than the 30 training "
                "images to initialise them from; use prior.n_pseudo_inputs<=30 or prior.init=random."
            ),
        ),
        ({"image_shape": (1, 2, 3), "n_pseudo_inputs": 0}, "prior.n_pseudo_inputs=0 must be a whole number >= 1."),
        ({"image_shape": (1, 2, 3), "init": "zeros"}, "prior.init='zeros' is unknown; use one of data, random."),
        ({}, "VampPrior needs the data module (or image_shape) to shape its pseudo-inputs."),
        ({"image_shape": (1, 2, 3)}, "prior.init=data needs the data module; use prior.init=random without one."),
    ],
)
def test_vamp_prior_refuses_what_cannot_work(arguments: dict, message: str) -> None:
    if arguments.get("datamodule") == "synthetic":
        arguments = {**arguments, "datamodule": synthetic_images()}
    with pytest.raises(ConfigError) as error:
        VampPrior(latent_dim=2, encoder=vamp_encoder(), **arguments)
    assert str(error.value) == message


def test_vamp_prior_one_pseudo_input_is_allowed() -> None:
    prior = VampPrior(latent_dim=2, encoder=vamp_encoder(), image_shape=(1, 2, 3), n_pseudo_inputs=1, init="random")
    z = torch.randn(3, 2)
    posterior = prior.encoder(prior.pseudo_inputs()).base_dist
    torch.testing.assert_close(
        prior.log_prob(z), Independent(Normal(posterior.loc[0], posterior.scale[0]), 1).log_prob(z)
    )


# ---------------------------------------------------------------- likelihoods and schedules
CB_LOGITS = torch.tensor([-30.0, -2.0, -0.5, 0.0, 0.5, 2.0, 30.0], dtype=torch.float64)


def test_continuous_bernoulli_cdf_is_the_closed_form_and_a_cdf_outside_0_1() -> None:
    """F(x) = (e^(eta x) - 1) / (e^eta - 1) on [0, 1] (x itself at eta = 0), 0 below and 1 above."""
    x = torch.tensor([-0.5, 0.0, 0.3, 0.7, 1.0, 1.5], dtype=torch.float64)
    eta = CB_LOGITS[:, None]
    inside = x.clamp(0, 1)
    expected = torch.where(eta == 0, inside, torch.expm1(eta * inside) / torch.expm1(torch.where(eta == 0, 1.0, eta)))
    cdf = StableContinuousBernoulli(logits=eta.expand(-1, 6), validate_args=False).cdf(x.expand(7, -1))
    torch.testing.assert_close(cdf, expected, rtol=1e-12, atol=1e-14)
    assert bool((cdf[:, 0] == 0).all()) and bool((cdf[:, -1] == 1).all())


def test_continuous_bernoulli_icdf_inverts_the_cdf_and_stays_in_0_1() -> None:
    u = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    eta = torch.cat(
        [torch.linspace(-60, 60, 241, dtype=torch.float64), torch.tensor([5e-7, -5e-7], dtype=torch.float64)]
    )
    distribution = StableContinuousBernoulli(logits=eta[:, None].expand(-1, 5), validate_args=False)
    x = distribution.icdf(u.expand(eta.shape[0], -1))
    # The formulas alone leave [0, 1] by rounding at u = 0 (eta > 0) and u = 1 (eta < 0): the clamp keeps x in it.
    assert bool(((x >= 0) & (x <= 1)).all())
    torch.testing.assert_close(distribution.cdf(x)[:, 1:-1], u[1:-1].expand(eta.shape[0], -1), rtol=0, atol=1e-9)
    # |eta| < 1e-6: u + eta u (1 - u) / 2, the expansion of log1p(u expm1(eta)) / eta.
    tiny = torch.tensor([5e-7, -5e-7], dtype=torch.float64)[:, None]
    exact = torch.log1p(u * torch.expm1(tiny)) / tiny
    torch.testing.assert_close(x[-2:], exact, rtol=0, atol=1e-13)
    torch.testing.assert_close(x[-2:], u + tiny * u * (1 - u) / 2, rtol=0, atol=1e-15)


def test_location_scale_defaults_and_gaussian_sigma() -> None:
    output = torch.randn(2, 2, 3, 4)
    assert float(LaplaceLikelihood(channels=1, scale="fixed").pixel_scale(output)) == pytest.approx(0.1)
    fixed = GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0.25)
    assert float(fixed.sigma(output)) == pytest.approx(0.25)
    per_pixel = GaussianLikelihood(channels=1, variance="per_pixel", min_sigma=0.01)
    torch.testing.assert_close(per_pixel.sigma(output), 0.01 + torch.nn.functional.softplus(output[:, 1:]))


def test_discretized_logistic_settings() -> None:
    likelihood = DiscretizedLogisticLikelihood(channels=3, n_components=2)
    assert likelihood.channels == 3 and likelihood.parameters_per_channel == 6
    with pytest.raises(ConfigError) as error:
        DiscretizedLogisticLikelihood(channels=1, n_components=0)
    assert str(error.value) == "likelihood.n_components=0 must be a whole number >= 1 (logistics in the mixture)."


def test_linear_ramp_over_any_positive_duration() -> None:
    assert linear_ramp(0.0, 1.0, end=5.0) == 0.0
    assert linear_ramp(0.5, 1.0, end=4.0, start=2.0) == 3.0
    assert linear_ramp(2.0, 1.0, end=4.0) == 4.0
    assert linear_ramp(0.0, 0.0, end=4.0) == 4.0


# ---------------------------------------------------------------- the end-of-training evaluation
class SyntheticVectors(SyntheticImages):
    """The synthetic data module with 1x1x3 images, the shape of the probabilistic-PCA model."""

    image_shape = (1, 1, 3)


def ppca_model_and_data():
    from test_evaluation import linear_gaussian_vae

    datamodule = SyntheticVectors(
        root=".", data_form="continuous", batch_size=4, eval_batch_size=8, val_size=10, seed=0
    )
    return linear_gaussian_vae().float(), datamodule


def test_end_of_training_evaluation_uses_the_eval_settings_and_logs_at_the_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    caplog.set_level("INFO", logger="vae_lab")
    model, datamodule = ppca_model_and_data()
    logger = CSVLogger(tmp_path, name="", version="")
    cfg = {"eval": {"n_importance_samples": 50, "images_per_batch": 4, "memory_budget_mb": None}, "seed": 9}
    metrics = evaluate_at_end_of_training(cfg, model, datamodule, loggers=[logger], step=3)
    datamodule.setup("test")
    expected = evaluate(
        model, datamodule.splits["test"], EvaluationSettings(n_importance_samples=50, images_per_batch=4, seed=9)
    )
    assert metrics == expected.metrics()
    assert "test/kl_per_dim" in metrics and len(metrics["test/kl_per_dim"]) == 2
    output = "\n".join(record.getMessage() for record in caplog.records)
    # every row but the wall time and thread count, which the two evaluations measure for themselves
    untimed = lambda text: re.sub(r"^time +.*$", "time", text, flags=re.M)  # noqa: E731
    assert untimed(expected.table()) in untimed(output)
    assert re.search(r"^k, test images, seed +50, 12, 9$", output, re.M)
    assert progress_counts(caplog)[-1] == "12/12"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["step"] == "3"
    assert float(rows[0]["test/nll_is"]) == pytest.approx(metrics["test/nll_is"])
    assert float(rows[0]["test/kl_per_dim/1"]) == pytest.approx(metrics["test/kl_per_dim"][1])


def test_end_of_training_evaluation_seed_defaults_and_skip(tmp_path: Path) -> None:
    model, datamodule = ppca_model_and_data()
    datamodule.setup("test")
    images = datamodule.splits["test"]
    own_seed = evaluate_at_end_of_training(
        {"eval": {"n_importance_samples": 20, "seed": 4}, "seed": 9}, model, datamodule
    )
    assert own_seed == evaluate(model, images, EvaluationSettings(n_importance_samples=20, seed=4)).metrics()
    defaults = evaluate_at_end_of_training({"seed": 2}, model, datamodule)  # no eval block: k = 5000, the run's seed
    assert defaults == evaluate(model, images, EvaluationSettings(seed=2)).metrics()
    assert evaluate_at_end_of_training({"eval": {"n_importance_samples": 0}, "seed": 2}, model, datamodule) == {}


def test_log_metrics_to_an_offline_wandb_run_logs_scalars_chart_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb_offline import find_offline_runs, read_offline_run

    from vae_lab.tracking.wandb_failsafe import FailSafeWandbLogger

    monkeypatch.chdir(tmp_path)
    logger = FailSafeWandbLogger(project="kill-tests", save_dir=str(tmp_path), offline=True)
    metrics = {"test/nll_is": 91.5, "test/active_units": 3, "test/kl_per_dim": [0.5, 2.0]}
    log_metrics(logger, metrics, step=0)
    logger.finish()
    import wandb

    wandb.teardown()  # wandb.finish returns before the service has written the run file; teardown waits for it
    assert not logger.failed
    run_dir = find_offline_runs(tmp_path)[0]
    run = read_offline_run(run_dir)
    assert len(run.history) == 1
    row = run.history[0]
    assert {key: row[key] for key in ("test/nll_is", "test/active_units")} == {
        "test/nll_is": 91.5,
        "test/active_units": 3,
    }
    assert "test/kl_per_dim" not in row  # the list goes to the summary, and as a chart
    assert not [key for key in row if key.startswith("test/kl_per_dim/")]  # no scalar key per dimension in wandb
    table = row["test/kl_per_dim_chart_table"]
    assert (table["nrows"], table["ncols"]) == (2, 2)
    assert json.loads((run_dir / "files" / table["path"]).read_text()) == {
        "columns": ["dimension", "kl"],
        "data": [[0, 0.5], [1, 2.0]],
    }
    run_file = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert b'"fieldSettings":{"label":"dimension","value":"kl"}' in run_file  # the bar chart: KL against dimension
    assert b'"stringSettings":{"title":"KL per latent dimension (nats)"}' in run_file
    assert {key: run.summary[key] for key in metrics} == metrics


# ---------------------------------------------------------------- the evaluation loop, chunk plans, latent draws
def small_vae(kl: str = "auto"):
    """An MLP VAE on 1x1x3 images: decoder 2 -> 4 (tanh) -> 3, so 4 + 4 + 3 leaf outputs per z."""
    from vae_lab.model.networks import MLPDecoder
    from vae_lab.model.objectives import ELBO
    from vae_lab.model.vae import VAE

    torch.manual_seed(0)
    return VAE(
        encoder=MLPEncoder((1, 1, 3), 2, hidden_sizes=[4]),
        decoder=MLPDecoder((1, 1, 3), 2, out_channels=1, hidden_sizes=[4]),
        likelihood=GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0.5),
        prior=StandardNormalPrior(2),
        objective=ELBO(kl=kl),
        optimizer=lambda parameters: torch.optim.Adam(parameters),
        image_shape=(1, 1, 3),
    )


def test_decoded_values_count_every_leaf_output_and_the_output() -> None:
    assert decoded_values_per_sample(small_vae()) == (4 + 4 + 3 + 3, 3)


@pytest.mark.parametrize(
    ("budget_mb", "k", "n_images", "plan"),
    [
        (0.01, 30, 20, (16, 2)),
        (0.01, 2, 100, (38, 1)),
        (0.001, 2, 20, (16, 1)),
        (1.0, 1000, 40, (16, 334)),
        (1.0, 100, 100, (77, 50)),
    ],
)
def test_chunk_plan_is_the_documented_arithmetic(
    budget_mb: float, k: int, n_images: int, plan: tuple[int, int]
) -> None:
    """bytes per (sample, image) = 4 bytes x (14 decoder values + 4 x 3 outputs + 4 x 2 latents) = 136;
    B = max(16, budget // 136 // k) images; S = (budget / B - 3 x 4 x k) // 136 samples, then equal chunks."""
    result = plan_chunks(small_vae(), n_images, EvaluationSettings(n_importance_samples=k, memory_budget_mb=budget_mb))
    assert (result.images_per_batch, result.samples_per_chunk, result.bytes_per_sample) == (*plan, 136)
    assert isinstance(result.images_per_batch, int)


def test_evaluate_sums_every_batch_and_reports_its_settings() -> None:
    """8 images in batches of 3, 3, 2: the totals of every batch, the progress after each, the
    analytic KL per dimension averaged over the images, bits/dim of a density (+8)."""
    model = small_vae().train()
    x = torch.rand(8, 1, 1, 3)
    calls = []
    settings = EvaluationSettings(
        n_importance_samples=12, seed=5, images_per_batch=3, samples_per_chunk=5, active_unit_threshold=0.5
    )
    result = evaluate(model, x, settings, progress=lambda done, total: calls.append((done, total)))
    assert model.training and calls == [(3, 8), (6, 8), (8, 8)]
    with torch.no_grad():  # each image's own noise, as evaluate() draws it
        batches = [
            importance_sampled_terms(model, x[i : i + 3], 12, 4, ImageNoise(5, range(i, min(8, i + 3)), "importance"))[
                0
            ]
            for i in (0, 3, 6)
        ]
        posterior = model.posterior(x)
    log_likelihood = sum(float(t.importance_weighted_bound().double().sum()) for t in batches) / 8
    elbo = sum(float(t.elbo.double().sum()) for t in batches) / 8
    assert result.log_likelihood == pytest.approx(log_likelihood, abs=1e-9)
    assert result.elbo == pytest.approx(elbo, abs=1e-9)
    assert result.bpd_importance_sampled == pytest.approx(-log_likelihood / (3 * math.log(2)) + 8)
    assert result.bpd_elbo == pytest.approx(-elbo / (3 * math.log(2)) + 8)
    kl_per_dim = torch.distributions.kl_divergence(posterior.base_dist, Normal(0.0, 1.0)).mean(0)
    assert result.kl_per_dim == pytest.approx(kl_per_dim.tolist(), abs=1e-6)
    activity = posterior.mean.double().var(0)
    assert result.unit_activity == pytest.approx(activity.tolist())
    assert result.active_units == int((activity > 0.5).sum()) and result.active_unit_threshold == 0.5
    assert (result.n_importance_samples, result.n_images, result.seed, result.latent_dim) == (12, 8, 5, 2)
    assert (result.images_per_batch, result.samples_per_chunk) == (3, 4)  # 12 samples in 3 equal chunks of 4
    assert result.seconds >= 0


def test_evaluate_runs_elbo_surgery_and_the_inference_gaps_with_its_settings() -> None:
    """ELBO surgery (Hoffman & Johnson 2016) on the (mu, sigma) of every image's q(z|x), against the average
    KL and with the seed's "surgery" stream; the inference gaps (Cremer et al. 2018) on the first images
    with the evaluation's k and chunk; E_q[z] exact for a Gaussian q (0 extra draws)."""
    from vae_lab.evaluation.decompositions import InferenceGapSettings, elbo_surgery, inference_gaps
    from vae_lab.evaluation.noise import stream_generator

    model = small_vae().train()
    x = torch.rand(7, 1, 1, 3)
    gap_settings = InferenceGapSettings(n_images=2, steps=3, n_samples=2, images_per_batch=2)
    settings = EvaluationSettings(
        n_importance_samples=6,
        seed=4,
        images_per_batch=3,
        samples_per_chunk=4,
        surgery={"n_samples": 3},
        inference_gap=gap_settings,
    )
    result = evaluate(model, x, settings)
    assert model.training and result.notes == [] and result.posterior_mean_samples == 0
    model.eval()
    with torch.no_grad():
        posterior = model.posterior(x)
        average_kl = float(torch.distributions.kl_divergence(posterior, model.prior.distribution()).double().mean())
        surgery = elbo_surgery(
            posterior.base_dist.loc,
            posterior.base_dist.scale,
            model.prior.log_prob,
            average_kl,
            3,
            stream_generator(4, "surgery", "cpu"),
        )
    assert asdict(result.surgery) == pytest.approx(asdict(surgery), rel=1e-9, abs=1e-12)
    gaps = inference_gaps(model, x, gap_settings, 6, result.samples_per_chunk, 4)
    measured, expected = asdict(result.inference_gap), asdict(gaps)
    assert measured.pop("settings") == expected.pop("settings") == asdict(gap_settings)
    measured.pop("seconds"), expected.pop("seconds")  # wall-clock
    assert measured == pytest.approx(expected, rel=1e-9, abs=1e-12) and measured["n_importance_samples"] == 6
    model.train()
    without = evaluate(model, x, EvaluationSettings(n_importance_samples=6, seed=4, surgery={"n_samples": 0}))
    assert without.surgery is None and without.inference_gap is None
    # summary.json's evaluation block and the printed table carry both, and the notes
    details = result.details()
    assert details["surgery"] == result.surgery.details() and details["inference_gap"] == result.inference_gap.details()
    assert "notes" not in details and "surgery" not in without.details()
    noted = replace(result, notes=["a note"], threads=1, posterior_mean_samples=1000)
    assert noted.details()["notes"] == ["a note"]
    rows = noted.table().splitlines()
    for row in (*result.surgery.rows(), *result.inference_gap.rows(), ("note", "a note")):
        assert any(line.split() == f"{row[0]}  {row[1]}".split() for line in rows), row
    assert any(line.endswith("s on 1 thread") for line in rows)
    assert any(line.endswith(" (E_q[z] from 1000 samples)") for line in rows)
    assert any(line.endswith("s on 2 threads") for line in replace(result, threads=2).table().splitlines())
    assert "E_q[z] from" not in result.table()


def test_evaluation_settings_build_the_surgery_and_gap_sections_naming_them() -> None:
    from vae_lab.evaluation.decompositions import InferenceGapSettings, SurgerySettings

    settings = EvaluationSettings(surgery={"n_samples": 2}, inference_gap={"n_images": 3, "steps": 4})
    assert settings.surgery == SurgerySettings(n_samples=2)
    assert settings.inference_gap == InferenceGapSettings(n_images=3, steps=4)
    assert EvaluationSettings(n_test_images=3, inference_gap={"n_images": 3}).inference_gap.n_images == 3
    with pytest.raises(ConfigError) as error:
        EvaluationSettings(n_test_images=3, inference_gap={"n_images": 4})
    assert str(error.value) == (
        "inference_gap.n_images=4 is more than the n_test_images=3 evaluated; the gaps are measured on the first "
        "of those images: lower it, or raise n_test_images."
    )
    for section in ("surgery", "inference_gap"):
        with pytest.raises(ConfigError, match=rf"^unknown setting\(s\) eval\.{section}\.bogus; known: "):
            EvaluationSettings(**{section: {"bogus": 1}})


def test_evaluate_of_a_flow_posterior_skips_surgery_with_a_note_and_counts_the_draws_of_its_mean() -> None:
    model = flow_vae()
    x = torch.rand(3, 1, 1, 3)
    result = evaluate(model, x, EvaluationSettings(n_importance_samples=4, seed=1, surgery={"n_samples": 2}))
    assert result.surgery is None
    assert result.notes == [
        "ELBO surgery skipped: it needs the diagonal Gaussian posterior (Independent(Normal)); this model's q(z|x) "
        "is TransformedDistribution"
    ]
    assert result.posterior_mean_samples == MOMENT_SAMPLES
    many = evaluate(model, x, EvaluationSettings(n_importance_samples=MOMENT_SAMPLES + 3, seed=1))
    assert many.posterior_mean_samples == MOMENT_SAMPLES + 3


def test_evaluate_takes_the_first_n_test_images_and_refuses_more_than_there_are() -> None:
    model, x = small_vae(), torch.rand(6, 1, 1, 3)
    first = evaluate(model, x, EvaluationSettings(n_importance_samples=4, n_test_images=4))
    assert first.n_images == 4
    assert first.log_likelihood == evaluate(model, x[:4], EvaluationSettings(n_importance_samples=4)).log_likelihood
    assert evaluate(model, x, EvaluationSettings(n_importance_samples=4, n_test_images=6)).n_images == 6
    with pytest.raises(ConfigError) as error:
        evaluate(model, x, EvaluationSettings(n_importance_samples=4, n_test_images=7))
    assert str(error.value) == "n_test_images=7 but the test set has 6 images; use a smaller number, or null for all."


def test_latents_of_a_gaussian_posterior_are_loc_plus_scale_times_the_generators_noise() -> None:
    loc = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    scale = torch.tensor([[2.0, 0.1]], dtype=torch.float64)
    for posterior in (Independent(Normal(loc, scale), 1), Normal(loc, scale)):
        z = draw_latents(posterior, 3, torch.Generator().manual_seed(4))
        noise = torch.randn((3, 1, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        assert z.dtype == torch.float64
        torch.testing.assert_close(z, loc + scale * noise, rtol=0, atol=0)


def test_latents_of_any_other_posterior_come_from_a_seed_drawn_from_the_generator() -> None:
    from torch.distributions import Laplace

    posterior = Independent(Laplace(torch.zeros(1, 2), torch.ones(1, 2)), 1)
    torch.manual_seed(123)
    z = draw_latents(posterior, 5, torch.Generator().manual_seed(4))
    after = torch.randn(1)
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(seed)
    torch.testing.assert_close(z, posterior.sample((5,)), rtol=0, atol=0)
    torch.manual_seed(123)
    torch.testing.assert_close(after, torch.randn(1))  # the global stream is left as it was


def test_latents_of_any_other_posterior_under_image_noise_come_from_the_first_images_fork_seed() -> None:
    """With each image's own noise (what evaluate() uses), a posterior without a known reparameterization
    samples from the global stream seeded by ImageNoise.fork_seed, leaving that stream as it was."""
    from torch.distributions import Laplace

    posterior = Independent(Laplace(torch.zeros(2, 2), torch.ones(2, 2)), 1)
    torch.manual_seed(123)
    z = draw_latents(posterior, 5, ImageNoise(7, range(2)))
    after = torch.randn(1)
    torch.manual_seed(ImageNoise(7, range(2)).fork_seed(torch.device("cpu")))
    torch.testing.assert_close(z, posterior.sample((5,)), rtol=0, atol=0)
    torch.manual_seed(123)
    torch.testing.assert_close(after, torch.randn(1))


def test_latents_of_a_full_covariance_posterior_are_loc_plus_the_cholesky_factor_times_the_noise() -> None:
    """z = mu + L eps, eps from the generator: what MultivariateNormal.rsample computes from its own draw."""
    from torch.distributions import MultivariateNormal

    loc = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    scale_tril = torch.tensor([[[2.0, 0.0], [0.5, 0.1]], [[1.0, 0.0], [-1.0, 3.0]]], dtype=torch.float64)
    posterior = MultivariateNormal(loc, scale_tril=scale_tril)
    z = draw_latents(posterior, 3, torch.Generator().manual_seed(4))
    noise = torch.randn((3, 2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = loc + torch.einsum("bij,nbj->nbi", scale_tril, noise)
    assert z.shape == (3, 2, 2)
    torch.testing.assert_close(z, expected)


def test_latents_of_a_flow_posterior_are_its_base_draws_through_each_step() -> None:
    """q(z|x) a TransformedDistribution (planar/IAF flows): the base Gaussian's draw from the generator,
    then every transform in order (here z = 3 exp(z0) - 1)."""
    from torch.distributions import AffineTransform, ExpTransform, TransformedDistribution

    loc = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    scale = torch.tensor([[2.0, 0.1]], dtype=torch.float64)
    posterior = TransformedDistribution(
        Independent(Normal(loc, scale), 1), [ExpTransform(), AffineTransform(-1.0, 3.0)]
    )
    z = draw_latents(posterior, 4, torch.Generator().manual_seed(2))
    noise = torch.randn((4, 1, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(z, 3.0 * torch.exp(loc + scale * noise) - 1.0)


def test_elbo_surgery_collects_the_moments_of_a_diagonal_gaussian_posterior_and_skips_any_other() -> None:
    """ELBO surgery (Hoffman & Johnson 2016) aggregates q(z|x) = N(mu, diag sigma^2): collect_posterior keeps
    (mu, sigma) of each batch; another family (a full covariance) stops the collection with a note saying why."""
    from test_evaluation import IMAGE_SHAPE, LATENT_DIM

    from vae_lab.model.networks import MLPDecoder
    from vae_lab.model.posteriors import FullCovariancePosterior
    from vae_lab.model.vae import VAE

    x = torch.rand(3, *IMAGE_SHAPE)
    for family in (None, FullCovariancePosterior):
        torch.manual_seed(0)
        model = VAE(
            encoder=MLPEncoder(IMAGE_SHAPE, LATENT_DIM, hidden_sizes=[], posterior=family),
            decoder=MLPDecoder(IMAGE_SHAPE, LATENT_DIM, out_channels=1, hidden_sizes=[]),
            likelihood=GaussianLikelihood(channels=1, variance="fixed"),
            prior=StandardNormalPrior(LATENT_DIM),
            objective=ELBO(),
            optimizer=lambda parameters: torch.optim.Adam(parameters),
            image_shape=IMAGE_SHAPE,
        )
        earlier = (torch.zeros(1, LATENT_DIM), torch.ones(1, LATENT_DIM))
        collected, notes = [earlier], []
        result = collect_posterior(model, x, collected, notes)
        if family is None:
            posterior = model.posterior(x)
            assert result is collected and len(result) == 2 and result[0] is earlier and notes == []
            torch.testing.assert_close(result[1][0], posterior.base_dist.loc)
            torch.testing.assert_close(result[1][1], posterior.base_dist.scale)
        else:
            assert result is None
            assert notes == [
                "ELBO surgery skipped: it needs the diagonal Gaussian posterior (Independent(Normal)); "
                "this model's q(z|x) is MultivariateNormal"
            ]


# ---------------------------------------------------------------- objectives
def elbo_terms(kl: float = 2.0, kl_per_dim: torch.Tensor | None = None) -> ELBOTerms:
    return ELBOTerms(
        log_likelihood=torch.tensor([[-10.0, -20.0]]),
        log_prior=torch.zeros(1, 2),
        log_posterior=torch.zeros(1, 2),
        kl=torch.full((2,), kl),
        kl_per_dim=kl_per_dim,
    )


def test_elbo_warm_up_by_epochs_weighs_the_kl_by_the_epoch() -> None:
    objective = ELBO(warmup={"epochs": 4})
    assert float(objective.kl_penalty(elbo_terms(), step=1000, epoch=2)) == pytest.approx(1.0)  # 2 nats x 2/4
    assert float(objective.loss(elbo_terms(), step=1000, epoch=1)) == pytest.approx(15.0 + 0.5)
    assert objective.logged_values(1000, 3) == {"kl_weight": 0.75}


def test_capacity_settings_are_checked_with_clear_messages() -> None:
    assert ELBO(capacity={"max": 5.0, "steps": 10, "gamma": 0}).capacity_gamma == 0.0
    assert ELBO(capacity={"max": 5.0, "steps": 10, "gamma": 0.5}).capacity_gamma == 0.5
    with pytest.raises(ConfigError) as error:
        ELBO(capacity={"max": 5.0, "steps": 10, "gamma": -1})
    assert str(error.value) == "objective.capacity.gamma=-1.0 must be >= 0."
    with pytest.raises(ConfigError) as error:
        ELBO(capacity={"max": 5.0, "steps": 10}, warmup={"steps": 3}, free_bits=0.5, kl_weight=2.0)
    assert str(error.value) == (
        "objective.capacity replaces the KL weight by gamma * |KL - C|, so it does not combine with objective.warmup, "
        "objective.free_bits, objective.kl_weight=2.0. Use one KL schedule at a time (capacity.gamma sets the weight)."
    )
    with pytest.raises(ConfigError) as error:
        ELBO(free_bits=0.5).kl_penalty(elbo_terms(), step=0, epoch=0)
    assert str(error.value) == (
        "objective.free_bits needs the KL of each latent dimension, which this prior does not give; "
        "use prior=standard, or objective.capacity instead of free bits."
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KLWarmup(steps=-1), "objective.warmup.steps=-1 must be a whole number >= 0 (or null for none)."),
        (lambda: KLWarmup(epochs=True), "objective.warmup.epochs=True must be a whole number >= 0 (or null for none)."),
        (lambda: KLWarmup(steps=1.5), "objective.warmup.steps=1.5 must be a whole number >= 0 (or null for none)."),
        (
            lambda: KLWarmup(steps=3, epochs=2),
            ("objective.warmup.steps and objective.warmup.epochs are both set; set one (the other null)."),
        ),
        (lambda: CapacitySchedule(max=-1.0, steps=3), "objective.capacity.max=-1.0 must be >= 0 (nats; null: off)."),
        (
            lambda: CapacitySchedule(max=1.0, steps=-2),
            ("objective.capacity.steps=-2 must be a whole number >= 0 (steps of the rise of C; 0: at once)."),
        ),
    ],
)
def test_schedules_refuse_bad_settings_naming_them(make, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value) == message


def test_schedules_accept_zero() -> None:
    assert KLWarmup(steps=0).factor(0, 0) == 1.0
    assert KLWarmup(epochs=0).factor(0, 0) == 1.0
    assert KLWarmup(steps=None, epochs=None).enabled is False
    assert CapacitySchedule(max=0.0, steps=0)(5) == 0.0
    assert CapacitySchedule(max=0.5, steps=4)(2) == 0.25


def test_iwae_defaults_and_logged_k() -> None:
    assert IWAE().k == 5 and IWAE().n_samples == 5
    assert IWAE(k=7).logged_values(3, 1) == {"k": 7.0}


# ---------------------------------------------------------------- likelihood settings and the CB normalizer
def test_log_mean_of_exponential_decay_meets_its_documented_error_bound() -> None:
    """log((1 - e^-r) / r): the series below 0.1 is within r^6 / 181440 of the exact value; at 0.1 and
    above, the exact form."""
    rate = torch.tensor([0.0, 1e-4, 0.05, 0.0999, 0.1, 0.5, 3.0], dtype=torch.float64)
    safe = torch.where(rate == 0, torch.ones_like(rate), rate)
    exact = torch.where(rate == 0, torch.zeros_like(rate), torch.log(-torch.expm1(-safe)) - torch.log(safe))
    value = log_mean_of_exponential_decay(rate)
    assert bool(((value - exact).abs() <= rate**6 / 181440 + 1e-15).all()), (value - exact).tolist()
    torch.testing.assert_close(value[4:], exact[4:], rtol=0, atol=1e-15)


def test_location_scale_settings_defaults_and_start() -> None:
    gaussian = GaussianLikelihood(channels=3)
    assert (gaussian.channels, gaussian.mode, gaussian.min_scale) == (3, "per_channel", 1e-3)
    assert GaussianLikelihood(channels=1, variance="fixed").fixed_scale == 0.1

    def start(floor: float) -> float:
        return float(GaussianLikelihood(channels=1, min_sigma=floor).pixel_scale(torch.zeros(1, 1, 1, 1)))

    assert start(1e-3) == pytest.approx(0.1) and start(0.04) == pytest.approx(0.1)
    assert start(0.05) == pytest.approx(0.1) and start(0.2) == pytest.approx(0.4)  # a floor above 0.05: twice the floor
    fixed = GaussianLikelihood(channels=1, variance="fixed").pixel_scale(torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    assert fixed.dtype == torch.float64 and float(fixed) == 0.1
    with pytest.raises(ConfigError) as error:
        GaussianLikelihood(channels=1, variance="bogus")
    assert (
        str(error.value)
        == "likelihood.variance='bogus' is not a scale mode; use one of fixed, per_channel, per_pixel, optimal."
    )
    with pytest.raises(ConfigError) as error:
        GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0)
    assert str(error.value) == "likelihood.fixed_sigma=0 must be > 0."
    with pytest.raises(ConfigError) as error:
        GaussianLikelihood(channels=1, variance="fixed", min_sigma=-1e-3)
    assert str(error.value) == "likelihood.min_sigma=-0.001 must be > 0."


# ---------------------------------------------------------------- the flow prior
def test_flow_prior_defaults_and_alternating_masks() -> None:
    from vae_lab.model.priors import FlowPrior
    from vae_lab.model.priors.affine_coupling import AffineCoupling

    prior = FlowPrior(latent_dim=3)
    assert prior.latent_dim == 3 and len(prior.couplings) == 4
    masks = [coupling.mask.tolist() for coupling in prior.couplings]
    assert masks == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    for coupling in (prior.couplings[0], AffineCoupling(torch.tensor([1.0, 0.0]))):
        linears = [m for m in coupling.conditioner.modules() if isinstance(m, torch.nn.Linear)]
        assert [m.out_features for m in linears][:2] == [64, 64]
        assert any(isinstance(m, torch.nn.Tanh) for m in coupling.conditioner.modules())
    one = FlowPrior(latent_dim=2, n_layers=1, hidden_size=8)
    assert len(one.couplings) == 1 and one.couplings[0].conditioner[-1].in_features == 8
    with pytest.raises(ConfigError) as error:
        FlowPrior(latent_dim=2, n_layers=0)
    assert str(error.value) == "prior.n_layers=0 must be a whole number >= 1 (coupling layers)."


# ---------------------------------------------------------------- second round: what the first round left
def test_objective_defaults_and_unknown_kl_mode() -> None:
    from vae_lab.model.objectives import Objective

    class Plain(Objective):
        def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
            return terms.kl.mean()

    assert (Plain().n_samples, Plain().kl) == (1, "auto")
    assert (ELBO().n_samples, ELBO().kl, ELBO().kl_weight) == (1, "auto", 1.0)
    with pytest.raises(ConfigError) as error:
        ELBO(kl="bogus")
    assert str(error.value) == "objective.kl='bogus' is unknown; use one of auto, analytic, mc."
    assert ELBO(free_bits=0.0).free_bits == 0.0 and ELBO(kl_weight=0.0).kl_weight == 0.0
    instant = ELBO(capacity={"max": 5.0})  # no steps: C = max from the first step
    assert instant.capacity.steps == 0 and instant.capacity(0) == 5.0


def test_fixed_priors_keep_nothing_in_the_checkpoint() -> None:
    """N(0, I) and the flow's base are buffers that are not saved: a checkpoint holds learned values only."""
    from vae_lab.model.priors import FlowPrior

    assert list(StandardNormalPrior(3).state_dict()) == []
    assert not {"loc", "scale"} & set(FlowPrior(latent_dim=2, n_layers=1, hidden_size=4).state_dict())


def mog_vae():
    """small_vae with a two-component mixture prior: Monte Carlo KL, no KL per dimension."""
    model = small_vae()
    model.prior = MixtureOfGaussiansPrior(latent_dim=2, n_components=2)
    return model


def test_evaluate_a_prior_without_kl_per_dimension_and_the_seconds_it_took() -> None:
    import time

    model, x = mog_vae(), torch.rand(5, 1, 1, 3)
    started = time.perf_counter()
    result = evaluate(model, x, EvaluationSettings(n_importance_samples=6, seed=2))
    elapsed = time.perf_counter() - started
    assert result.kl_per_dim is None and "test/kl_per_dim" not in result.metrics()
    assert isinstance(result.seconds, float) and 0 <= result.seconds <= elapsed + 0.01
    assert result.seconds == round(result.seconds, 2)
    with torch.no_grad():  # the same noise: each image's own, from the evaluation's seed
        terms, _ = importance_sampled_terms(model, x, 6, 6, ImageNoise(2, range(5), "importance"))
    # Monte Carlo KL over the same samples: mean_l [log q(z_l|x) - log p(z_l)]
    torch.testing.assert_close(terms.kl, (terms.log_posterior - terms.log_prior).mean(0))
    assert result.elbo == pytest.approx(float((terms.reconstruction - terms.kl).double().mean()), abs=1e-6)
    assert result.bpd_elbo == pytest.approx(-result.elbo / (3 * math.log(2)) + 8, rel=1e-13)
    assert result.bpd_importance_sampled == pytest.approx(-result.log_likelihood / (3 * math.log(2)) + 8, rel=1e-13)


def test_evaluate_counts_active_units_with_the_settings_threshold() -> None:
    model, x = small_vae(), torch.rand(8, 1, 1, 3)
    with torch.no_grad():
        activity = model.posterior(x).mean.double().var(0)
    threshold = float(activity.mean())  # between the two units' activities
    assert int((activity > threshold).sum()) == 1 and int((activity > 0.01).sum()) != 1
    result = evaluate(model, x, EvaluationSettings(n_importance_samples=2, active_unit_threshold=threshold))
    assert result.active_units == 1


def test_progress_printer_waits_for_a_full_tenth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vae_lab")
    printer = ProgressPrinter()
    for done in (10, 11, 21, 110):
        printer(done, 110)
    assert progress_counts(caplog) == [f"{done}/110" for done in (11, 110)]


def test_end_of_training_evaluation_defaults_to_seed_0_and_step_0(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    model, datamodule = ppca_model_and_data()
    logger = CSVLogger(tmp_path, name="", version="")
    metrics = evaluate_at_end_of_training({"eval": {"n_importance_samples": 5}}, model, datamodule, loggers=[logger])
    datamodule.setup("test")
    assert (
        metrics
        == evaluate(model, datamodule.splits["test"], EvaluationSettings(n_importance_samples=5, seed=0)).metrics()
    )
    assert next(csv.DictReader((tmp_path / "metrics.csv").open()))["step"] == "0"


def test_a_wandb_failure_while_logging_the_evaluation_is_recorded_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    from vae_lab.tracking.wandb_failsafe import FailSafeWandbLogger

    monkeypatch.chdir(tmp_path)
    logger = FailSafeWandbLogger(project="kill-tests", save_dir=str(tmp_path), offline=True)
    _ = logger.experiment
    wandb.finish()  # the run is gone: logging to it now fails
    wandb.teardown()
    log_metrics(logger, {"test/nll_is": 1.0}, step=0)
    assert logger.failed and logger.failed_during == "evaluation logging"


def test_flow_prior_passes_its_activation_to_every_coupling() -> None:
    from vae_lab.model.priors import FlowPrior

    prior = FlowPrior(latent_dim=2, n_layers=2, hidden_size=4, activation="relu")
    for coupling in prior.couplings:
        kinds = {type(m) for m in coupling.conditioner.modules()}
        assert torch.nn.ReLU in kinds and torch.nn.Tanh not in kinds


def test_a_row_label_names_every_axis() -> None:
    jobs = [
        ReportJob(
            Path(f"j{b}{lr}"),
            "complete",
            [f"data.batch_size={b}", f"optimizer.lr={lr}"],
            {"metrics": {"test/elbo": -1.0}},
        )
        for b in (50, 100)
        for lr in ("1e-3", "3e-4")
    ]
    assert build_report(jobs).rows[0].label() == "data.batch_size=50, optimizer.lr=3e-4"


def test_monte_carlo_kl_per_dimension_uses_the_drawn_latents() -> None:
    """objective.kl=mc with the standard prior: the KL of each dimension is the mean over the (last
    chunk's) samples of log q(z_j|x) - log p(z_j), and adds up to the total KL over the same samples."""
    model, x = small_vae(kl="mc"), torch.rand(4, 1, 1, 3)
    with torch.no_grad():
        terms, _ = importance_sampled_terms(model, x, 7, 7, torch.Generator().manual_seed(1))
    assert terms.kl_per_dim.shape == (4, 2)
    torch.testing.assert_close(terms.kl_per_dim.sum(-1), terms.kl, rtol=1e-5, atol=1e-5)


def test_monte_carlo_kl_per_dimension_is_the_mean_over_all_k_samples_across_chunks() -> None:
    """k = 5 samples in chunks of 2, 2 and 1: the KL of each dimension is mean_l [log q(z_lj|x) - log p(z_lj)]
    over all five draws (each image's own noise, so one draw of five is the same samples)."""
    model, x = small_vae(kl="mc"), torch.rand(4, 1, 1, 3)
    with torch.no_grad():
        terms, means = importance_sampled_terms(model, x, 5, 2, ImageNoise(3, range(4)))
        posterior = model.posterior(x)
        z = draw_latents(posterior, 5, ImageNoise(3, range(4)))
        expected = (posterior.base_dist.log_prob(z) - model.prior.log_prob_per_dim(z)).mean(0)
    torch.testing.assert_close(terms.kl_per_dim, expected)
    torch.testing.assert_close(terms.kl, (posterior.log_prob(z) - model.prior.log_prob(z)).mean(0))
    torch.testing.assert_close(means, posterior.mean)  # a Gaussian q: its exact mean


def flow_vae():
    """small_vae with a planar-flow q(z|x) (Rezende & Mohamed 2015), whose mean has no closed form."""
    from vae_lab.model.networks import MLPDecoder
    from vae_lab.model.posteriors import PlanarPosterior
    from vae_lab.model.vae import VAE

    torch.manual_seed(0)
    return VAE(
        encoder=MLPEncoder((1, 1, 3), 2, hidden_sizes=[4], posterior=PlanarPosterior),
        decoder=MLPDecoder((1, 1, 3), 2, out_channels=1, hidden_sizes=[4]),
        likelihood=GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0.5),
        prior=StandardNormalPrior(2),
        objective=ELBO(),
        optimizer=lambda parameters: torch.optim.Adam(parameters),
        image_shape=(1, 1, 3),
    )


@pytest.mark.parametrize("k", [5, MOMENT_SAMPLES + 7])
def test_posterior_means_of_a_flow_are_the_mean_of_at_least_moment_samples_draws(k: int) -> None:
    """No closed-form E_q[z]: the mean of the k importance samples, topped up with the same images' next
    draws to MOMENT_SAMPLES (the noise of the mean adds Var_q / draws to the activity)."""
    model, x = flow_vae(), torch.rand(3, 1, 1, 3)
    with torch.no_grad():
        terms, means = importance_sampled_terms(model, x, k, 4, ImageNoise(1, range(3)))
        posterior = model.posterior(x)
        z = draw_latents(posterior, max(k, MOMENT_SAMPLES), ImageNoise(1, range(3)))
        log_posterior = posterior.log_prob(z)  # z just drawn: the flow knows its inverse
    assert terms.kl_per_dim is None and means.shape == (3, 2)
    torch.testing.assert_close(means, z.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.log_posterior, log_posterior[:k], rtol=1e-5, atol=1e-5)


def test_learned_scale_starts_at_twice_a_floor_above_half_the_initial_scale() -> None:
    """softplus(raw) + min_scale starts at 0.1, or at 2 * min_scale when the floor is at least 0.05."""
    for floor, start in ((0.01, 0.1), (0.08, 0.16), (0.1, 0.2), (0.15, 0.3)):
        scale = GaussianLikelihood(channels=1, min_sigma=floor).pixel_scale(torch.zeros(1, 1, 1, 1))
        assert float(scale.detach()) == pytest.approx(start)


def test_a_fixed_scale_lives_on_the_decoder_outputs_device() -> None:
    """The ``meta`` device stands in for a GPU: the scale must be made where the decoder's output is."""
    output = torch.zeros(1, 1, 2, 2, device="meta")
    for likelihood in (GaussianLikelihood(channels=1, variance="fixed"), LaplaceLikelihood(channels=1, scale="fixed")):
        scale = likelihood.pixel_scale(output)
        assert scale.device == output.device and scale.shape == ()


# ---------------------------------------------------------------- the calibrated decoder (Rybkin et al. 2021)
def test_calibrated_normal_fits_one_shared_sigma_to_the_values_it_scores() -> None:
    """sigma* = sqrt(mean (x - mu)^2) over every value scored, floored; log p = log N(x; mu, sigma*^2);
    the gradient flows through sigma*; on_fit hears (sum of squared residuals, their count)."""
    loc = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    value = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    fits = []
    distribution = CalibratedNormal(
        loc, 0.01, torch.tensor(0.3), on_fit=lambda total, count: fits.append((total, count))
    )
    assert distribution.batch_shape == (2, 3) and distribution.event_shape == ()
    assert distribution.mean is loc
    sigma = math.sqrt(7 / 6)  # residuals 1, 0, -2, 1, -1, 0
    log_prob = distribution.log_prob(value)
    torch.testing.assert_close(log_prob, Normal(loc.detach(), sigma).log_prob(value))
    assert len(fits) == 1 and fits[0][1] == 6 and float(fits[0][0]) == 7.0 and not fits[0][0].requires_grad
    (gradient,) = torch.autograd.grad(log_prob.sum(), loc)
    reference_loc = loc.detach().clone().requires_grad_()
    fitted = (value - reference_loc).square().mean().sqrt()
    (reference,) = torch.autograd.grad(Normal(reference_loc, fitted).log_prob(value).sum(), reference_loc)
    torch.testing.assert_close(gradient, reference)
    torch.testing.assert_close(distribution.fitted_scale(value), torch.tensor(sigma, dtype=torch.float64))
    floored = CalibratedNormal(loc.detach(), 2.0, torch.tensor(0.3))  # no on_fit: nobody to tell
    torch.testing.assert_close(floored.fitted_scale(value), torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(floored.log_prob(value), Normal(loc.detach(), 2.0).log_prob(value))


def test_calibrated_normal_draws_with_the_fixed_sample_scale() -> None:
    loc = torch.tensor([[0.0, 5.0]], requires_grad=True)
    distribution = CalibratedNormal(loc, 0.01, torch.tensor(0.5))
    torch.manual_seed(3)
    drawn = distribution.rsample(torch.Size((4,)))
    torch.manual_seed(3)
    noise = torch.randn(4, 1, 2)
    torch.testing.assert_close(drawn, loc.detach() + 0.5 * noise)
    assert drawn.requires_grad
    torch.manual_seed(3)
    single = distribution.rsample()  # the default sample shape: one draw
    torch.manual_seed(3)
    torch.testing.assert_close(single, loc.detach() + 0.5 * torch.randn(1, 2))


def test_training_set_scale_pools_an_epochs_batches() -> None:
    """scale = sqrt(sum of squared residuals / count) over the epoch's training batches, floored; a
    checkpointed buffer, like the running sums; no batch: the scale stays."""
    pooled = TrainingSetScale(initial_scale=0.25, min_scale=0.05)
    assert set(pooled.state_dict()) == {"scale", "squared_sum", "count"}
    assert float(pooled.scale) == 0.25 and pooled.scale.shape == ()
    assert pooled.squared_sum.dtype == pooled.count.dtype == torch.float64
    assert float(pooled.squared_sum) == float(pooled.count) == 0.0 and pooled.count.shape == ()
    pooled.finish_epoch()  # before any batch: unchanged
    assert float(pooled.scale) == 0.25
    pooled.add(torch.tensor(3.0), 4)
    pooled.add(torch.tensor(5.0, dtype=torch.float64), 4)
    assert float(pooled.squared_sum) == 8.0 and float(pooled.count) == 8.0
    pooled.finish_epoch()
    assert float(pooled.scale) == 1.0  # sqrt(8 / 8)
    assert float(pooled.squared_sum) == float(pooled.count) == 0.0  # the next epoch starts afresh
    pooled.add(torch.tensor(1e-4), 4)
    pooled.finish_epoch()
    assert float(pooled.scale) == pytest.approx(0.05)  # sqrt(2.5e-5) = 0.005, floored at 0.05
    pooled.add(torch.tensor(1.0), 1)
    pooled.start_epoch()
    pooled.finish_epoch()
    assert float(pooled.scale) == pytest.approx(0.05)
    pooled.add(torch.tensor(0.25), 1)  # an epoch of one value: its own residual
    pooled.finish_epoch()
    assert float(pooled.scale) == pytest.approx(0.5)


def test_training_set_scale_sums_over_the_ranks_of_a_process_group(tmp_path: Path) -> None:
    """Under DDP the epoch's sums are all-reduced before the root mean; a group of one rank (gloo, in
    this process) gives the rank's own sigma."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        pooled = TrainingSetScale(initial_scale=0.25, min_scale=0.05)
        pooled.add(torch.tensor(9.0), 4)
        pooled.finish_epoch()
        assert float(pooled.scale) == pytest.approx(1.5)
    finally:
        dist.destroy_process_group()


def test_gaussian_optimal_variance_fits_in_training_and_uses_the_training_sets_sigma_in_evaluation() -> None:
    likelihood = GaussianLikelihood(channels=1, variance="optimal", fixed_sigma=0.2, min_sigma=0.01)
    assert float(likelihood.training_set_sigma.scale) == pytest.approx(0.2)
    assert likelihood.training_set_sigma.min_scale == 0.01
    output = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    x = output + torch.tensor([[[[0.1, -0.1], [0.3, -0.3]]]], dtype=torch.float64)
    likelihood.train()
    likelihood.training_set_sigma.add(torch.tensor(100.0), 1)  # left over from an epoch that did not finish
    likelihood.train_epoch_started()
    base = likelihood(output).base_dist
    assert isinstance(base, CalibratedNormal) and base.min_scale == 0.01
    assert float(base.sample_scale) == pytest.approx(0.2)
    sigma = math.sqrt((0.01 + 0.01 + 0.09 + 0.09) / 4)
    torch.testing.assert_close(likelihood(output).log_prob(x), Normal(output, sigma).log_prob(x).sum((-3, -2, -1)))
    torch.testing.assert_close(likelihood(output).log_prob(x + 0.0), likelihood(output).log_prob(x))
    tiny = likelihood(output + 2.0).log_prob(output + 2.0)  # residuals 0: sigma floored at min_sigma
    torch.testing.assert_close(tiny, Normal(output, 0.01).log_prob(output).sum((-3, -2, -1)))
    likelihood.train_epoch_finished()  # pooled over the four fits: three of sigma^2 and one of 0
    assert float(likelihood.training_set_sigma.scale) == pytest.approx(math.sqrt(3 * sigma**2 / 4), rel=1e-6)
    likelihood.eval()
    scale = likelihood.pixel_scale(output)
    assert scale.dtype == torch.float64 and float(scale) == pytest.approx(math.sqrt(3 * sigma**2 / 4), rel=1e-6)
    evaluation = likelihood(output).base_dist
    assert isinstance(evaluation, Normal)
    torch.testing.assert_close(evaluation.scale, torch.full_like(output, float(scale)))
    likelihood.train_epoch_started()
    assert float(likelihood.training_set_sigma.count) == 0.0


def test_gaussian_variance_modes_other_than_optimal_have_no_training_set_sigma() -> None:
    likelihood = GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0.2).train()
    assert not hasattr(likelihood, "training_set_sigma")
    likelihood.train_epoch_started()
    likelihood.train_epoch_finished()
    assert isinstance(likelihood(torch.zeros(1, 1, 2, 2)).base_dist, Normal)
