"""What a run leaves behind when it does not finish: a failure or an interruption is recorded in
its ``summary.json`` (``"status": "failed"``, ``"interrupted"``, or ``"diverged"`` when training
stopped on a non-finite or diverged loss, see vae_lab.run.finite_guard), its wandb run is finished with a
non-zero exit code, and the person running it gets one message saying what happened and what to do.
Any job that raised, also one refused before its run started, gets ``failure.json`` beside it
(:func:`record_failed_job`, called by the Hydra callback vae_lab.run.sweep_progress.SweepProgress).
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae_lab.errors import NumericalError, RunInterrupted
from vae_lab.files import write_json_atomically
from vae_lab.run.checkpoints import last_checkpoint
from vae_lab.run.interrupts import GracefulInterrupt, resume_command
from vae_lab.run.sweep_progress import FAILURE_FILE


def record_stopped_run(
    error: BaseException,
    *,
    run_dir: Path,
    interrupt: GracefulInterrupt,
    overrides: Sequence[str],
    summary: dict[str, Any],
    wandb_logger: Any = None,
    is_global_zero: bool = True,
) -> BaseException:
    """Record why the run stopped and return the exception to raise in place of ``error``.

    ``summary`` holds what is known of the run (config, choices, ...); the status is added to it.
    An interruption (SIGINT/SIGTERM, also when Lightning raised it as SIGTERMException or after a
    second Ctrl-C) becomes :class:`RunInterrupted` with the command that resumes the run.
    """
    if interrupt.received is not None or isinstance(error, KeyboardInterrupt):
        received = interrupt.received or signal.SIGINT
        last = last_checkpoint(run_dir)
        if last is None:
            kept = "No epoch had completed, so there is no checkpoint; resuming starts from the beginning."
        elif interrupt.after_training:
            kept = (
                f"Training had finished and {last} holds its last epoch; resuming runs only the final validation, "
                "test and evaluation again, which reproduces the uninterrupted run exactly."
            )
        else:
            kept = (
                f"{last} holds the end of the last completed epoch; the interrupted epoch will be run again from its "
                "start, which reproduces the uninterrupted run exactly."
            )
        where = str(error) if isinstance(error, RunInterrupted) else received.name
        message = f"interrupted by {where}. {kept}\nResume with:\n  {resume_command(run_dir, overrides)}"
        status = {
            "status": "interrupted",
            "signal": received.name,
            "last_checkpoint": str(last) if last else None,
            "resume_command": resume_command(run_dir, overrides),
        }
        replacement: BaseException = RunInterrupted(message, exit_code=128 + int(received))
        exit_code = 128 + int(received)
    elif isinstance(error, Exception):
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)).strip().splitlines()
        status = {
            "status": "diverged" if isinstance(error, NumericalError) else "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": trace[-30:],
        }
        replacement, exit_code = error, 1
    else:  # SystemExit and the like: nothing to record
        return error
    if is_global_zero:
        if wandb_logger is not None:
            said = {key: status[key] for key in ("status", "error", "signal") if key in status}
            wandb_logger.run_safely("stopped-run summary", lambda: wandb_logger.experiment.summary.update(said))
            wandb_logger.finish(exit_code=exit_code)
            status["wandb"] = wandb_logger.status()
        try:
            write_json_atomically(run_dir / "summary.json", {**summary, **status, "metrics": {}})
        except OSError as write_error:  # the run is stopping anyway: say it, keep the first error
            print(f"vae_lab: could not write {run_dir / 'summary.json'}: {write_error}")
    return replacement


def failure_reason(error: Any) -> str:
    """``Type: message`` of an exception on one line ("" for anything else)."""
    return " ".join(f"{type(error).__name__}: {error}".split()) if isinstance(error, BaseException) else ""


def record_failed_job(job_dir: Path, error: Any) -> str:
    """``<job dir>/failure.json`` for a job that raised ``error`` (whether or not its run started), so that
    the report tells it from one still running; returns :func:`failure_reason`."""
    reason = failure_reason(error)
    write_json_atomically(Path(job_dir) / FAILURE_FILE, {"status": "failed", "error": reason, "time": time.time()})
    return reason
