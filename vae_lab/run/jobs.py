"""The life of one job, whether a single run or one job of a multirun, under any launcher and on
any rank: what it may use, whether it runs at all, how it is named in wandb, and how it ends.

:func:`run_job` wraps vae_lab.train's ``train(cfg, job)``:

1. Place: under submitit with several tasks, take the rank from ``submitit.JobEnvironment()``;
   under ``hydra/launcher=joblib``, hold this worker's GPU lease or use ``cores // workers`` CPU
   threads (vae_lab.run.devices).
2. Plan (vae_lab.run.state): fresh, resume from ``checkpoints/last.ckpt`` (``resume=true``), skip a
   complete run, or refuse a directory that holds another run. Rank 0 decides under the run
   directory's lock (vae_lab.run.lock), held until the job ends, and marks the run ``running``
   in ``summary.json`` with its resolved config and wandb run id.
3. Train. Ranks 1..N-1 are started by vae_lab (vae_lab.run.distributed) and write nothing; rank 0
   writes checkpoints, images, ``summary.json`` and the wandb run.
4. End, also on failure: a failed job gets ``status: failed`` with the error in its
   ``summary.json`` and its wandb run (summary ``status``/``error``, exit code 1); the wandb run is
   always finished (so the next job of the process gets its own run), and the process environment
   is restored (``WandbLogger(offline=True)`` and DDP set variables for the whole process).

Errors: a single run exits as before (a VaeLabError prints its message and exits 2; anything else
raises). In a multirun a failing job raises :class:`JobFailedError`, which Hydra records as that
job's failure while the other jobs go on; the multirun exits non-zero at the end.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import RunInterrupted, VaeLabError
from vae_lab.run import devices, distributed
from vae_lab.run import lock as run_lock
from vae_lab.run import state as run_state
from vae_lab.run.launchers import LauncherKind, launcher_kind, processes_per_node
from vae_lab.run.provenance import provenance_fields
from vae_lab.tracking.wandb_mode import make_wandb_logger

log = logging.getLogger(__name__)

#: Override keys that do not name a job in wandb (paths, resuming, launcher and sweep plumbing).
UNNAMED_OVERRIDES = ("hydra", "data.root", "resume", "sweep")
#: Config groups whose choices become wandb tags (``likelihood:gaussian``).
TAGGED_GROUPS = ("data", "likelihood", "prior", "model", "objective", "trainer")
#: The summary.json statuses of a run that stopped (vae_lab.run.stopped_runs).
STOPPED = ("failed", "interrupted", "diverged")
#: The file in a sweep directory that fixes the sweep's wandb group across workers and re-launches.
GROUP_FILE = ".wandb_group"


class JobFailedError(Exception):
    """One job of a multirun failed; the details are in its summary.json (picklable, so that the
    joblib and submitit launchers can hand it back)."""


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_name(overrides: list[str]) -> str:
    """The job's own overrides, e.g. ``likelihood=gaussian,prior=mog``: how its wandb run is named."""
    named = [
        o
        for o in overrides
        if not any(
            _override_key(o) == key or _override_key(o).startswith((key + ".", key + "/")) for key in UNNAMED_OVERRIDES
        )
    ]
    return ",".join(sorted(named)) or "default"


def sweep_group(sweep_dir: Path, sweep_name: str) -> str:
    """The wandb group of a multirun: ``<sweep name>-<start time>``, fixed by the first job that
    asks (in ``<sweep dir>/.wandb_group``), so that all workers and later re-launches of the sweep
    into the same directory agree."""
    path = Path(sweep_dir) / GROUP_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f"{GROUP_FILE}.{os.getpid()}.tmp")
        candidate.write_text(f"{sweep_name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}\n")
        try:
            os.link(candidate, path)  # atomic: exactly one job's name wins
        except FileExistsError:
            pass
        finally:
            candidate.unlink(missing_ok=True)
    return path.read_text().strip()


def _new_attempt() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"


@dataclass
class Job:
    """One process's view of the job it runs (built from Hydra's runtime config)."""

    run_dir: Path
    multirun: bool
    launcher: LauncherKind
    launcher_config: dict[str, Any]
    sweep_dir: Path | None
    sweep_name: str
    overrides: list[str]
    choices: dict[str, str | None]
    attempt: str
    global_rank: int = 0
    threads: int | None = None
    threads_from_launcher: bool = False
    plan: run_state.LaunchPlan | None = None
    running: bool = False
    wandb_logger: Any = None

    @classmethod
    def from_hydra(cls) -> Job:
        hydra_config = HydraConfig.get()
        multirun = hydra_config.mode == RunMode.MULTIRUN
        choices = {str(k): (None if v is None else str(v)) for k, v in hydra_config.runtime.choices.items()}
        launcher_config = OmegaConf.to_container(hydra_config.launcher, resolve=True) if multirun else {}
        return cls(
            run_dir=Path(hydra_config.runtime.output_dir),
            multirun=multirun,
            launcher=launcher_kind(launcher_config.get("_target_")) if multirun else LauncherKind.BASIC,
            launcher_config=launcher_config,
            sweep_dir=Path(hydra_config.sweep.dir).absolute() if multirun else None,
            sweep_name=choices.get("sweep") or ("multirun" if multirun else "run"),
            overrides=list(hydra_config.overrides.task),
            choices=choices,
            attempt=distributed.launch_attempt() or _new_attempt(),
            global_rank=distributed.global_rank_from_environment(),
        )

    # ------------------------------------------------------------------ roles
    @property
    def is_rank_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def started_by_vae_lab(self) -> bool:
        """A rank that vae_lab's rank 0 started (it follows rank 0's plan and writes nothing)."""
        return bool(os.environ.get(distributed.LAUNCHED_BY))

    # ------------------------------------------------------------------ before training
    def prepare(self, cfg: DictConfig) -> None:
        """Steps 1 and 2 of the module doc."""
        if (
            self.launcher in (LauncherKind.SUBMITIT_LOCAL, LauncherKind.SUBMITIT_SLURM)
            and distributed.adopt_submitit_ranks()
        ):
            self.global_rank = distributed.global_rank_from_environment()
        if self.launcher is LauncherKind.JOBLIB:
            self._share_machine(cfg)
        if isinstance(cfg.get("threads"), int):  # a number; auto is chosen by model size in train()
            self.threads = int(cfg.threads)
        if self.threads:
            import torch  # seconds to import: not at the top, which `python -m vae_lab.train --help` imports

            torch.set_num_threads(self.threads)
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
        # Rank 0 decides under the run dir's lock (vae_lab.run.lock), which it holds until the job ends.
        decide = run_state.accept_launch if self.is_rank_zero and not self.started_by_vae_lab else run_state.plan_launch
        self.plan = decide(
            self.run_dir,
            bool(cfg.get("resume", False)),
            OmegaConf.to_container(cfg, resolve=True),
            self.attempt,
            None if self.multirun else os.environ.get("WANDB_RUN_ID"),  # set by `wandb agent` for its run
        )

    def start(self, cfg: DictConfig) -> None:
        """Rank 0, when training is about to start (everything is built): mark the run ``running``
        in summary.json. A run refused while it was being built leaves no summary (unless it is a
        multirun job)."""
        assert self.plan is not None
        if not self.is_rank_zero or self.started_by_vae_lab:
            return
        if self.plan.checkpoint is not None:
            log.info(
                f"vae_lab: resuming {self.run_dir} from {self.plan.checkpoint.name} "
                f"(wandb run {self.plan.wandb_run_id})"
            )
        if not self.multirun:
            log.info(
                f"vae_lab: run dir {self.run_dir} (if it gets killed, continue it with resume=true "
                f"hydra.run.dir={self.run_dir})"
            )
        run_state.tidy_for_start(self.run_dir, self.plan)
        run_state.write_running_summary(self.run_dir, self.summary(cfg, started=time.strftime("%Y-%m-%dT%H:%M:%S")))
        self.running = True

    def _share_machine(self, cfg: DictConfig) -> None:
        """Under joblib: a GPU lease per worker, or this worker's share of the CPU cores."""
        workers = devices.worker_count(int(self.launcher_config.get("n_jobs", -1)))
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda_available()):
            devices.lease_gpus(processes_per_node(cfg.trainer.get("devices", 1)))
        elif cfg.get("threads") in (None, "auto"):
            self.threads = devices.threads_per_worker(workers)
            self.threads_from_launcher = True

    # ------------------------------------------------------------------ what train() asks
    def summary_fields(self) -> dict[str, Any]:
        """What every state of summary.json records about this launch."""
        checkpoint = self.plan.checkpoint if self.plan else None
        return {
            "attempt": self.attempt,
            "wandb_run_id": self.plan.wandb_run_id if self.plan else None,
            "resumed_from": str(checkpoint.relative_to(self.run_dir)) if checkpoint else None,
            "overrides": self.overrides,
            "choices": self.choices,
            "launcher": self.launcher.value,
        }

    def summary(self, cfg: DictConfig, trainer: Any = None, **fields: Any) -> dict[str, Any]:
        """The fields of summary.json, in every state (the one place they are assembled): this launch
        (:meth:`summary_fields`) and the resolved config; given the ``trainer``, where training got to
        (provenance, seed, epochs, global steps); then ``fields`` (status, metrics, ...)."""
        summary = {**self.summary_fields(), "config": OmegaConf.to_container(cfg, resolve=True)}
        if trainer is not None:
            summary |= provenance_fields(trainer.strategy.root_device)
            summary |= {"seed": cfg.seed, "epochs": trainer.current_epoch, "global_steps": trainer.global_step}
        return {**summary, **fields}

    @property
    def checkpoint_to_resume(self) -> str | None:
        return str(self.plan.checkpoint) if self.plan and self.plan.checkpoint else None

    def wandb_group(self, configured: str | None) -> str | None:
        if configured:
            return configured
        if self.multirun and self.sweep_dir is not None:
            return sweep_group(self.sweep_dir, self.sweep_name)
        return None

    def wandb_tags(self, configured: list[str]) -> list[str]:
        tags = list(configured) + [
            f"{group}:{self.choices[group]}" for group in TAGGED_GROUPS if self.choices.get(group)
        ]
        if self.multirun or self.choices.get("sweep"):
            tags.append(f"sweep:{self.sweep_name}")
        return [tag[:64] for tag in tags]

    def make_wandb_logger(self, settings: DictConfig | None, config: dict[str, Any]) -> Any:
        """This job's wandb logger (vae_lab.tracking.wandb_mode), named, grouped and tagged as this job, with
        this job's run id; None when wandb is off."""
        if not settings:
            return None
        assert self.plan is not None
        logger = make_wandb_logger(
            settings,
            self.run_dir,
            job_name(self.overrides),
            config,
            run_id=self.plan.wandb_run_id,
            group=self.wandb_group(settings.get("group")) if self.is_rank_zero else settings.get("group"),
            tags=self.wandb_tags(list(settings.get("tags") or [])),
            choices=self.choices,
        )
        self.wandb_logger = logger
        return logger

    def trainer_plugins(self) -> list[Any]:
        return distributed.slurm_plugins(self.launcher)

    def trainer_callbacks(self) -> list[Any]:
        from vae_lab.run.log_flush import FlushLogsAtCheckpoint  # imports Lightning: not at start-up

        return [FlushLogsAtCheckpoint(), *distributed.debug_callbacks(self.run_dir)]

    def processes(self, trainer: Any, cfg: DictConfig):
        """Context for fit/validate/test: the run starts (:meth:`start`), and under DDP the other
        ranks are started and joined (vae_lab.run.distributed)."""
        distributed.check_supported(trainer, self.launcher)
        distributed.check_world_size(trainer)
        self.start(cfg)
        import torch  # loaded by now (the Trainer is built); not at the top, for start-up's sake

        # The ranks vae_lab starts use the threads train() chose for this process.
        return distributed.ranks_of(trainer, cfg, self.run_dir, self.attempt, torch.get_num_threads())

    # ------------------------------------------------------------------ the end
    def record_failure(
        self, cfg: DictConfig, error: BaseException, trainer: Any = None, interrupt: Any = None
    ) -> BaseException:
        """Mark the run failed, diverged or interrupted in summary.json and in wandb, through
        vae_lab.run.stopped_runs (the one failure recorder), and return the exception to raise in
        place of ``error`` (for an interruption, one that says how to resume). Never raises.

        From train() while it trains, evaluates or saves images (``trainer`` and its ``interrupt``
        given): rank 0 records it with where training got to. From :func:`run_job`, for a failure
        train() did not record, rank 0 records: a run that started (or whose wandb run exists), and any
        multirun job that got past planning, so that a sweep's directory says which jobs failed. Not
        recorded: a single run refused while it was being built (the message says it all and nothing
        is left behind), and a launch refused by planning (the directory may belong to another run)."""
        if trainer is None and not self._failure_left_to_record():
            return error
        from vae_lab.run.interrupts import GracefulInterrupt  # torch and lightning: here, not at start-up
        from vae_lab.run.stopped_runs import record_stopped_run

        try:
            if trainer is not None:
                known = self.summary(cfg, trainer)
            else:
                if self.wandb_logger is None and cfg.get("logger") and cfg.logger.get("wandb"):
                    logger = self.make_wandb_logger(cfg.logger.wandb, OmegaConf.to_container(cfg, resolve=True))
                    if logger is not None:
                        logger.start()
                previous = self._previous_summary()
                known = {**(previous if previous.get("attempt") == self.attempt else {}), **self.summary(cfg)}
            replacement = record_stopped_run(
                error,
                run_dir=self.run_dir,
                interrupt=interrupt or GracefulInterrupt(),
                overrides=self.overrides,
                summary=known,
                wandb_logger=self.wandb_logger,
                is_global_zero=trainer.is_global_zero if trainer is not None else True,
            )
        except Exception as record_error:  # e.g. the output dir is not writable: say so, keep the first error
            log.error(f"vae_lab: could not record the failure in {self.run_dir}: {record_error}")
            return error
        return replacement if trainer is not None else error

    def _previous_summary(self) -> dict[str, Any]:
        try:
            return run_state.read_summary(self.run_dir) or {}
        except VaeLabError:
            return {}

    def _failure_left_to_record(self) -> bool:
        """Whether :func:`run_job` records this job's failure (see :meth:`record_failure`)."""
        if not self.is_rank_zero or self.started_by_vae_lab or self.plan is None:
            return False
        if not (self.running or self.wandb_logger is not None or self.multirun):
            return False
        previous = self._previous_summary()
        recorded = previous.get("attempt") == self.attempt and previous.get("status") in STOPPED
        return not recorded  # else train() recorded it

    def close(self) -> None:
        """Finish this job's wandb run if it is still open, so that the next job of this process
        gets a run of its own."""
        if self.wandb_logger is not None:
            self.wandb_logger.finish()  # fail-safe: a wandb that already failed is left alone
            return
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            try:
                wandb.finish()
            except Exception as error:
                log.error(f"vae_lab: wandb.finish failed: {error}")


def _cuda_available() -> bool:
    import torch  # seconds to import: only under joblib, when the accelerator is auto

    return torch.cuda.is_available()


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def run_job(cfg: DictConfig, train: Callable[[DictConfig, Job], dict[str, Any]]) -> float | None:
    """Run ``train(cfg, job)`` as one job (see the module doc); returns the job's val/elbo."""
    job = Job.from_hydra()
    saved_environment = dict(os.environ)
    try:
        job.prepare(cfg)
        assert job.plan is not None
        if job.plan.skip:
            log.info(f"vae_lab: {job.run_dir} holds a complete run; skipped (resume=true).")
            return (job.plan.previous or {}).get("metrics", {}).get("val/elbo")
        summary = train(cfg, job)
        return summary.get("metrics", {}).get("val/elbo")
    except BaseException as error:
        job.record_failure(cfg, error)
        raise _error_to_raise(job, error) from None
    finally:
        job.close()
        run_lock.release(job.run_dir)
        _restore_environment(saved_environment)


def _error_to_raise(job: Job, error: BaseException) -> BaseException:
    """How a failure leaves the job (see the module doc)."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return error
    if isinstance(error, VaeLabError):
        log.error(f"vae_lab: error: {error}")
        # An interruption (Ctrl-C, SIGTERM) stops a whole multirun too.
        if not job.multirun or job.started_by_vae_lab or isinstance(error, RunInterrupted):
            return SystemExit(getattr(error, "exit_code", 2))
    elif not job.multirun or job.started_by_vae_lab:
        return error
    else:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return JobFailedError(
        f"job {job.run_dir.name} failed: {type(error).__name__}: {error} "
        f"(recorded in {job.run_dir / run_state.SUMMARY})"
    )
