"""The run directory: a refused launch changes nothing in it, one process at a time writes into it
(vae_lab.run.lock), a lock of a dead process is taken over, a run killed in its first checkpoint
write restarts cleanly, outputs get the umask's mode, and resume=true can extend a complete run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY, run_cli

#: Runs ``python -m vae_lab.train <args>`` and SIGKILLs itself in its first ``last.ckpt`` write (after the
#: best.ckpt of epoch 0 was written), just after the temporary file was created: when the file
#: descriptor that was opened for it is wrapped in a Python file object (the audit event "open" with an int).
KILL_AT_FIRST_LAST_CHECKPOINT_WRITE = """
import os, runpy, signal, sys

created = []

def kill_in_last_checkpoint_write(event, args):
    if event == "open" and isinstance(args[0], str) and ".last.ckpt." in args[0] and args[0].endswith(".tmp"):
        created.append(args[0])
    elif event == "open" and created and isinstance(args[0], int):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_in_last_checkpoint_write)
runpy.run_module("vae_lab.train", run_name="__main__", alter_sys=True)
"""


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (hidden ones included), by relative path: its sha256."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Wait until ``condition()`` holds (the run's own progress, never a fixed delay)."""
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run exited with {process.returncode} before {what}")
        time.sleep(0.05)


def is_running(run_dir: Path) -> bool:
    try:
        return summary_of(run_dir).get("status") == "running"
    except (FileNotFoundError, json.JSONDecodeError):
        return False


@pytest.fixture(scope="module")
def finished_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny run, trained under umask 022."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    previous_umask = os.umask(0o022)
    try:
        result = run_cli("vae_lab.train", *TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    finally:
        os.umask(previous_umask)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize(
    ("overrides", "returncode", "says"),
    [
        (["likelihood=continuous_bernoulli"], 2, "already holds a run (status: complete)"),
        (["likelihood=continuous_bernoulli", "resume=true"], 2, "holds a run started with another config"),
        (["resume=true"], 0, "holds a complete run; skipped"),
    ],
    ids=["other-config", "resume-other-config", "resume-skips"],
)
def test_a_refused_or_skipped_launch_changes_no_file_of_a_finished_run(
    finished_run: Path, overrides: list[str], returncode: int, says: str
) -> None:
    """Hydra would rewrite .hydra/config.yaml and overrides.yaml before the task runs; after which
    `vae_lab.evaluate` rebuilt the wrong model and wrote its NLL into the run's summary."""
    before = tree_digest(finished_run)
    result = run_cli("vae_lab.train", *TINY, *overrides, f"hydra.run.dir={finished_run}", cwd=finished_run.parent)
    assert result.returncode == returncode, result.stderr[-3000:]
    assert says in result.stdout + result.stderr
    assert tree_digest(finished_run) == before


def test_summary_and_checkpoints_have_the_mode_of_the_other_outputs(finished_run: Path) -> None:
    """Under umask 022 every output is 0644 (tempfile.mkstemp made the atomically written ones 0600)."""
    outputs = ["summary.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv", "images/samples.png"]
    modes = {name: oct(stat.S_IMODE((finished_run / name).stat().st_mode)) for name in outputs}
    assert modes == dict.fromkeys(outputs, oct(0o644))


def test_an_empty_run_dir_is_refused(data_root: Path, tmp_path: Path) -> None:
    result = run_cli("vae_lab.train", *TINY, "hydra.run.dir=", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "hydra.run.dir is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written into the current directory


def test_resume_with_more_epochs_extends_a_complete_run(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = summary_of(run_dir)
    assert before["epochs"] == 1
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    result = run_cli(
        "vae_lab.train", *overrides, "trainer.max_epochs=2", "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(run_dir)
    assert (summary["status"], summary["epochs"], summary["resumed_from"]) == ("complete", 2, "checkpoints/last.ckpt")
    assert summary["config"]["trainer"]["max_epochs"] == 2
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * before["global_steps"])  # the extra epoch was trained
    # Evaluated again, with the weights of the longer training.
    assert summary["metrics"]["test/nll_is"] != before["metrics"]["test/nll_is"]
    assert summary["metrics"]["test/elbo"] != before["metrics"]["test/elbo"]


def test_one_process_per_run_directory(data_root: Path, tmp_path: Path) -> None:
    """While a run trains (paused with SIGSTOP, so that it is surely alive, on any machine), a second
    launch, a resume=true and an evaluate into its directory are refused naming its pid and host;
    then the first run completes normally."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "vae_lab.train", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: is_running(run_dir), first, "it started training")
        os.kill(first.pid, signal.SIGSTOP)
        try:
            holder = f"pid {first.pid} on host {socket.gethostname()}"
            for module, overrides in [
                ("vae_lab.train", [*TINY, f"hydra.run.dir={run_dir}"]),
                ("vae_lab.train", [*TINY, "resume=true", f"hydra.run.dir={run_dir}"]),
                ("vae_lab.evaluate", [f"run_dir={run_dir}", "n_importance_samples=2", "n_test_images=10"]),
            ]:
                before = tree_digest(run_dir)
                refused = run_cli(module, *overrides, cwd=tmp_path)
                assert refused.returncode == 2, (overrides, refused.stderr[-3000:])
                assert f"{run_dir} is in use by {holder}" in refused.stderr, refused.stderr[-3000:]
                assert tree_digest(run_dir) == before
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert summary_of(run_dir)["status"] == "complete"
    assert (run_dir / ".lock").read_bytes() == b""  # released cleanly
    evaluate = [f"run_dir={run_dir}", "n_importance_samples=2", "n_test_images=10"]
    evaluated = run_cli("vae_lab.evaluate", *evaluate, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


@pytest.fixture(scope="module")
def killed_then_resumed(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A run SIGKILLed as it opened the temporary file of its first last.ckpt write, then resumed:
    ``(run dir, the killed process's pid, files after the kill, the resume's completed process)``."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    script = run_dir.parent / "kill_at_last_checkpoint.py"
    script.write_text(KILL_AT_FIRST_LAST_CHECKPOINT_WRITE)
    killed = subprocess.Popen(
        [sys.executable, str(script), *TINY, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    after_kill = {str(p.relative_to(run_dir)): p.stat().st_size for p in run_dir.rglob("*") if p.is_file()}
    resumed = run_cli("vae_lab.train", *TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, killed.pid, after_kill, resumed


def test_a_lock_left_by_a_killed_process_is_taken_over(killed_then_resumed) -> None:
    run_dir, pid, after_kill, resumed = killed_then_resumed
    assert after_kill[".lock"] > 0  # the killed process's name is still in it
    assert f"taking over the lock of {run_dir}, left by pid {pid} on host {socket.gethostname()}" in resumed.stderr
    assert summary_of(run_dir)["status"] == "complete"


def test_a_run_killed_in_its_first_last_checkpoint_write_restarts_without_a_stale_best(killed_then_resumed) -> None:
    run_dir, _, after_kill, _ = killed_then_resumed
    assert "checkpoints/best.ckpt" in after_kill and "checkpoints/last.ckpt" not in after_kill
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # no best-v1
    assert summary_of(run_dir)["best_checkpoint"] == "checkpoints/best.ckpt"


def test_no_temporary_file_is_left_behind(killed_then_resumed) -> None:
    run_dir, _, after_kill, _ = killed_then_resumed
    left = [name for name, size in after_kill.items() if name.endswith(".tmp")]
    assert len(left) == 1 and after_kill[left[0]] == 0  # the kill left a 0-byte temporary file ...
    assert not [p for p in run_dir.rglob("*.tmp")]  # ... which the resumed run removed


def has_exited(pid: int) -> bool:
    try:
        return "(zombie)" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def rank_children(pid: int) -> list[int]:
    listed = subprocess.run(["pgrep", "-P", str(pid), "-f", "train_rank_1"], capture_output=True, text=True).stdout
    return [int(line) for line in listed.split()]


def test_the_ddp_ranks_a_run_started_keep_its_lock(data_root: Path, tmp_path: Path) -> None:
    """Rank 1 (started by rank 0, trainer=ddp_cpu) holds the lock on: with rank 0 killed and rank 1
    paused, a resume=true is still refused; once rank 1 is gone too, the lock is free."""
    run_dir = tmp_path / "run"
    rank_zero = subprocess.Popen(
        [sys.executable, "-m", "vae_lab.train", *TINY, "trainer=ddp_cpu", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ranks: list[int] = []
    try:
        wait_for(lambda: bool(ranks.extend(rank_children(rank_zero.pid)) or ranks), rank_zero, "it started rank 1")
        os.kill(ranks[0], signal.SIGSTOP)
        rank_zero.kill()
        rank_zero.wait()
        resume = [*TINY, "trainer=ddp_cpu", "resume=true", f"hydra.run.dir={run_dir}"]
        refused = run_cli("vae_lab.train", *resume, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"{run_dir} is in use by pid {rank_zero.pid} on host {socket.gethostname()}" in refused.stderr
    finally:
        rank_zero.kill()
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
    while not has_exited(ranks[0]):
        time.sleep(0.05)  # until the kernel has closed the killed rank's files
    from vae_lab.run import lock as run_lock

    run_lock.lock(run_dir, "test")  # free now
    run_lock.release(run_dir)
