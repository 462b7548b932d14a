"""The gradient signal-to-noise diagnostic (vae_lab/evaluation/gradient_snr.py) and the start-up refusal of gradient
estimators that do not apply, through the real CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli

from vae_lab.evaluation.gradient_snr import snr_summary

#: TINY without the importance-sampled evaluation at the end.
QUICK = [*TINY, "eval.n_importance_samples=0"]


def test_snr_summary_is_mean_over_std_per_parameter() -> None:
    estimates = torch.tensor([[1.0, -4.0, 5.0], [2.0, -6.0, 5.0], [3.0, -5.0, 5.0]], dtype=torch.float64)
    summary = snr_summary(estimates.sum(0), estimates.square().sum(0), 3)
    # |2| / 1 and |-5| / 1; the constant third parameter has no spread and is left out.
    assert summary == {"snr_mean": 3.5, "snr_median": 2.0, "n_parameters": 2}


def test_snr_is_saved_and_logged_without_changing_training(data_root: Path, tmp_path: Path) -> None:
    """Measured at initialization and after the one epoch, on the run's own estimator; the run trains and
    tests exactly as the run without the diagnostic (the measurement has its own random stream)."""
    runs = {}
    for name, extra in {"plain": [], "snr": ["gradient_snr.epochs=[0,1]", "gradient_snr.n_estimates=4"]}.items():
        run_dir = tmp_path / name
        result = run_cli(
            "vae_lab.train",
            *QUICK,
            "objective=iwae",
            "objective.gradient=dreg",
            *extra,
            f"hydra.run.dir={run_dir}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = run_dir
    entries = json.loads((runs["snr"] / "gradient_snr.json").read_text())
    assert [entry["epoch"] for entry in entries] == [0, 1]
    assert [entry["step"] for entry in entries] == [0, 10]  # 500 images / 50 per batch
    for entry in entries:
        settings = (entry["objective"], entry["gradient"], entry["n_samples"], entry["n_estimates"])
        assert settings == ("IWAE", "dreg", 5, 4)
        assert entry["batch_size"] == 50
        for group in ("encoder", "decoder"):
            assert entry[group]["n_parameters"] > 1000 and 0 < entry[group]["snr_mean"] < math.inf
    with (runs["snr"] / "metrics.csv").open() as file:
        logged = [row for row in csv.DictReader(file) if row.get("gradient_snr/encoder")]
    assert [float(row["gradient_snr/encoder"]) for row in logged] == [e["encoder"]["snr_mean"] for e in entries]
    summaries = {name: json.loads((run / "summary.json").read_text()) for name, run in runs.items()}
    assert summaries["snr"]["metrics"]["test/elbo"] == summaries["plain"]["metrics"]["test/elbo"]
    assert not (runs["plain"] / "gradient_snr.json").exists()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["objective=iwae", "objective.gradient=stl"], "objective.gradient=dreg"),
        (["objective.gradient=dreg"], "objective.gradient=stl"),
        (["objective=piwae", "objective.gradient=score_function"], "reparameterized"),
        (["objective.gradient=reinforce"], "score_function"),
    ],
)
def test_gradient_that_does_not_apply_is_refused_at_start_up(overrides, words: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("vae_lab.train", *QUICK, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and words in result.stderr
    assert not {"checkpoints", "metrics.csv", "summary.json"} & {p.name for p in run_dir.glob("*")}
