"""The evaluation's noise is drawn per image and per sample (vae_lab.evaluation.noise), so its figures
agree within 1e-4 nats whatever the chunk plan (images per batch, samples per chunk, the inference
gaps' batches) and the torch thread count; and the evaluation chooses its thread count by timing its
first batches (vae_lab.evaluation.thread_choice), within the share a launcher gives it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, compose_config

from vae_lab.evaluation.importance_sampling import EvaluationSettings, evaluate
from vae_lab.evaluation.noise import NOISE_BLOCK, ImageNoise, image_seeds
from vae_lab.evaluation.thread_choice import CLEAR_LOSER, ThreadChoice
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.run.devices import available_cores
from vae_lab.run.jobs import Job
from vae_lab.run.launchers import LauncherKind
from vae_lab.run.threads import evaluation_threads

#: The figures of one model under different plans agree within this (nats; bits/dim are smaller still).
TOLERANCE = 1e-4
#: k, not a multiple of the noise block, so that the last block is cut.
K = 100
N_IMAGES = 12

#: (images_per_batch, samples_per_chunk, threads, inference_gap.images_per_batch): threads is the
#: torch thread count set before evaluate(), or a tuple of candidates for it to choose from.
PLANS = [
    (12, 100, 1, 6),
    (5, 7, 1, 4),
    (1, 25, 1, 1),
    (8, 1, 1, 5),
    (12, 50, 2, 3),  # few large chunks on 2 threads (tiny ones are slow on a busy machine's second core)
    (2, 20, (1, 2), 2),
]


@pytest.fixture(scope="module")
def test_images(data_root: Path) -> torch.Tensor:
    """The first real MNIST test images, in the form the data module serves them."""
    datamodule = build_datamodule(compose_config(*TINY, f"data.root={data_root}"))
    datamodule.setup("test")
    return datamodule.splits["test"][:N_IMAGES]


def mnist_model(overrides: list[str]) -> torch.nn.Module:
    """A vae_lab model for MNIST (float32) at its seeded initialisation."""
    cfg = compose_config(*TINY, "model.initialize_output_bias=false", *overrides)
    torch.manual_seed(0)
    return build_model(cfg, SimpleNamespace(image_shape=(1, 28, 28)))


def figures(model: torch.nn.Module, images: torch.Tensor, plan: tuple, gaps: bool) -> dict[str, float]:
    """Every figure of one evaluation under ``plan``, flattened to name -> number."""
    images_per_batch, samples_per_chunk, threads, gap_batch = plan
    settings = EvaluationSettings(
        n_importance_samples=K,
        seed=11,
        images_per_batch=images_per_batch,
        samples_per_chunk=samples_per_chunk,
        surgery={"n_samples": 3},
        inference_gap={"n_images": 6 if gaps else 0, "steps": 4, "n_samples": 3, "images_per_batch": gap_batch},
    )
    before = torch.get_num_threads()
    try:
        if isinstance(threads, int):
            torch.set_num_threads(threads)
            result = evaluate(model, images, settings)
            assert result.threads == threads and result.thread_timings is None
        else:
            result = evaluate(model, images, settings, threads=threads)
            assert result.threads in threads and set(result.thread_timings) == {str(t) for t in threads}
    finally:
        torch.set_num_threads(before)
    assert (result.images_per_batch, result.samples_per_chunk) == (images_per_batch, samples_per_chunk)
    flat: dict[str, float] = {}
    for name, value in {**result.metrics(), "unit_activity": result.unit_activity}.items():
        values = value if isinstance(value, list) else [value]
        flat.update({f"{name}[{i}]": float(v) for i, v in enumerate(values)})
    if gaps:
        flat.update({f"gap/{name}": value for name, value in result.inference_gap.details().items() if "log" in name})
    return flat


@pytest.mark.parametrize(
    "overrides",
    [[], ["objective.kl=mc"], ["posterior=full_covariance"], ["posterior=iaf"]],
    ids=["diagonal", "mc-kl", "full-covariance", "iaf"],
)
def test_figures_do_not_depend_on_the_chunk_plan_or_the_threads(
    test_images: torch.Tensor, overrides: list[str]
) -> None:
    """test/nll_is, the ELBO, bits/dim, the KL per dimension (analytic, or Monte Carlo over all k),
    the unit activities, ELBO surgery and the inference gaps: the same within 1e-4 under six plans.
    Noise drawn per batch of images and chunk of samples changes them by their sampling noise."""
    model, images = mnist_model(overrides), test_images
    gaps = not overrides or overrides == ["objective.kl=mc"]  # the gaps fit diagonal Gaussians
    results = [figures(model, images, plan, gaps) for plan in PLANS]
    first = results[0]
    assert {"test/nll_is[0]", "test/bpd_is[0]", "test/elbo_k_samples[0]", "unit_activity[0]"} <= set(first)
    if gaps:
        assert {"test/mutual_information[0]", "test/marginal_kl[0]", "test/approximation_gap[0]"} <= set(first)
    for plan, result in zip(PLANS[1:], results[1:], strict=True):
        assert result.keys() == first.keys()
        differences = {name: abs(result[name] - first[name]) for name in first}
        worst = max(differences, key=differences.get)
        assert differences[worst] <= TOLERANCE, (plan, worst, first[worst], result[worst])


def test_an_image_draws_the_same_samples_in_any_batch_and_any_chunks() -> None:
    """Image 5's samples 0..299: in a batch of 3 images in chunks of 7, alone in one chunk; seeded
    apart from the other images' and from another stream's."""
    like_three, like_one = torch.zeros(3, 4), torch.zeros(1, 4)
    batch = ImageNoise(2, range(4, 7))
    chunked = torch.cat([batch.standard_normal(n, like_three) for n in [7] * 42 + [6]])  # 300 samples
    alone = ImageNoise(2, range(5, 6)).standard_normal(300, like_one)
    assert chunked.shape == (300, 3, 4)
    assert torch.equal(chunked[:, 1], alone[:, 0])
    assert not torch.equal(chunked[:, 0], chunked[:, 1])
    assert not torch.equal(alone, ImageNoise(2, range(5, 6), "other").standard_normal(300, like_one))
    assert NOISE_BLOCK["cpu"] < 300  # the chunks above straddle blocks
    seeds = image_seeds(2, "importance", range(10_000))
    assert len(set(seeds)) == 10_000 and all(0 <= seed < 2**32 for seed in seeds)  # torch's CPU generator keeps 32 bits


def test_the_thread_choice_times_each_candidate_and_keeps_the_fastest() -> None:
    before = torch.get_num_threads()
    try:
        choice = ThreadChoice([2, 1, 2])
        assert choice.candidates == [1, 2] and choice.schedule == [1, 2, 2, 1]
        ran = []
        while choice.calibrating:
            with choice.timed(10) as threads:
                ran.append((threads, torch.get_num_threads()))
        assert 2 <= len(ran) <= 4 and ran == [(t, t) for t in [1, 2, 2, 1][: len(ran)]]  # < 4: a clear loser
        assert set(choice.details()) == {"1", "2"} and choice.chosen in (1, 2)
        fastest = min(choice.seconds_per_image, key=choice.seconds_per_image.get)
        with choice.timed(10) as threads:
            assert threads == fastest == choice.chosen == torch.get_num_threads()
        # A clear loser (more than CLEAR_LOSER times slower) ends the calibration once every candidate is timed.
        busy = ThreadChoice([1, 2])
        busy.record(1, 0.04)
        busy.batches += 1
        assert busy.calibrating
        busy.record(2, 0.04 * CLEAR_LOSER * 1.01)
        busy.batches += 1
        assert not busy.calibrating and busy.chosen == 1
        close = ThreadChoice([1, 2])
        for threads, seconds in [(1, 0.04), (2, 0.04 * CLEAR_LOSER * 0.99)]:
            close.record(threads, seconds)
            close.batches += 1
        assert close.calibrating and close.chosen == 1
        single = ThreadChoice([1])
        assert single.schedule == [] and single.details() is None and single.settle() == 1
    finally:
        torch.set_num_threads(before)


def test_evaluate_restores_the_thread_count_and_records_the_one_it_used() -> None:
    from test_evaluation import data_points, linear_gaussian_vae

    model, x = linear_gaussian_vae(), data_points(40)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        result = evaluate(model, x, EvaluationSettings(n_importance_samples=30, images_per_batch=4), threads=[1, 2])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    details = result.details()
    assert details["threads"] == result.threads in (1, 2)
    assert set(details["seconds_per_image_by_threads"]) == {"1", "2"}
    assert f"on {result.threads} thread" in result.table()


def test_the_evaluation_threads_stay_within_the_process_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: 1 and the share of the cores (per DDP rank, at most a joblib worker's share); a number is
    kept; an accelerator keeps torch's count."""
    cores = available_cores()
    assert evaluation_threads("auto") == tuple(sorted({1, cores}))
    assert evaluation_threads("auto", processes=cores) == (1,)
    assert evaluation_threads(3) == (3,)
    assert evaluation_threads("auto", device_type="cuda") == (torch.get_num_threads(),)
    assert evaluation_threads(None) == (torch.get_num_threads(),)
    # A joblib worker of a 2-job sweep: its share, as train.py passes it.
    job = Job(
        run_dir=tmp_path / "job",
        multirun=True,
        launcher=LauncherKind.JOBLIB,
        launcher_config={"n_jobs": 2},
        sweep_dir=tmp_path,
        sweep_name="test",
        overrides=[],
        choices={},
        attempt="test-attempt",
    )
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after the test
    before = torch.get_num_threads()
    try:
        job.prepare(compose_config(*TINY, "trainer.accelerator=cpu"))
    finally:
        torch.set_num_threads(before)
    share = job.threads if job.threads_from_launcher else None
    assert share == max(1, cores // 2)
    assert max(evaluation_threads("auto", 1, "cpu", share)) == share
