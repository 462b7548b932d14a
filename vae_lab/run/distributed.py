"""DDP inside a run, whether the run is a single run or one job of a multirun under any launcher.

Lightning's ``strategy=ddp`` starts ranks 1..N-1 by re-running the command line, which under Hydra
re-runs a whole multirun in every child (Lightning #11300, #15737; Hydra #2070), and fails under the
joblib and submitit launchers. vae_lab therefore starts the other ranks itself:

- **Its own processes** (single run, basic and joblib launchers, and submitit jobs with one task):
  :class:`RankProcesses` starts ranks 1..N-1 as ``python -m vae_lab.train --config-path <dir>
  --config-name config hydra.run.dir=<this job's dir> hydra.output_subdir=null``, where ``<dir>``
  holds this job's config with every interpolation resolved, with ``LOCAL_RANK``, ``RANK``,
  ``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR`` and a fresh ``MASTER_PORT``. Rank 0 sets the same
  variables for itself (so Lightning sees the processes as created externally), trains with them,
  waits for them after testing, destroys the process group and restores its environment, ready for
  the next job.
- **submitit tasks**: with ``tasks_per_node`` > 1 each task is one rank; the rank environment is
  taken from ``submitit.JobEnvironment()`` (:func:`adopt_submitit_ranks`) on the local executor,
  and from SLURM by Lightning's ``SLURMEnvironment`` on a cluster (with ``auto_requeue=False``:
  submitit requeues; resume with ``resume=true``).
- torchrun / torchelastic and other cluster environments that create the processes are left to
  Lightning.

Refused with a clear error: ``ddp_spawn`` / ``ddp_fork`` under the joblib and submitit launchers,
and several nodes without a cluster environment or ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.lightning_adapter import command_line_launcher, multiprocessing_start_method
from vae_lab.run import lock as run_lock
from vae_lab.run.launchers import LauncherKind

#: Set in the environment of the ranks vae_lab starts: the attempt id of the rank 0 that started them.
LAUNCHED_BY = "VAE_LAB_LAUNCHED_BY"
#: Set to 1 to make every rank write the data indices it was served (vae_lab.run.shard_recorder).
RECORD_SHARDS = "VAE_LAB_RECORD_SHARDS"
#: How long rank 0 waits for the other ranks to exit after testing.
CHILD_EXIT_TIMEOUT_SECONDS = 600


def global_rank_from_environment() -> int:
    """This process's global rank as its launcher told it (0 when nothing says otherwise)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit() and (
            name != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        ):
            return int(os.environ[name])
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        return int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))
    return int(os.environ.get("LOCAL_RANK", "0"))


def launch_attempt() -> str | None:
    """Names this launch of a job across its processes: set by vae_lab for the ranks it starts, or
    the submitit / SLURM / torchelastic job id. None when the process runs alone."""
    if os.environ.get(LAUNCHED_BY):
        return os.environ[LAUNCHED_BY]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and os.environ.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"submitit-local-{os.environ['SUBMITIT_LOCAL_JOB_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchelastic-{os.environ['TORCHELASTIC_RUN_ID']}"
    return None


def port_for(job_id: str) -> int:
    """A port every task of one job derives alike from the job id (20000..59999)."""
    return 20_000 + int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % 40_000


def adopt_submitit_ranks() -> bool:
    """Inside a submitit-local job with several tasks, set this task's rank environment from
    ``submitit.JobEnvironment()`` so that Lightning sees an externally created process group.
    Returns True when it did. (On SLURM, Lightning's SLURMEnvironment reads SLURM's variables.)"""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return False
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks <= 1:
        return False
    hostnames = list(environment.hostnames)
    os.environ.update(
        LOCAL_RANK=str(environment.local_rank),
        RANK=str(environment.global_rank),
        NODE_RANK=str(environment.node),
        WORLD_SIZE=str(environment.num_tasks),
        MASTER_ADDR="127.0.0.1" if hostnames[0] in ("localhost", environment.hostname) else hostnames[0],
        MASTER_PORT=str(port_for(environment.job_id)),
    )
    return True


def slurm_plugins(launcher: LauncherKind) -> list[Any]:
    """Under submitit on SLURM, Lightning must not requeue the job itself (submitit does)."""
    if launcher is not LauncherKind.SUBMITIT_SLURM or not os.environ.get("SLURM_JOB_ID"):
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def check_supported(trainer: Any, launcher: LauncherKind) -> None:
    """Refuse the strategies that cannot start their processes from inside a launcher's worker."""
    start_method = multiprocessing_start_method(trainer)
    if (
        launcher in (LauncherKind.JOBLIB, LauncherKind.SUBMITIT_LOCAL, LauncherKind.SUBMITIT_SLURM)
        and start_method is not None
    ):
        raise ConfigError(
            f"strategy {type(trainer.strategy).__name__} with start method "
            f"'{start_method}' is not supported under hydra/launcher={launcher.value}: it forks or "
            "spawns from inside the launcher's worker. Use trainer=ddp (GPUs) or trainer=ddp_cpu, whose ranks "
            "vae_lab starts itself."
        )
    subprocess_launcher = command_line_launcher(trainer)
    if (
        subprocess_launcher is not None
        and subprocess_launcher.num_nodes > 1
        and not subprocess_launcher.cluster_environment.creates_processes_externally
        and not all(os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"))
    ):
        raise ConfigError(
            f"trainer.num_nodes={subprocess_launcher.num_nodes} needs the nodes to find each other: run under "
            "SLURM (hydra/launcher=submitit_slurm), torchrun, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on "
            "every node."
        )


def check_world_size(trainer: Any) -> None:
    """When the launcher created the processes, their number must be the trainer's."""
    expected = trainer.num_devices * trainer.num_nodes
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) != expected and expected > 1:
        raise ConfigError(
            f"the launcher started {os.environ['WORLD_SIZE']} processes for this job but the trainer expects "
            f"trainer.devices x trainer.num_nodes = {expected}. Set hydra.launcher.tasks_per_node=trainer.devices "
            "(the vae_lab default) or change trainer.devices."
        )


def _hydra_quoted(value: str) -> str:
    """A Hydra override value quoted so that commas, spaces and '=' in paths stay literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RankProcesses:
    """Ranks 1..N-1 of this node, started by rank 0 from the job's resolved config (see module doc)."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, num_processes: int, num_nodes: int, attempt: str, threads: int | None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.attempt = attempt
        self.threads = threads
        self.processes: list[subprocess.Popen] = []
        self.failed: list[tuple[int, int]] = []
        self._saved_environment: dict[str, str | None] = {}
        self._config_dir: Path | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _set_environment(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_environment.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def start(self) -> None:
        from lightning.fabric.plugins.environments.lightning import find_free_network_port

        node_rank = int(os.environ.get("NODE_RANK", "0"))
        environment = {
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT") if self.num_nodes > 1 else str(find_free_network_port()),
            "NODE_RANK": str(node_rank),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
            "LOCAL_RANK": "0",
            "RANK": str(node_rank * self.num_processes),
        }
        if self.threads:
            import torch

            environment["OMP_NUM_THREADS"] = str(self.threads)
            torch.set_num_threads(self.threads)
        self._set_environment(environment)
        self._config_dir = Path(tempfile.mkdtemp(prefix="vae_lab-ranks-"))
        (self._config_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        for local_rank in range(1, self.num_processes):
            child_environment = {
                **os.environ,
                "LOCAL_RANK": str(local_rank),
                "RANK": str(node_rank * self.num_processes + local_rank),
                LAUNCHED_BY: self.attempt,
            }
            command = [
                sys.executable,
                "-m",
                "vae_lab.train",
                "--config-path",
                str(self._config_dir),
                "--config-name",
                "config",
                f"hydra.run.dir={_hydra_quoted(str(self.run_dir))}",
                "hydra.output_subdir=null",
                f"hydra.job.name=train_rank_{local_rank}",
            ]
            # The ranks inherit the run dir's locked descriptor: the lock lasts until the last rank exits.
            self.processes.append(
                subprocess.Popen(
                    command, env=child_environment, cwd=os.getcwd(), pass_fds=run_lock.inheritable_descriptors()
                )
            )
        self._watcher = threading.Thread(target=self._watch, name="vae_lab-rank-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """When a rank dies with an error, stop the others, so that rank 0's next collective fails
        (its peers are gone) instead of waiting for the process-group timeout."""
        while not self._stop.wait(1.0):
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code not in (None, 0):
                    self.failed.append((index + 1, code))
                    self._kill_all()
                    return

    def _kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()

    def stop(self, success: bool) -> None:
        """Wait for the ranks (or kill them when rank 0 failed), tear down the process group and
        restore the environment."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        if not success:
            self._kill_all()
        deadline = time.monotonic() + CHILD_EXIT_TIMEOUT_SECONDS
        for index, process in enumerate(self.processes):
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0 and (index + 1, code) not in self.failed:
                self.failed.append((index + 1, code))
        destroy_process_group()
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)

    def failure_message(self) -> str:
        ranks = ", ".join(f"rank {rank} exited with code {code}" for rank, code in self.failed)
        return f"DDP: {ranks}; see its output above and {self.run_dir}/train_rank_*.log."


def destroy_process_group() -> None:
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def ranks_of(trainer: Any, cfg: DictConfig, run_dir: Path, attempt: str, threads: int | None) -> Iterator[None]:
    """Run the body (fit, validate, test) with the other ranks of this node started by vae_lab when
    Lightning would otherwise re-run the command line; a no-op for one process and for processes
    a launcher created."""
    launcher = command_line_launcher(trainer)
    if (
        launcher is None
        or launcher.cluster_environment.creates_processes_externally
        or launcher.num_processes * launcher.num_nodes <= 1
    ):
        try:
            yield
        finally:
            if launcher is not None and launcher.num_processes * launcher.num_nodes > 1:
                destroy_process_group()
        return
    ranks = RankProcesses(cfg, run_dir, launcher.num_processes, launcher.num_nodes, attempt, threads)
    ranks.start()
    success = False
    try:
        yield
        success = True
    finally:
        ranks.stop(success)
    if ranks.failed:
        raise RuntimeError(ranks.failure_message())


def debug_callbacks(run_dir: Path) -> list[Any]:
    """Callbacks the environment asks for: the shard record (``VAE_LAB_RECORD_SHARDS=1``)."""
    if os.environ.get(RECORD_SHARDS) != "1":
        return []
    from vae_lab.run.shard_recorder import ShardRecorder

    return [ShardRecorder(run_dir)]
