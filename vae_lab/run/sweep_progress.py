"""Progress of a Hydra multirun: ``[sweep] [####------] 3/8 jobs done, 2 min elapsed, ETA 4 min``.

:class:`SweepProgress` is a Hydra callback (``hydra.callbacks.sweep_progress`` in conf/config.yaml).
Jobs may run in other processes (joblib workers, submitit jobs), so the progress lives in the sweep
directory: the start time and the planned job count in ``.sweep_progress.json``, one line per
finished job in ``.sweep_progress.log`` (appended in one ``write``, so concurrent jobs do not mix).
The ETA is the elapsed time per finished job times the jobs left. Lines go to stderr.

In every run (single or multirun) a job that raises gets ``<job dir>/failure.json`` with the error,
so that the report can tell a failed job from one still running; Hydra catches the exception and
calls this callback before it re-raises. (An exit through ``SystemExit`` skips Hydra's callbacks.)
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

STATE_FILE = ".sweep_progress.json"
#: Written into a job's directory when the job raised (single runs too), for the report.
FAILURE_FILE = "failure.json"
LOG_FILE = ".sweep_progress.log"
BAR_WIDTH = 20


def planned_job_overrides(
    task_overrides: list[str], sweeper_params: dict[str, Any] | None = None
) -> list[list[str]] | None:
    """The override list of every job Hydra's basic sweeper makes from a multirun's task overrides
    (``seed=0,1 data.batch_size=50,100``) and ``hydra.sweeper.params``; None when they do not parse.

    As the basic sweeper does (its class is in ``hydra._internal``; tests/test_library_adapters.py
    checks that the two agree): the params come before the task overrides, a key given twice keeps
    its first place and its last values, and the jobs are the cartesian product of each key's values,
    read with Hydra's public override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in (sweeper_params or {}).items()] + list(task_overrides)
    choices: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:  # an interval sweep, which the basic sweeper refuses: no plan
                return None
    except Exception:  # an override syntax this reader does not know: no plan
        return None
    return [list(job) for job in itertools.product(*choices.values())]


def swept_keys(plan: list[list[str]]) -> list[str]:
    """The override keys whose value differs between the planned jobs, in order."""
    jobs = [dict(override.partition("=")[::2] for override in job) for job in plan]
    keys = list(dict.fromkeys(key for job in jobs for key in job))
    return [key for key in keys if len({job.get(key) for job in jobs}) > 1]


def read_state(sweep_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((sweep_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def format_duration(seconds: float) -> str:
    """``45 s``, ``4 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(done: int, failed: int, total: int | None, elapsed: float) -> str:
    """The progress bar line for ``done`` finished jobs (``failed`` of them failed) out of ``total``."""
    if not total:
        return (
            f"[sweep] {done} jobs done"
            + (f" ({failed} failed)" if failed else "")
            + f", {format_duration(elapsed)} elapsed"
        )
    filled = round(BAR_WIDTH * min(done, total) / total)
    line = f"[sweep] [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} jobs done"
    if failed:
        line += f" ({failed} failed)"
    line += f", {format_duration(elapsed)} elapsed"
    if 0 < done < total:
        line += f", ETA {format_duration(elapsed / done * (total - done))}"
    return line


def finished_lines(sweep_dir: Path, done: int, failed: int, elapsed: float) -> str:
    jobs = f"{done} jobs" + (f" ({failed} failed)" if failed else "")
    return (
        f"[sweep] finished: {jobs} in {format_duration(elapsed)}; outputs in {sweep_dir}/\n"
        f"[sweep] report: python -m vae_lab.report {sweep_dir}"
    )


def job_failure(job_return: Any) -> BaseException | None:
    """The exception a failed job raised: Hydra's public ``JobReturn.return_value`` re-raises it."""
    try:
        job_return.return_value  # noqa: B018 - read for the exception it raises
    except BaseException as error:  # what the job raised, KeyboardInterrupt included
        return error
    return None


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)).absolute()


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN


class SweepProgress(Callback):
    """Prints the sweep's progress and ETA after every job, and where the outputs are at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        plan = planned_job_overrides(
            list(config.hydra.overrides.task), OmegaConf.to_container(params) if params is not None else None
        )
        total = len(plan) if plan is not None else None
        (sweep_dir / LOG_FILE).unlink(missing_ok=True)
        state = {"started": time.time(), "total": total, "swept": swept_keys(plan or [])}
        (sweep_dir / STATE_FILE).write_text(json.dumps(state))
        jobs = f"{total} jobs" if total is not None else "jobs"
        print(f"[sweep] {jobs} starting; outputs in {sweep_dir}/", file=sys.stderr, flush=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A job that is run again (a re-launched sweep) is not failed until it fails again.
        (Path(str(config.hydra.runtime.output_dir)) / FAILURE_FILE).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        job_dir = Path(str(config.hydra.runtime.output_dir))
        status = getattr(job_return.status, "name", str(job_return.status)).lower()
        reason = ""
        if status == "failed":
            from vae_lab.run.stopped_runs import record_failed_job  # imports torch: only once a job failed

            reason = record_failed_job(job_dir, job_failure(job_return))
        if not _is_multirun(config):
            return
        sweep_dir = _sweep_dir(config)
        record = json.dumps({"job": str(job_dir), "status": status, "time": time.time()}) + "\n"
        descriptor = os.open(sweep_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, record.encode())
        finally:
            os.close(descriptor)
        done, failed, total, elapsed = self._progress(sweep_dir)
        swept = read_state(sweep_dir).get("swept") or []
        overrides = " ".join(o for o in job_return.overrides or [] if o.partition("=")[0] in swept)
        job = f"job {config.hydra.job.num}" + (f" ({overrides})" if overrides else "")
        print(
            f"[sweep] {job}: {status}{f' ({reason})' if reason else ''}; outputs in {job_dir}/",
            file=sys.stderr,
            flush=True,
        )
        print(progress_line(done, failed, total, elapsed), file=sys.stderr, flush=True)
        if total is not None and done == total:
            print(finished_lines(sweep_dir, done, failed, elapsed), file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        done, failed, total, elapsed = self._progress(sweep_dir)
        if total is None:  # otherwise the last job printed this already
            print(finished_lines(sweep_dir, done, failed, elapsed), file=sys.stderr, flush=True)

    @staticmethod
    def _progress(sweep_dir: Path) -> tuple[int, int, int | None, float]:
        """(jobs done, jobs failed, jobs planned or None, seconds since the sweep started)."""
        state = read_state(sweep_dir)
        try:
            records = [json.loads(line) for line in (sweep_dir / LOG_FILE).read_text().splitlines() if line]
        except OSError:
            records = []
        failed = sum(record["status"] != "completed" for record in records)
        return len(records), failed, state.get("total"), time.time() - state.get("started", time.time())
