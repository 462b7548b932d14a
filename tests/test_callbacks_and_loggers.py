"""Callbacks and loggers are config entries built by Hydra (vae_lab.run.callbacks, issue 14): any Lightning
callback or logger joins a run from the command line, with no code change, and a bad entry is refused
before any data is read (vae_lab.run.settings)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import TINY, compose_config, run_cli

from vae_lab.run.callbacks import instantiate_entries
from vae_lab.run.settings import find_problems
from vae_lab.run.state import config_differences, with_current_targets

LR_MONITOR = "lightning.pytorch.callbacks.LearningRateMonitor"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
#: Not the default (1e-3): the value found in metrics.csv comes from this override.
LEARNING_RATE = 0.00073


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def run_with_extras(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny CLI run with a Lightning callback and a Lightning logger added on the command line:
    (its run dir, the extra logger's save_dir)."""
    base = tmp_path_factory.mktemp("extras")
    run_dir, extra_dir = base / "run", base / "extra_logs"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        f"optimizer.lr={LEARNING_RATE}",
        f"+callbacks.lr._target_={LR_MONITOR}",
        f"+logger.extra._target_={CSV_LOGGER}",
        f"+logger.extra.save_dir={extra_dir}",
        f"hydra.run.dir={run_dir}",
        cwd=base,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, extra_dir


def test_a_lightning_callback_from_the_command_line_logs_the_learning_rate(run_with_extras) -> None:
    run_dir, _ = run_with_extras
    logged = [row["lr-Adam"] for row in csv_rows(run_dir / "metrics.csv") if row.get("lr-Adam")]
    assert logged and {float(value) for value in logged} == {LEARNING_RATE}


def test_a_lightning_logger_from_the_command_line_writes_its_files(run_with_extras) -> None:
    run_dir, extra_dir = run_with_extras
    files = list(extra_dir.rglob("metrics.csv"))
    assert len(files) == 1, sorted(extra_dir.rglob("*"))
    # It logged what the run's own metrics.csv holds (which stays written): the same validation ELBO.
    theirs = [float(row["val/elbo"]) for row in csv_rows(files[0]) if row.get("val/elbo")]
    ours = [float(row["val/elbo"]) for row in csv_rows(run_dir / "metrics.csv") if row.get("val/elbo")]
    assert theirs and theirs == ours


def test_an_unknown_target_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    empty_root = tmp_path / "no_data"
    empty_root.mkdir()
    misspelt_logger = CSV_LOGGER.replace("Logger", "Loger")
    bad = [
        f"+callbacks.lr._target_={LR_MONITOR[:-1]}",
        f"+logger.extra._target_={misspelt_logger}",
        f"+logger.extra.save_dir={tmp_path / 'logs'}",
    ]
    refused = {}
    for name, overrides in {"unknown": bad, "known refusal": ["optimizer.lr=-1"]}.items():
        run_dir = tmp_path / name.replace(" ", "_")
        result = run_cli(
            "vae_lab.train", *TINY, f"data.root={empty_root}", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "MNIST" not in result.stderr  # the data were never looked for
        refused[name] = (result.stderr, sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")))
    message, files = refused["unknown"]
    assert f"callbacks.lr._target_={LR_MONITOR[:-1]}: cannot be imported" in message
    assert f"Did you mean {LR_MONITOR}?" in message
    assert f"logger.extra._target_={misspelt_logger}: cannot be imported" in message
    assert f"Did you mean {CSV_LOGGER}?" in message
    assert files == refused["known refusal"][1]  # what any refused launch leaves, nothing more


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        (["+callbacks.lr._target_=torch.nn.Linear"], "callbacks.lr._target_", "is not a Lightning callback"),
        ([f"+logger.extra._target_={LR_MONITOR}"], "logger.extra._target_", "is not a Lightning logger"),
        (["+callbacks.lr.logging_interval=step"], "callbacks.lr", "must name a Lightning callback class"),
        (
            [f"+callbacks.lr._target_={LR_MONITOR}", "+callbacks.lr.logging_intervall=step"],
            "callbacks.lr.logging_intervall",
            "Did you mean logging_interval?",
        ),
        (
            ["+callbacks.lr._target_=lightning.pytorch.callback.LearningRateMonitor"],
            "callbacks.lr._target_",
            f"Did you mean {LR_MONITOR}?",
        ),
    ],
    ids=["not a callback", "not a logger", "no target", "unknown argument", "misspelt module"],
)
def test_a_bad_entry_is_refused_with_the_field(overrides: list[str], field: str, says: str) -> None:
    problems = [problem for problem in find_problems(compose_config(*overrides)) if problem.path == field]
    assert len(problems) == 1 and says in problems[0].message, [
        str(p) for p in find_problems(compose_config(*overrides))
    ]


def test_entries_set_to_null_are_left_out_and_a_good_entry_passes() -> None:
    cfg = compose_config("callbacks.learning_rate=null", f"+callbacks.lr._target_={LR_MONITOR}")
    assert find_problems(cfg) == []
    assert [type(callback).__name__ for callback in instantiate_entries(cfg.callbacks)] == ["LearningRateMonitor"]
    # logger.wandb holds vae_lab's wandb settings (no _target_): never built from the config
    assert instantiate_entries(compose_config("logger=wandb").logger) == []


def test_a_run_resumes_with_other_callbacks() -> None:
    before = compose_config()
    now = compose_config("callbacks.learning_rate=null", f"+callbacks.lr._target_={LR_MONITOR}")
    assert config_differences(dict(before), dict(now)) == []


def test_early_stopping_is_lightnings_callback_and_older_configs_mean_the_same() -> None:
    built = instantiate_entries(compose_config("experiment=vampprior").callbacks)
    (stopping,) = [callback for callback in built if type(callback).__name__ == "EarlyStopping"]
    assert type(stopping).__name__ == "EarlyStopping"
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/elbo", "max", 50)
    # A config written before: top-level early_stopping, null or {patience: N}.
    assert with_current_targets({"early_stopping": None, "seed": 0}) == {"seed": 0}
    upgraded = with_current_targets({"early_stopping": {"patience": 7}, "callbacks": {"learning_rate": None}})
    assert upgraded == {
        "callbacks": {
            "early_stopping": {
                "_target_": "lightning.pytorch.callbacks.EarlyStopping",
                "monitor": "val/elbo",
                "mode": "max",
                "patience": 7,
            },
            "learning_rate": None,
        }
    }
