"""Run directories written before the package was laid out by concept (issue 14) are still read.

``tests/fixtures/run_from_0.1.0`` was written by the code of its WRITTEN_BY_COMMIT: its configs and
checkpoints name the old module paths (``vae_lab.likelihoods.BernoulliLikelihood``, ...).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "run_from_0.1.0"
OVERRIDES = yaml.safe_load((FIXTURE / ".hydra" / "overrides.yaml").read_text())


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def test_the_fixture_names_the_old_module_paths() -> None:
    config = (FIXTURE / ".hydra" / "config.yaml").read_text()
    assert "_target_: vae_lab.likelihoods.BernoulliLikelihood" in config
    assert "_target_: vae_lab.networks.MLPEncoder" in config


def test_evaluate_reads_an_old_run(old_run: Path, data_root: Path) -> None:
    before = json.loads((old_run / "summary.json").read_text())
    result = run_cli("vae_lab.evaluate", f"run_dir={old_run}", "n_importance_samples=10", cwd=old_run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((old_run / "summary.json").read_text())
    assert after["evaluation"]["n_importance_samples"] == 10 and after["evaluation"]["n_images"] == 10_000
    metrics = after["metrics"]
    assert metrics["test/elbo"] == before["metrics"]["test/elbo"]  # trainer.test's number, kept
    # the same weights: a 10-sample ELBO on the 10,000 test images within sampling noise of trainer.test's
    # (-207.14), and the importance-sampled bound above it
    assert metrics["test/elbo_k_samples"] == pytest.approx(before["metrics"]["test/elbo"], abs=0.5)
    assert -metrics["test/elbo_k_samples"] - 3 < metrics["test/nll_is"] < -metrics["test/elbo_k_samples"]


def test_resume_extends_an_old_run(old_run: Path, data_root: Path) -> None:
    overrides = [o for o in OVERRIDES if not o.startswith("trainer.max_epochs=")]
    result = run_cli(
        "vae_lab.train",
        *overrides,
        "trainer.max_epochs=3",
        "resume=true",
        f"hydra.run.dir={old_run}",
        cwd=old_run.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs"] == 3
    rows = [line.split(",") for line in (old_run / "metrics.csv").read_text().splitlines()]
    epoch, step = rows[0].index("epoch"), rows[0].index("step")
    logged = {(row[epoch], row[step]) for row in rows[1:]}
    # the two old epochs' rows kept (10 steps an epoch), one more epoch trained
    assert {("0", "9"), ("1", "19"), ("2", "29")} <= logged and ("3", "39") not in logged


def test_the_report_reads_an_old_run(old_run: Path, tmp_path: Path) -> None:
    result = run_cli("vae_lab.report", str(old_run), "--output-dir", str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "report" / "report.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    test_elbo = json.loads((FIXTURE / "summary.json").read_text())["metrics"]["test/elbo"]
    assert float(values[header.index("test/elbo mean")]) == pytest.approx(test_elbo)
    assert values[header.index("complete")] == "1"
