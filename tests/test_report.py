"""The ablation report (issue 5), built from a real tiny Hydra multirun on real MNIST.

One module-scoped sweep: 2 axes x 2 values x 2 seeds (objective.kl_weight=0.5,1.0 x
data.batch_size=50,100 x seed=0,1) with the TINY overrides, plus one separate real one-job multirun that fails
(objective.kl_weight=-1.0 is refused by the config check at start-up; the job records the failure in its
summary.json and goes on to the next job) added to the report's list of run directories.
The tests recompute every number of the table from the jobs' own summary.json files.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from PIL import Image

GROUP = "vae-lab-report-test-group"
SWEPT = ["objective.kl_weight=0.5,1.0", "data.batch_size=50,100", "seed=0,1"]
# The jobs' resolved config says wandb offline in GROUP (what the report follows); the jobs themselves
# run with WANDB_MODE=disabled, which saves wandb's start-up in each of the 8 jobs.
LOGGER = ["logger=wandb", "logger.wandb.mode=offline", f"logger.wandb.group={GROUP}"]
COMMON = [o for o in TINY if not o.startswith(("data.batch_size=", "logger="))] + LOGGER
FAILING = ["objective.kl_weight=-1.0", "data.batch_size=50", "seed=0"]
REFUSAL = "objective.kl_weight=-1.0: not allowed; must be >= 0"
TABLE_METRICS = ("test/elbo", "test/nll_is", "test/bpd", "test/kl", "test/active_units", "epochs", "wall_time_seconds")
PLOTS = (
    "metrics_vs_objective.kl_weight.png",
    "metrics_vs_data.batch_size.png",
    "training_curves.png",
    "kl_per_dim.png",
    "rate_distortion.png",
    "kl_per_dim_heatmaps.png",
    "images.png",
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def clear_wandb_and_distributed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", os.devnull)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("report")
    sweep_dir, failed_dir = work / "sweep", work / "failed_sweep" / "0"
    with pytest.MonkeyPatch.context() as monkeypatch:
        clear_wandb_and_distributed_environment(monkeypatch)
        monkeypatch.setenv("VAE_LAB_DATA", str(data_root))
        jobs_env = {"WANDB_MODE": "disabled"}
        multirun = run_cli(
            "vae_lab.train", "-m", *SWEPT, *COMMON, f"hydra.sweep.dir={sweep_dir}", cwd=work, env=jobs_env
        )
        assert multirun.returncode == 0, multirun.stderr[-3000:]
        failed = run_cli(
            "vae_lab.train", "-m", *FAILING, *COMMON, f"hydra.sweep.dir={failed_dir.parent}", cwd=work, env=jobs_env
        )
        assert failed.returncode != 0 and REFUSAL in failed.stderr, failed.stderr[-3000:]
        report = run_cli("vae_lab.report", str(sweep_dir), str(failed_dir), "--output-dir", str(sweep_dir), cwd=work)
        assert report.returncode == 0, report.stderr[-3000:]
    job_dirs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))
    return SimpleNamespace(
        work=work,
        dir=sweep_dir,
        failed_dir=failed_dir,
        job_dirs=job_dirs,
        summaries={p: json.loads((p / "summary.json").read_text()) for p in job_dirs},
        sweep_stderr=multirun.stderr,
        report_stdout=report.stdout,
        rows=read_csv(sweep_dir / "report.csv"),
        markdown=(sweep_dir / "report.md").read_text(),
        html=(sweep_dir / "report.html").read_text(),
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def overrides_of(summary: dict) -> dict[str, str]:
    return dict(override.split("=", 1) for override in summary["overrides"])


def metric_value(summary: dict, metric: str) -> float | None:
    value = summary.get(metric, summary["metrics"].get(metric))
    return None if value is None else float(value)


def row_for(rows: list[dict[str, str]], kl_weight: str, batch_size: str) -> dict[str, str]:
    matches = [r for r in rows if r["objective.kl_weight"] == kl_weight and r["data.batch_size"] == batch_size]
    assert len(matches) == 1, rows
    return matches[0]


# ---------------------------------------------------------------- the sweep itself
def test_sweep_prints_progress_eta_and_where_outputs_are(sweep: SimpleNamespace) -> None:
    done = [int(n) for n in re.findall(r"^\[sweep\] \[[#-]{20}\] (\d+)/8 jobs done", sweep.sweep_stderr, re.MULTILINE)]
    assert done == list(range(1, 9))
    progress = [line for line in sweep.sweep_stderr.splitlines() if re.match(r"\[sweep\] \[[#-]{20}\]", line)]
    assert all("ETA" in line for line in progress[:-1]) and "ETA" not in progress[-1]
    assert progress[3].startswith("[sweep] [##########----------] 4/8")
    for number, job_dir in enumerate(sweep.job_dirs):
        assert f"[sweep] job {number} (" in sweep.sweep_stderr and f"outputs in {job_dir}/" in sweep.sweep_stderr
    assert f"[sweep] report: python -m vae_lab.report {sweep.dir}" in sweep.sweep_stderr


# ---------------------------------------------------------------- the table
def test_table_matches_the_jobs_summaries(sweep: SimpleNamespace) -> None:
    assert len(sweep.job_dirs) == 8 and all(s["status"] == "complete" for s in sweep.summaries.values())
    groups: dict[tuple[str, str], list[dict]] = {}
    for summary in sweep.summaries.values():
        overrides = overrides_of(summary)
        groups.setdefault((overrides["objective.kl_weight"], overrides["data.batch_size"]), []).append(summary)
    assert sorted(groups) == [("0.5", "100"), ("0.5", "50"), ("1.0", "100"), ("1.0", "50")]
    header = list(sweep.rows[0])
    present = [m for m in TABLE_METRICS if any(metric_value(s, m) is not None for s in sweep.summaries.values())]
    assert {"test/elbo", "test/bpd", "test/kl", "epochs", "wall_time_seconds"} <= set(present)
    assert [c[: -len(" mean")] for c in header if c.endswith(" mean")] == present  # absent metrics are left out
    for (kl_weight, batch_size), summaries in groups.items():
        row = row_for(sweep.rows, kl_weight, batch_size)
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1" and row["complete"] == "2"
        assert row["failed"] == row["unfinished"] == row["pending"] == "0"
        for metric in present:
            values = np.array([metric_value(s, metric) for s in summaries])
            assert float(row[f"{metric} mean"]) == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
            assert float(row[f"{metric} std"]) == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-12)
        elbo = [s["metrics"]["test/elbo"] for s in summaries]
        shown = f"{statistics.fmean(elbo):.2f} ± {statistics.stdev(elbo):.2f}"
        assert re.search(
            rf"^\| {kl_weight} \| {batch_size} \| 0, 1 \(2\) \| {re.escape(shown)} \|", sweep.markdown, re.M
        )
        assert shown in sweep.html


def test_failed_job_has_its_row_and_is_listed(sweep: SimpleNamespace) -> None:
    summary = json.loads((sweep.failed_dir / "summary.json").read_text())  # written by the job
    assert summary["status"] == "failed" and REFUSAL in summary["error"] and summary["metrics"] == {}
    failure = json.loads((sweep.failed_dir / "failure.json").read_text())  # written by the Hydra callback
    assert failure["status"] == "failed" and REFUSAL in failure["error"]
    row = row_for(sweep.rows, "-1.0", "50")
    assert row["n_seeds"] == "0" and row["seeds"] == "" and row["complete"] == "0"
    assert row["failed"] == "1" and row["unfinished"] == row["pending"] == "0"
    assert row["test/elbo mean"] == "" and row["test/elbo std"] == ""
    assert row["not_complete_jobs"] == f"failed:{sweep.failed_dir}"
    assert [r["objective.kl_weight"] for r in sweep.rows] == ["-1.0", "0.5", "0.5", "1.0", "1.0"]
    assert re.search(r"^\| -1\.0 \| 50 \| - \(0\) \| - \|.*\| 0 complete, 1 failed \|$", sweep.markdown, re.M)
    assert "## Jobs not complete" in sweep.markdown
    listed = r"^\| failed \| \.\./failed_sweep/0 \| -1\.0 \| 50 \| 0 \| .*kl_weight=-1\.0: not allowed; must be >= 0"
    assert re.search(listed, sweep.markdown, re.M)
    assert f"failed: {sweep.failed_dir}" in sweep.report_stdout
    assert "9 jobs (8 complete, 1 failed)" in sweep.markdown


# ---------------------------------------------------------------- plots and pages
def test_every_plot_is_a_png_with_content(sweep: SimpleNamespace) -> None:
    plots = sweep.dir / "report_plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        with Image.open(plots / name) as image:
            image.verify()
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300, (name, image.size)
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        assert pixels.var() > 100, name
        assert (pixels.min(axis=2) < 200).mean() > 0.02, f"{name} is nearly blank"
    with Image.open(plots / "images.png") as image:  # 4 settings x (2 seeds x 2 panels)
        assert image.height > 4 * 200 and image.width > 4 * 200


def test_markdown_and_html_hold_the_table_and_every_plot(sweep: SimpleNamespace) -> None:
    for name in PLOTS:
        assert f"](report_plots/{name})" in sweep.markdown
    assert sweep.html.count("<table>") == 2 and "<script" not in sweep.html
    sources = re.findall(r'src="([^"]*)"', sweep.html)
    assert len(sources) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in sources)
    assert embedded == sorted((sweep.dir / "report_plots" / name).read_bytes() for name in PLOTS)
    for row in sweep.rows:
        assert f'<td class="text">{row["objective.kl_weight"]}</td>' in sweep.html


def test_table_is_logged_to_wandb_in_the_sweeps_group(sweep: SimpleNamespace) -> None:
    runs = list((sweep.dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert GROUP.encode() in next(runs[0].glob("run-*.wandb")).read_bytes()
    tables = list((runs[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["objective.kl_weight", "data.batch_size", "n_seeds", "seeds"]
    by_setting = {(line[0], line[1]): dict(zip(table["columns"], line, strict=True)) for line in table["data"]}
    assert len(by_setting) == len(sweep.rows)
    for row in sweep.rows:
        logged = by_setting[(row["objective.kl_weight"], row["data.batch_size"])]
        assert logged["n_seeds"] == int(row["n_seeds"])
        if row["test/elbo mean"]:
            assert logged["test/elbo mean"] == pytest.approx(float(row["test/elbo mean"]), rel=1e-12)
            assert logged["test/elbo std"] == pytest.approx(float(row["test/elbo std"]), rel=1e-12)
        else:
            assert logged["test/elbo mean"] is None
    assert f"group '{GROUP}' (offline)" in sweep.report_stdout
    assert len(list((runs[0] / "files" / "media" / "images").rglob("*.png"))) == len(PLOTS)


def test_no_wandb_flag_and_output_dir(sweep: SimpleNamespace, tmp_path: Path) -> None:
    result = run_cli("vae_lab.report", str(sweep.dir), "--no-wandb", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "wandb").exists()
    assert "wandb: not logged: wandb is disabled" in (tmp_path / "report.md").read_text()
    rows = read_csv(tmp_path / "report.csv")  # the sweep alone: the failing run is not in it
    assert len(rows) == 4 and all(r["complete"] == "2" for r in rows)
    assert [row_for(rows, r["objective.kl_weight"], r["data.batch_size"]) for r in rows] == rows


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install -y chromium")
def test_report_html_renders_in_headless_chromium(sweep: SimpleNamespace, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,2000",
            "--enable-logging=stderr",
            "--v=0",
            (sweep.dir / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    with Image.open(screenshot) as image:
        assert image.size == (1200, 2000)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.var() > 100
    assert (pixels[:400].min(axis=2) < 100).mean() > 0.005  # title and table text at the top
    # The plots' lines in matplotlib's first two colours (tab:blue, tab:orange): the images rendered.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - np.array(colour)).max(axis=2) < 30).sum() > 200, colour


# ---------------------------------------------------------------- latent pictures in every run
def load_run(job_dir: Path):
    from omegaconf import OmegaConf

    from vae_lab.model.build import build_datamodule, build_model

    summary = json.loads((job_dir / "summary.json").read_text())
    config = OmegaConf.create(summary["config"])
    datamodule = build_datamodule(config)
    model = build_model(config, datamodule)
    checkpoint = torch.load(job_dir / summary["best_checkpoint"], map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), datamodule


def test_every_run_saves_latent_traversals_and_interpolations(sweep: SimpleNamespace) -> None:
    from vae_lab.evaluation.latent_pictures import decode, latent_interpolation, latent_traversal

    for job_dir in sweep.job_dirs:
        description = json.loads((job_dir / "images" / "latent_pictures.json").read_text())
        kl = np.array(description["kl_per_dim"])
        assert kl.shape == (50,) and (kl >= 0).all()
        assert description["traversal"]["dimensions"] == np.argsort(-kl, kind="stable")[:10].tolist()
        with Image.open(job_dir / "images" / "latent_traversals.png") as traversal:
            assert traversal.height == 2 * (10 * 30 + 2) and traversal.width > 2 * (12 * 30 + 2)
        with Image.open(job_dir / "images" / "latent_interpolations.png") as interpolation:
            assert interpolation.height == 2 * (8 * 30 + 2) and interpolation.width > 2 * (12 * 30 + 2)

    job_dir = sweep.job_dirs[0]
    description = json.loads((job_dir / "images" / "latent_pictures.json").read_text())
    model, datamodule = load_run(job_dir)
    images = datamodule.example_images("test", 500)
    with torch.no_grad():
        # The saved per-dimension KL sums to the full analytic KL(q(z|x) || p(z)) of the same images.
        total = torch.distributions.kl_divergence(model.posterior(images), model.prior.distribution()).mean()
        assert sum(description["kl_per_dim"]) == pytest.approx(float(total), rel=1e-4)

        dimensions = description["traversal"]["dimensions"][:3]
        grid, offsets = latent_traversal(model, images[0], dimensions)
        grid = grid.unflatten(0, (3, 12))
        mean = model.posterior(images[:1]).mean[0]
        assert torch.equal(grid[:, 0], images[0].expand(3, *images[0].shape))  # the original image first
        assert torch.allclose(grid[:, 6], model.reconstruct(images[:1]).expand(3, -1, -1, -1), atol=1e-6)
        for row, dimension in enumerate(dimensions):
            for column, offset in enumerate(offsets.tolist()):
                code = mean.clone()
                code[dimension] += offset  # N(0, I) prior: one prior std is 1
                assert torch.allclose(grid[row, 1 + column], decode(model, code[None])[0], atol=1e-5)
        assert (grid[0, 1] - grid[0, -1]).abs().max() > 0.01  # the largest-KL dimension changes the image

        rows = latent_interpolation(model, images[0:4:2], images[1:4:2]).unflatten(0, (2, 12))
        assert torch.equal(rows[:, 0], images[0:4:2]) and torch.equal(rows[:, -1], images[1:4:2])
        assert torch.allclose(rows[:, 1], model.reconstruct(images[0:4:2]), atol=1e-6)
        assert torch.allclose(rows[:, -2], model.reconstruct(images[1:4:2]), atol=1e-6)


def test_latent_pictures_are_logged_to_wandb(tmp_path: Path, data_root: Path) -> None:
    """A real offline wandb run (no API key here): both grids are in its media, byte for byte."""
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = run_cli("vae_lab.train", *overrides, "logger=wandb", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"vae_lab: outputs in {run_dir}" in result.stdout
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    # under the keys latent/traversals and latent/interpolations (one image size per key)
    logged = {path.read_bytes() for path in (wandb_run / "files" / "media" / "images" / "latent").glob("*.png")}
    saved = {
        (run_dir / "images" / name).read_bytes() for name in ("latent_traversals.png", "latent_interpolations.png")
    }
    assert logged == saved


# ---------------------------------------------------------------- a sweep that is still running
def test_report_on_a_partly_finished_sweep(tmp_path: Path, data_root: Path) -> None:
    """A real sweep of 3 seeds killed while its second job runs: 1 complete, 1 unfinished, 1 pending."""
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "vae_lab.train", "-m", "seed=0,1,2", *TINY, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "VAE_LAB_DATA": str(data_root)},
    )
    try:
        deadline = time.monotonic() + 300
        while not (sweep_dir / "1" / ".hydra" / "overrides.yaml").is_file():
            assert process.poll() is None, "the sweep ended before its second job started"
            assert time.monotonic() < deadline, "the sweep's second job did not start within 5 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert (sweep_dir / "0" / "summary.json").is_file() and not (sweep_dir / "1" / "summary.json").exists()
    assert not (sweep_dir / "2").exists()

    result = run_cli("vae_lab.report", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_csv(sweep_dir / "report.csv")
    assert len(rows) == 1
    (row,) = rows
    assert (row["complete"], row["failed"], row["unfinished"], row["pending"]) == ("1", "0", "1", "1")
    assert row["seeds"] == "0" and row["test/elbo std"] == ""
    summary = json.loads((sweep_dir / "0" / "summary.json").read_text())
    assert float(row["test/elbo mean"]) == summary["metrics"]["test/elbo"]
    markdown = (sweep_dir / "report.md").read_text()
    assert "3 jobs (1 complete, 1 unfinished, 1 pending)" in markdown
    assert re.search(r"^\| unfinished \| 1 \| 1 \|", markdown, re.M)
    assert re.search(r"^\| pending \| \(not started\) \| 2 \|", markdown, re.M)
    assert f"{summary['metrics']['test/elbo']:.2f} | " in markdown  # one seed: the mean, no ± std


# ---------------------------------------------------------------- pieces without a sweep
def test_planned_jobs_and_progress_line() -> None:
    from vae_lab.run.sweep_progress import planned_job_overrides, progress_line, swept_keys

    plan = planned_job_overrides(["a=1,2", "b=range(0,3)", "c=3"], {"d": "x,y"})
    assert len(plan) == 12 and ["d=x", "a=1", "b=0", "c=3"] in plan and ["d=y", "a=2", "b=2", "c=3"] in plan
    assert swept_keys(plan) == ["d", "a", "b"]
    assert planned_job_overrides(["a=[1,2"]) is None
    assert (
        progress_line(3, 1, 8, 120.0)
        == "[sweep] [########------------] 3/8 jobs done (1 failed), 2 min elapsed, ETA 3 min"
    )
    assert progress_line(8, 0, 8, 30.0) == "[sweep] [####################] 8/8 jobs done, 30 s elapsed"


def test_report_of_a_folder_without_jobs_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("vae_lab.report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "found no jobs" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- damaged jobs; --no-wandb over WANDB_MODE (issue 12)
def job_dir_of(sweep: SimpleNamespace, kl_weight: str, batch_size: str, seed: str) -> Path:
    wanted = {"objective.kl_weight": kl_weight, "data.batch_size": batch_size, "seed": seed}
    (match,) = [path for path, summary in sweep.summaries.items() if wanted.items() <= overrides_of(summary).items()]
    return match


#: The damaged job's setting and seed, the other seed of its setting, the file damaged, the reason shown.
DAMAGES = {
    "cut summary.json": (("0.5", "50"), "0", "1", "summary.json", "not valid JSON ("),
    "binary metrics.csv": (("1.0", "100"), "1", "0", "metrics.csv", "binary data, not UTF-8 text (byte 0x89 at 0"),
    "cut failure.json, no summary.json": (("0.5", "100"), "0", "1", "failure.json", "not valid JSON ("),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_job_is_listed_as_unreadable(sweep: SimpleNamespace, tmp_path: Path, damage: str) -> None:
    """A copy of the real sweep with one job's file damaged: summary.json cut in half (truncated JSON),
    metrics.csv replaced by a PNG (0x89 "PNG"...), or summary.json gone and failure.json cut. The job is
    listed as ``unreadable: <file>: <reason>`` (not as unfinished, no traceback), left out of its
    row's mean, and every other job is reported as before."""
    (kl_weight, batch_size), seed, other_seed, name, reason = DAMAGES[damage]
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.dir, copy, ignore=shutil.ignore_patterns("checkpoints", "wandb", "report*"))
    job = copy / job_dir_of(sweep, kl_weight, batch_size, seed).name
    damaged = job / name
    if name == "metrics.csv":
        damaged.write_bytes((job / "images" / "samples.png").read_bytes())
    else:
        text = (job / "summary.json" if name == "summary.json" else sweep.failed_dir / "failure.json").read_text()
        (job / "summary.json").unlink()
        damaged.write_text(text[: len(text) // 2])

    result = run_cli("vae_lab.report", str(copy), "--no-wandb", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"vae_lab.report: unreadable: {damaged}: {reason}" in result.stdout, result.stdout
    rows = read_csv(copy / "report.csv")
    row = row_for(rows, kl_weight, batch_size)
    assert (row["complete"], row["unreadable"], row["unfinished"], row["failed"]) == ("1", "1", "0", "0")
    readable = sweep.summaries[job_dir_of(sweep, kl_weight, batch_size, other_seed)]
    assert row["seeds"] == other_seed and float(row["test/elbo mean"]) == readable["metrics"]["test/elbo"]
    assert row["not_complete_jobs"] == f"unreadable:{job}"
    assert sorted(r["complete"] for r in rows) == ["1", "2", "2", "2"] and len(rows) == 4
    markdown, html = (copy / "report.md").read_text(), (copy / "report.html").read_text()
    assert "8 jobs (7 complete, 1 unreadable)" in markdown
    cells = rf"{re.escape(kl_weight)} \| {batch_size} \| {seed} \| {re.escape(f'{damaged}: {reason}')}"
    assert re.search(rf"^\| unreadable \| {job.name} \| {cells}", markdown, re.M), markdown
    setting = rf"^\| {re.escape(kl_weight)} \| {batch_size} \| {other_seed} \(1\) \|.*\| 1 complete, 1 unreadable \|$"
    assert re.search(setting, markdown, re.M)
    assert f"{damaged}: {reason}" in html


def test_a_truncated_picture_is_a_note_not_a_traceback(sweep: SimpleNamespace, tmp_path: Path) -> None:
    """One job's images/samples.png cut in half: the job's numbers are intact (it stays complete), the
    image grid shows that panel as unreadable and the report notes the file; no traceback."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.dir, copy, ignore=shutil.ignore_patterns("checkpoints", "wandb", "report*"))
    picture = copy / job_dir_of(sweep, "1.0", "50", "0").name / "images" / "samples.png"
    picture.write_bytes(picture.read_bytes()[: picture.stat().st_size // 2])
    result = run_cli("vae_lab.report", str(copy), "--no-wandb", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(row["complete"] == "2" for row in read_csv(copy / "report.csv"))
    assert re.search(rf"^- images: unreadable: {re.escape(str(picture))}: ", (copy / "report.md").read_text(), re.M)
    assert (copy / "report_plots" / "images.png").is_file()


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_no_wandb_wins_over_wandb_mode_in_the_environment(sweep: SimpleNamespace, tmp_path: Path, mode: str) -> None:
    """The jobs' config asks for wandb (offline, in GROUP) and WANDB_MODE says online or offline:
    --no-wandb still logs nothing. No wandb/ directory, and wandb is never imported (the import log of
    the real command shows no wandb module), so no run is created and nothing is sent."""
    env = {"WANDB_MODE": mode, "WANDB_BASE_URL": "http://127.0.0.1:9", "PYTHONPROFILEIMPORTTIME": "1"}
    arguments = [str(sweep.dir), "--no-wandb", "--output-dir", str(tmp_path)]
    result = run_cli("vae_lab.report", *arguments, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(r"\|\s+vae_lab\.report\.table$", result.stderr, re.M)  # the import log is there...
    assert not re.search(r"\|\s+wandb(\.\S+)?$", result.stderr, re.M)  # ...and holds no wandb module
    assert not (tmp_path / "wandb").exists() and not list(tmp_path.rglob("*.wandb"))
    assert "vae_lab.report: wandb: not logged: wandb is disabled" in result.stdout
    assert "wandb: not logged: wandb is disabled" in (tmp_path / "report.md").read_text()
