"""Which devices and CPU threads a job may use when several jobs run side by side on one machine.

Under ``hydra/launcher=joblib`` each loky worker process runs many jobs one after the other, and
the mapping of jobs to workers is not round-robin, so ``job.num % n_gpus`` collides. Instead each
worker takes a *lease* on GPUs the first time it needs them: an exclusive ``fcntl`` lock on one
file per GPU, held until the worker exits. Two running workers therefore never hold the same GPU,
and every job of a worker uses the GPUs its worker holds (``CUDA_VISIBLE_DEVICES``, set again at
the start of every job because the job environment is restored after each job).

On the CPU, N workers share the cores: each job gets ``cores // N`` torch threads unless the config
sets ``threads``.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vae_lab.errors import ConfigError

#: Where the per-GPU lock files live; override with the VAE_LAB_LOCK_DIR environment variable
#: (it must be a local directory shared by all workers of the machine).
DEFAULT_LOCK_DIR = Path("/tmp") / f"vae_lab-device-locks-{os.getuid()}"


@dataclass
class GpuLease:
    """GPUs held by this process: their ids as the parent saw them, and the open locked files."""

    gpu_ids: list[str]
    lock_files: list[IO[str]] = field(default_factory=list)

    @property
    def visible_devices(self) -> str:
        return ",".join(self.gpu_ids)


#: The lease of this worker process, taken once and kept for the life of the process.
_lease: GpuLease | None = None


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(n_jobs: int) -> int:
    """The number of parallel workers joblib starts for ``n_jobs`` (-1 = one per core, -2 = all but one)."""
    cores = available_cores()
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, n_jobs)


def threads_per_worker(n_workers: int, processes_per_job: int = 1) -> int:
    """Torch threads for each process when ``n_workers`` jobs of ``processes_per_job`` processes share the cores."""
    return max(1, available_cores() // (n_workers * processes_per_job))


def _physical_gpu_ids() -> list[str]:
    """The GPUs this process may use, named as the parent environment names them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [device.strip() for device in visible.split(",") if device.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def lease_gpus(count: int, lock_dir: Path | None = None) -> GpuLease:
    """Hold ``count`` GPUs for this process (once; later calls return the same lease) and make
    exactly those visible to CUDA. Raises ConfigError when the other workers hold too many."""
    global _lease
    if _lease is not None:
        if len(_lease.gpu_ids) != count:
            raise ConfigError(
                f"this worker holds {len(_lease.gpu_ids)} GPU(s) but the job asks for trainer.devices={count}; "
                "under hydra/launcher=joblib every job of a sweep must use the same number of GPUs."
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = _lease.visible_devices
        return _lease
    lock_dir = Path(os.environ.get("VAE_LAB_LOCK_DIR", lock_dir or DEFAULT_LOCK_DIR))
    lock_dir.mkdir(parents=True, exist_ok=True)
    candidates = _physical_gpu_ids()
    held: list[str] = []
    files: list[IO[str]] = []
    for gpu_id in candidates:
        if len(held) == count:
            break
        handle = (lock_dir / f"gpu-{gpu_id}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        held.append(gpu_id)
        files.append(handle)
    if len(held) < count:
        for handle in files:
            handle.close()  # closing releases the lock
        raise ConfigError(
            f"this job needs {count} GPU(s) but only {len(held)} of the {len(candidates)} visible GPUs are free: "
            "the other joblib workers hold the rest for as long as they live. Use "
            f"hydra.launcher.n_jobs <= {max(1, len(candidates) // max(count, 1))} (GPUs / trainer.devices)."
        )
    _lease = GpuLease(held, files)
    os.environ["CUDA_VISIBLE_DEVICES"] = _lease.visible_devices
    return _lease


def current_lease() -> GpuLease | None:
    return _lease
