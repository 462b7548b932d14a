"""Issue 15: what the terminal and the wandb dashboard show, read back from real runs.

One tiny real CLI training (2 epochs, wandb offline, images every epoch, the checkpoint artifact
asked for), its offline wandb run read back from disk (wandb_offline), a real
``vae_lab.evaluate`` of it, and a real 2 x 2 offline multirun with its dashboard."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY, run_cli
from wandb_offline import find_offline_runs, read_offline_run

from vae_lab.tracking.wandb_run import IMAGE_KEYS, KL_PER_DIM_KEY

WATCHED = [o for o in TINY if not o.startswith(("logger=", "trainer.max_epochs="))] + [
    "trainer.max_epochs=2",
    "logger.wandb.images_every_n_epochs=1",
    "logger.wandb.log_checkpoint=true",
    # a learning rate that halves every epoch, as the IWAE experiments' staged decay
    "lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}",
]
OFFLINE_ENV = {"WANDB_SILENT": "true", "NETRC": os.devnull}


@pytest.fixture(scope="module")
def watched(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The real CLI run, its offline wandb run, and a later real ``vae_lab.evaluate`` of it."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        os.environ.pop(name, None)
    run_dir = tmp_path_factory.mktemp("watched") / "run"
    result = run_cli("vae_lab.train", *WATCHED, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, env=OFFLINE_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    (training,) = find_offline_runs(run_dir)
    training_run = read_offline_run(training)
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluated = run_cli(
        "vae_lab.evaluate",
        f"run_dir={run_dir}",
        "n_importance_samples=10",
        "n_test_images=100",
        cwd=run_dir.parent,
        env=OFFLINE_ENV,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return SimpleNamespace(run_dir=run_dir, result=result, run=training_run, summary=summary, evaluated=evaluated)


def epochs_of(run, key: str) -> list[int]:
    return [row["epoch"] for row in run.history if key in row]


# ------------------------------------------------------------------ wandb (acceptance 1)
def test_config_holds_the_group_choices(watched) -> None:
    choices = watched.run.config["choices"]
    assert choices["likelihood"] == "bernoulli" and choices["prior"] == "standard" and choices["objective"] == "elbo"
    assert choices["model"] == "mlp" and choices["data"] == "mnist"
    assert not any(group.startswith("hydra/") for group in choices)
    assert {key: value for key, value in watched.run.config.items() if key != "choices"} == watched.summary["config"]


def test_training_run_has_job_type_train(watched) -> None:
    assert watched.run.job_type == "train"


def test_metric_definitions_and_best_val_elbo_in_the_summary(watched) -> None:
    definitions = watched.run.metric_definitions
    globs = {d["glob_name"]: d for d in definitions if d["glob_name"]}
    names = {d["name"]: d for d in definitions if d["name"]}
    assert globs["train/*"]["step_metric"] == globs["val/*"]["step_metric"] == "epoch"
    assert names["val/elbo"]["summary"] == ["max"] and names["val/elbo"]["step_metric"] == "epoch"
    assert names["test/nll_is"]["summary"] == ["last"]
    per_epoch = [row["val/elbo"] for row in watched.run.history if "val/elbo" in row]
    assert len(per_epoch) == 3  # two epochs, then the best checkpoint's validation
    assert watched.run.summary["val/elbo"] == {"max": pytest.approx(max(per_epoch), rel=1e-6)}
    assert watched.run.summary["test/nll_is"] == pytest.approx(watched.summary["metrics"]["test/nll_is"], rel=1e-9)


def test_images_are_logged_every_epoch_one_size_per_key(watched) -> None:
    for key in IMAGE_KEYS:
        assert epochs_of(watched.run, key) == [0, 1], key
    sizes: dict[str, set] = {}
    for row in watched.run.history:
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") in ("image-file", "images/separated"):
                sizes.setdefault(key, set()).add((value.get("width"), value.get("height")))
    assert set(IMAGE_KEYS) | {"latent/traversals", "latent/interpolations", "images"} <= set(sizes)
    assert all(len(found) == 1 for found in sizes.values()), sizes


def test_kl_per_dimension_is_one_chart_not_scalar_keys(watched) -> None:
    keys = {key for row in watched.run.history for key in row} | set(watched.run.summary)
    assert not [key for key in keys if KL_PER_DIM_KEY.match(key)]
    assert epochs_of(watched.run, "val/kl_per_dim_chart_table")[:2] == [0, 1]
    assert "test/kl_per_dim_chart_table" in keys
    assert len(watched.run.summary["val/kl_per_dim"]) == 50  # one list in the summary
    with (watched.run_dir / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert "val/kl_per_dim/00" in columns and "val/kl_per_dim/49" in columns  # the report reads these


def test_learning_rate_is_logged(watched) -> None:
    assert watched.run.values("train/lr") == [pytest.approx(1e-3), pytest.approx(5e-4)]
    assert epochs_of(watched.run, "train/lr") == [0, 1]
    with (watched.run_dir / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/lr")]
    expected = [("0", pytest.approx(1e-3)), ("1", pytest.approx(5e-4))]
    assert [(row["epoch"], float(row["train/lr"])) for row in rows] == expected
    assert all(row["train/elbo"] for row in rows)  # in the epoch's row, which resuming keeps


def test_best_checkpoint_artifact_when_asked(watched, tiny_default_run) -> None:
    (model,) = [a for a in watched.run.artifacts if a["type"] == "model"]
    assert model["name"] == f"model-{watched.run.run_id}" and "best" in model["aliases"]
    assert model["files"] == ["best.ckpt"]
    assert model["metadata"]["test/nll_is"] == pytest.approx(watched.summary["metrics"]["test/nll_is"])
    default_run = read_offline_run(find_offline_runs(tiny_default_run[0])[0])
    assert not [a for a in default_run.artifacts if a["type"] == "model"]  # opt-in


def test_evaluate_records_an_evaluate_run_linked_to_the_training_run(watched) -> None:
    runs = {read_offline_run(path).run_id: read_offline_run(path) for path in find_offline_runs(watched.run_dir)}
    assert len(runs) == 2 and watched.run.run_id in runs  # never a second directory with the same id
    (evaluation,) = [run for run_id, run in runs.items() if run_id != watched.run.run_id]
    assert evaluation.job_type == "evaluate"
    assert evaluation.config["evaluated_run"] == watched.run.run_id
    assert evaluation.group == watched.run.group
    assert evaluation.config["choices"] == watched.run.config["choices"]
    summary = json.loads((watched.run_dir / "summary.json").read_text())
    assert summary["evaluation"]["n_importance_samples"] == 10
    assert evaluation.summary["test/nll_is"] == pytest.approx(summary["metrics"]["test/nll_is"], rel=1e-9)
    assert f"for training run {watched.run.run_id}" in watched.evaluated.stdout


# ------------------------------------------------------------------ the terminal (acceptance 2)
def message(line: str) -> str:
    """A console line without Hydra's ``[time][logger][LEVEL] - `` or Lightning's ``INFO: `` prefix."""
    return re.sub(r"^(\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - |INFO: )", "", line)


def test_console_shows_progress_once_and_train_log_holds_vae_lab_messages(watched) -> None:
    stdout, stderr = watched.result.stdout, watched.result.stderr
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    # stdout is a pipe here: one progress line per epoch, with the loss, val/elbo and val/kl, no \r bars
    epoch_lines = [line for line in stdout.splitlines() if re.match(r"epoch \d/2 done in ", line)]
    assert len(epoch_lines) == 2 and all("val/elbo=" in line and "val/kl=" in line for line in epoch_lines)
    assert "train/loss=" in epoch_lines[-1]
    assert "\r" not in stdout + stderr
    # every line once: Lightning's lines came twice (its own handler and Hydra's)
    assert not [line for line in lines if line.startswith("INFO: ")]
    for text in ("GPU available: False", "`Trainer.fit` stopped", "vae_lab: run dir", "vae_lab: outputs in"):
        assert sum(text in message(line) for line in lines) == 1, text
    noises = ("litlogger", "The anonymous setting has no effect", "exists and is not empty", "Images sizes do not")
    for noise in noises:
        assert noise not in stdout + stderr, noise
    # the importance-sampled evaluation reports its rate and the time left
    assert re.search(r"vae_lab\.evaluate: 200/200 test images \([\d.]+/s, ", stdout)
    train_log = (watched.run_dir / "train.log").read_text()
    messages = (
        "vae_lab: run dir",
        "epoch 2/2 done in",
        "vae_lab.evaluate: 200/200 test images",
        "vae_lab: outputs in",
        "wandb: no API key found",
        "GPU available: False",
    )
    for text in messages:
        assert sum(text in line for line in train_log.splitlines()) == 1, text


# ------------------------------------------------------------------ the sweep's dashboard (acceptance 3)
@pytest.fixture(scope="module")
def sweep(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 x 2 offline multirun: a config group axis and a plain config key axis."""
    sweep_dir = tmp_path_factory.mktemp("dashboard") / "sweep"
    common = [o for o in TINY if not o.startswith(("logger=", "data.batch_size=", "trainer.max_epochs="))]
    result = run_cli(
        "vae_lab.train",
        "-m",
        "likelihood=bernoulli,continuous_bernoulli",
        "data.batch_size=50,100",
        *common,
        "trainer.max_epochs=2",
        "logger.wandb.images_every_n_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=sweep_dir.parent,
        env=OFFLINE_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def panel_keys(spec: dict) -> tuple[set[str], set[str]]:
    """(the metric keys, the grouping keys) the dashboard's panels and run set use."""
    metrics: set[str] = set()
    groups: set[str] = {group["name"] for group in spec["runset_settings"]["groupby"]}

    def name(value) -> str:
        return value["name"] if isinstance(value, dict) else value

    for section in spec["sections"]:
        for panel in section["panels"]:
            for field in ("x", "y", "metrics", "media_keys"):
                value = panel.get(field)
                if isinstance(value, list):  # LinePlot y, BarPlot metrics, MediaBrowser media_keys
                    metrics |= {name(item) for item in value}
                elif value:  # LinePlot x, ScatterPlot x and y
                    metrics.add(name(value))
            if panel.get("query"):
                metrics.add(panel["query"]["summaryTable"]["tableKey"])
            if panel.get("groupby"):
                groups.add(name(panel["groupby"]))
    return metrics, groups


def nested(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_dashboard_of_a_2x2_sweep_uses_keys_the_runs_have(sweep: Path) -> None:
    result = run_cli("vae_lab.dashboard", str(sweep), cwd=sweep.parent, env=OFFLINE_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    spec_path = sweep / "dashboard.json"
    assert f"dashboard written to {spec_path}" in result.stdout and "wandb sync" in result.stdout
    spec = json.loads(spec_path.read_text())
    runs = [read_offline_run(path) for path in find_offline_runs(sweep)]
    runs = [run for run in runs if run.job_type == "train"]  # not the evaluate or report runs of other tests
    assert len(runs) == 4 and len({run.group for run in runs}) == 1
    assert spec["runset_settings"]["filters"] == f"Metric(\"Group\") == '{runs[0].group}'"
    metrics, groups = panel_keys(spec)
    assert {"val/elbo", "test/nll_is", "test/elbo", "test/kl", "test/reconstruction", "epoch"} <= metrics
    assert {"choices.likelihood", "data.batch_size"} == groups  # one per swept axis
    for run in runs:
        history_keys = {key for row in run.history for key in row}
        assert metrics <= history_keys, metrics - history_keys
        for group in groups:
            nested(run.config, group)  # KeyError when the runs cannot be grouped by it
    titles = Counter(section["name"] for section in spec["sections"])
    assert titles["by likelihood"] == titles["by data.batch_size"] == 1


def test_evaluate_run_of_a_sweep_job_is_in_the_sweeps_group(sweep: Path) -> None:
    job_dir = sweep / "0"
    (training,) = [read_offline_run(path) for path in find_offline_runs(job_dir)]
    assert training.group and json.loads((job_dir / "summary.json").read_text())["wandb"]["group"] == training.group
    result = run_cli(
        "vae_lab.evaluate",
        f"run_dir={job_dir}",
        "n_importance_samples=5",
        "n_test_images=50",
        cwd=sweep.parent,
        env=OFFLINE_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_offline_run(path) for path in find_offline_runs(job_dir)]
    (evaluation,) = [run for run in runs if run.run_id != training.run_id]
    assert evaluation.group == training.group and evaluation.job_type == "evaluate"
    assert evaluation.config["evaluated_run"] == training.run_id


def test_report_table_run_is_in_the_sweeps_group(sweep: Path, tmp_path: Path) -> None:
    """The jobs' config names no group (vae_lab gives a multirun its own, in .wandb_group): the
    report's run goes to that group, not to one named after its output directory."""
    group = (sweep / ".wandb_group").read_text().strip()
    result = run_cli(
        "vae_lab.report", str(sweep), "--output-dir", str(tmp_path / "report"), cwd=sweep.parent, env=OFFLINE_ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = [read_offline_run(path) for path in find_offline_runs(tmp_path / "report")]
    assert report.job_type == "report" and report.group == group


def test_dashboard_of_a_folder_without_wandb_runs_is_a_clear_error(tmp_path: Path) -> None:
    job = tmp_path / "0"
    job.mkdir()
    (job / "summary.json").write_text(json.dumps({"status": "complete", "overrides": [], "wandb": None}))
    result = run_cli("vae_lab.dashboard", str(tmp_path), cwd=tmp_path, env=OFFLINE_ENV)
    assert result.returncode == 2 and "none of the sweep's jobs has a wandb run" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "dashboard.json").exists()
