"""``vae_lab.load_run``: a finished run read back in Python (a notebook), on real runs.

The loaded model must be the trained one: it scores the test images with exactly the ELBO that
``trainer.test`` logged into summary.json (same weights, same test images, same seeded noise), and
the importance-sampled NLL the run's evaluation wrote.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "run_from_0.1.0"


def score_test_set(run) -> dict[str, float]:
    """The test ELBO, reconstruction and KL of the loaded model over the run's test batches, with the
    noise trainer.test drew (vae_lab.seeds: seeded from (seed, "test"))."""
    from vae_lab.seeds import seed_stage

    seed_stage(run.config.seed, "test")
    totals, n = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}, 0
    with torch.no_grad():
        for x in run.datamodule.test_dataloader():
            terms = run.model.elbo_terms(x.to(run.model.device), n_samples=1)
            for name in totals:
                totals[name] += float(getattr(terms, name).sum())
            n += x.shape[0]
    assert n == 10_000
    return {f"test/{name}": total / n for name, total in totals.items()}


def files_and_times(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_import_vae_lab_stays_light() -> None:
    code = (
        "import sys, vae_lab; heavy = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; "
        "print(heavy, callable(vae_lab.load_run))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # nothing heavy on import, and load_run is there (imported on first use)
    assert result.stdout.split() == ["[]", "True"]


def test_load_run_gives_the_trained_model(tiny_default_run) -> None:
    import vae_lab
    from vae_lab.evaluation.importance_sampling import EvaluationSettings, evaluate

    run_dir, _ = tiny_default_run
    before = files_and_times(run_dir)
    run = vae_lab.load_run(run_dir)
    assert isinstance(run, vae_lab.LoadedRun)
    assert run.checkpoint == run_dir.resolve() / "checkpoints" / "best.ckpt" and run.run_dir == run_dir.resolve()
    assert not run.model.training and run.model.device == torch.device("cpu")
    logged = run.summary["metrics"]

    # score: trainer.test's numbers, from the loaded weights
    measured = score_test_set(run)
    for name, value in measured.items():
        assert value == pytest.approx(logged[name], rel=1e-5, abs=1e-4), name
    # and the end-of-training evaluation's importance-sampled NLL (its seed, k and test images; its thread
    # count, which sizes the chunks and so which noise goes to which image)
    threads = torch.get_num_threads()
    torch.set_num_threads(run.summary["threads"])
    try:
        result = evaluate(run.model, run.datamodule.splits["test"], EvaluationSettings.from_config(run.config.eval))
    finally:
        torch.set_num_threads(threads)
    assert result.metrics()["test/nll_is"] == pytest.approx(logged["test/nll_is"], abs=1e-4)

    # encode, reconstruct, sample: the data's shapes, pixel means in [0, 1]
    x = run.datamodule.example_images("test", 16)
    assert x.shape == (16, 1, 28, 28)
    posterior = run.model.posterior(x)
    assert posterior.mean.shape == (16, run.config.model.latent_dim)
    reconstructions = run.model.reconstruct(x)
    assert reconstructions.shape == x.shape and reconstructions.min() >= 0 and reconstructions.max() <= 1
    # reconstructions of the trained model are closer to their own images than to other test images
    error = (reconstructions - x.float()).pow(2).mean()
    shuffled = (reconstructions - x.float().roll(1, dims=0)).pow(2).mean()
    assert error < shuffled
    samples = run.model.generate(64)
    assert samples.shape == (64, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert samples.std(0).mean() > 0  # 64 different draws from the prior, not one image

    assert files_and_times(run_dir) == before  # nothing in the run directory was written


def test_load_run_last_checkpoint_and_device(tiny_default_run) -> None:
    import vae_lab

    run_dir, _ = tiny_default_run
    run = vae_lab.load_run(run_dir, checkpoint="last", device="auto")
    assert run.checkpoint == run_dir.resolve() / "checkpoints" / "last.ckpt"
    saved = torch.load(run.checkpoint, weights_only=True)["state_dict"]
    loaded = {name: value.cpu() for name, value in run.model.state_dict().items()}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[name], loaded[name]) for name in saved)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert run.model.device.type == expected and not run.model.training


def test_load_run_refuses_bad_input(tiny_default_run, tmp_path: Path) -> None:
    import vae_lab
    from vae_lab.errors import CheckpointError, ConfigError

    run_dir, _ = tiny_default_run
    with pytest.raises(ConfigError, match="is not a vae_lab run directory"):
        vae_lab.load_run(tmp_path)
    with pytest.raises(ConfigError, match="device"):
        vae_lab.load_run(run_dir, device="tpu")
    with pytest.raises(CheckpointError, match="no checkpoint at .*that folder holds: best.ckpt, last.ckpt"):
        vae_lab.load_run(run_dir, checkpoint=run_dir / "checkpoints" / "epoch=3.ckpt")
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes((run_dir / "checkpoints" / "best.ckpt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        vae_lab.load_run(run_dir, checkpoint=truncated)


def test_load_run_reads_an_old_run(tmp_path: Path, data_root: Path) -> None:
    """The kept run written before the package moved (its config names vae_lab.likelihoods...)."""
    import vae_lab

    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    run = vae_lab.load_run(run_dir)
    assert run.config.likelihood._target_ == "vae_lab.model.likelihoods.BernoulliLikelihood"
    measured = score_test_set(run)
    assert measured["test/elbo"] == pytest.approx(-207.14002990722656, rel=1e-5)  # its summary.json's
    assert measured["test/elbo"] == pytest.approx(run.summary["metrics"]["test/elbo"], rel=1e-5)
    assert run.model.generate(8).shape == (8, 1, 28, 28)
