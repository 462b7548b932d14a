"""With no API key the default run (logger=wandb) logs an offline wandb run; read back from disk it
holds the logged metrics, the config and the image grids, under the overrides as its name."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY, logged_metrics
from wandb_offline import find_offline_runs, read_offline_run

from vae_lab.tracking.wandb_run import KL_PER_DIM_KEY


@pytest.fixture(scope="module")
def offline_run(tiny_default_run):
    run_dir, _ = tiny_default_run
    runs = find_offline_runs(run_dir)
    assert len(runs) == 1 and runs[0].parent == run_dir / "wandb"
    return read_offline_run(runs[0])


def test_stdout_tells_how_to_sync(tiny_default_run, offline_run) -> None:
    _, result = tiny_default_run
    assert "no API key" in result.stdout
    assert f"wandb sync {offline_run.directory}" in result.stdout


def test_run_is_named_after_the_overrides_and_holds_the_config(tiny_default_run, offline_run) -> None:
    run_dir, _ = tiny_default_run
    overrides = sorted(o for o in TINY if not o.startswith("logger="))
    assert offline_run.name == ",".join(overrides)
    assert offline_run.project == "vae_lab"
    summary = json.loads((run_dir / "summary.json").read_text())
    # plus the group choices, by which the wandb UI groups runs (issue 15)
    assert {key: value for key, value in offline_run.config.items() if key != "choices"} == summary["config"]
    assert offline_run.config["choices"]["likelihood"] == summary["choices"]["likelihood"] == "bernoulli"


def test_history_holds_the_metrics_of_summary_and_csv(tiny_default_run, offline_run) -> None:
    run_dir, _ = tiny_default_run
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert {f"{stage}/{name}" for stage in ("val", "test") for name in ("elbo", "reconstruction", "kl", "bpd")} <= set(
        metrics
    )
    for key, value in metrics.items():
        per_dim = KL_PER_DIM_KEY.match(key)
        if key == "val/elbo":  # its summary is its best value over the epochs (vae_lab.tracking.wandb_run)
            assert offline_run.summary[key] == {"max": pytest.approx(max(offline_run.values(key)), rel=1e-6)}
        elif per_dim:  # one list per stage in the summary, not a key per dimension
            assert offline_run.summary[f"{per_dim['stage']}/kl_per_dim"][int(per_dim["dim"])] == pytest.approx(value)
        else:
            assert offline_run.summary[key] == pytest.approx(value, rel=1e-6), key
    # the KL per dimension is one chart per epoch in wandb, not a key per dimension (issue 15)
    for key, value in {k: v for k, v in logged_metrics(metrics).items() if "/kl_per_dim/" not in k}.items():
        logged = offline_run.values(key)
        assert logged, key
        assert logged[-1] == pytest.approx(value, rel=1e-6), key  # the last val/test logged = the summary's
    with (run_dir / "metrics.csv").open() as handle:
        csv_rows = [row for row in csv.DictReader(handle) if row.get("train/elbo")]
    for name in ("elbo", "reconstruction", "kl", "bpd"):
        logged = offline_run.values(f"train/{name}")
        assert logged == pytest.approx([float(row[f"train/{name}"]) for row in csv_rows], rel=1e-6)


def test_image_grids_are_in_the_run(offline_run) -> None:
    """Four logged image entries at the end (a one-epoch run logs no epoch images at the default
    images_every_n_epochs=5): the grids (reconstructions, samples), the traversals, the
    interpolations and the KL-per-dimension heatmap (one key each: they differ in size); they are
    every PNG of the run."""
    images = [row["images"] for row in offline_run.history if "images" in row]
    traversals = [row["latent/traversals"] for row in offline_run.history if "latent/traversals" in row]
    interpolations = [row["latent/interpolations"] for row in offline_run.history if "latent/interpolations" in row]
    assert len(images) == 1 and len(traversals) == 1 and len(interpolations) == 1
    assert images[0]["captions"] == ["reconstructions", "samples"] and images[0]["count"] == 2
    assert traversals[0]["captions"][0].startswith("traversals") and traversals[0]["count"] == 1
    assert images[0]["format"] == traversals[0]["format"] == interpolations[0]["format"] == "png"
    heatmaps = [row["kl_per_dim_heatmap"] for row in offline_run.history if "kl_per_dim_heatmap" in row]
    assert (
        len(heatmaps) == 1 and heatmaps[0]["format"] == "png"
    )  # posterior collapse over training (vae_lab.evaluation.collapse)
    filenames = images[0]["filenames"] + traversals[0]["filenames"] + interpolations[0]["filenames"]
    filenames += heatmaps[0]["filenames"]
    assert sorted(filenames) == [f for f in offline_run.files if f.endswith(".png")]
    for name in filenames:
        png = offline_run.directory / "files" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
