"""One process per run directory: an OS lock on ``<run dir>/.lock``, held for the run's life.

Who holds it:

- ``python -m vae_lab.train`` (a single run) takes it before Hydra writes anything into the run
  directory (vae_lab.run.hydra_callbacks.RunDirectoryGuard), a multirun job when it starts
  (vae_lab.run.jobs); it is released when the job ends, or by the kernel when the process dies.
- The DDP ranks that vae_lab starts (vae_lab.run.distributed) inherit the locked file descriptor, so the
  lock lasts until the last rank exits; they never try to take it themselves. Ranks a launcher
  creates (submitit tasks, srun) leave the lock to global rank 0.
- ``python -m vae_lab.evaluate`` takes it while it runs, since it rewrites ``summary.json``.

Why an OS lock (``fcntl.flock``) rather than a marker file: the kernel releases it when its process
dies, however it dies (SIGKILL, OOM, a node lost), so a lock left by a dead process is free and is
simply taken over; there is no "is that pid still alive?" guess, which cannot be answered for a
process on another node. On NFS, Linux implements ``flock`` with NFS byte-range locks, which the
server grants cluster-wide and frees when the client's lease lapses (about 90 s after a node dies);
Lustre needs the ``flock`` mount option. Where the file system has no locks at all, the run goes on
unprotected, with a warning. (filelock's UnixFileLock is not used: it truncates the lock file when it
opens it, so it would erase the holder's name that a refused process reports.)

The lock file's content names the holder (pid, host, start time, command) for the refusal message.
A holder that ends normally empties it; a non-empty file found free therefore was left by a process
that died, and the new holder says it takes that stale lock over. Nothing is written before the
lock is held, and :func:`lock_existing` creates nothing: a launch refused in a directory changes
no file there.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from vae_lab.errors import ConfigError

LOCK_FILE = ".lock"

#: errno values of a file system that cannot lock.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class RunDirectoryBusy(ConfigError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """A held lock on ``<run dir>/.lock`` (see the module doc)."""

    def __init__(self, run_dir: Path, descriptor: int | None) -> None:
        self.run_dir = run_dir
        #: The locked file descriptor (None on a file system without locks).
        self.descriptor = descriptor
        #: Whether this process wrote its name into the lock file (:meth:`claim`).
        self.claimed = False

    def claim(self, purpose: str) -> None:
        """Write this process's name into the lock file (after a launch was accepted); report a
        stale lock of a dead process being taken over. Once per lock."""
        if self.descriptor is None or self.claimed:
            return
        previous = _describe(os.pread(self.descriptor, 4096, 0))
        if previous:
            print(
                f"vae_lab: taking over the lock of {self.run_dir}, left by {previous}, which is gone.", file=sys.stderr
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "purpose": purpose,
        }
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(self.descriptor)
        self.claimed = True

    def release(self) -> None:
        """Unlock; a claimed lock's file is emptied first (a clean end), an unclaimed one is left as it was."""
        if self.descriptor is None:
            return
        try:
            if self.claimed:
                os.ftruncate(self.descriptor, 0)
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
        finally:
            os.close(self.descriptor)
            self.descriptor = None


#: The locks this process holds, by absolute run directory.
_held: dict[Path, RunLock] = {}


def lock_existing(run_dir: str | os.PathLike) -> RunLock | None:
    """Lock ``run_dir`` if its lock file exists (creating nothing); None when it has none.
    Raises :class:`RunDirectoryBusy` naming the holder when a live process has it."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return _held[run_dir]
    try:
        descriptor = _open(run_dir / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return None
    return _lock(run_dir, descriptor)


def lock(run_dir: str | os.PathLike, purpose: str) -> RunLock:
    """Lock ``run_dir`` (created if need be) and write this process's name in the lock (evaluate, and
    vae_lab.run.state.accept_launch once it accepted a launch). Re-entrant within a process. Raises
    :class:`RunDirectoryBusy` naming the holder."""
    run_dir = Path(run_dir).absolute()
    existing = lock_existing(run_dir)
    if existing is None:
        existing = _lock(run_dir, _open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT))
    existing.claim(purpose)
    return existing


def release(run_dir: str | os.PathLike) -> None:
    """Release this process's lock on ``run_dir`` (nothing when it holds none)."""
    held_lock = _held.pop(Path(run_dir).absolute(), None)
    if held_lock is not None:
        held_lock.release()


def inheritable_descriptors() -> tuple[int, ...]:
    """The locked descriptors, for the processes this one starts to keep the locks alive (vae_lab.run.distributed)."""
    return tuple(held_lock.descriptor for held_lock in _held.values() if held_lock.descriptor is not None)


@atexit.register
def _release_all() -> None:
    for run_dir in list(_held):
        release(run_dir)


def _open(path: Path, flags: int) -> int:
    """``os.open``; a file that cannot be opened for writing is a ConfigError naming it (FileNotFoundError
    passes through for :func:`lock_existing`)."""
    try:
        if flags & os.O_CREAT:
            path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        raise ConfigError(f"cannot create the lock file {path}: its directory is missing.") from None
    except OSError as error:
        raise ConfigError(
            f"cannot open the lock file {path} for writing ({error.strerror}): vae_lab writes into a run directory "
            "only while it holds that lock. Fix the directory's permissions, or copy the run somewhere writable."
        ) from None


def _lock(run_dir: Path, descriptor: int) -> RunLock:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        content = _wait_for_name(descriptor)
        os.close(descriptor)
        holder = _describe(content) or "another process (which has not written its name yet)"
        raise RunDirectoryBusy(
            f"{run_dir} is in use by {holder}: only one process may write into a run directory. Wait for it to "
            "end or stop it, or choose another output directory (hydra.run.dir=...). Nothing was changed in it."
        ) from None
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            os.close(descriptor)
            raise
        print(
            f"vae_lab: warning: the file system of {run_dir} cannot lock files ({error.strerror}); this run is not "
            "protected against a second process writing into the same directory.",
            file=sys.stderr,
        )
        os.close(descriptor)
        descriptor = None
    _held[run_dir] = RunLock(run_dir, descriptor)
    return _held[run_dir]


def _wait_for_name(descriptor: int) -> bytes:
    """The holder's name; a holder that has just taken the lock writes it within moments."""
    for _ in range(20):
        content = os.pread(descriptor, 4096, 0)
        if content.strip():
            return content
        time.sleep(0.05)
    return b""


def _describe(content: bytes) -> str:
    """``pid 123 on host node7 (python -m vae_lab.train, since 2026-01-01T10:00:00)`` from a lock file's content."""
    if not content.strip():
        return ""
    try:
        holder = json.loads(content)
        what = f"{holder.get('purpose', '?')}, since {holder.get('started', '?')}"
        return f"pid {holder['pid']} on host {holder['host']} ({what})"
    except (ValueError, KeyError, TypeError):
        return f"a process that wrote {content[:200].decode(errors='replace').strip()!r}"
