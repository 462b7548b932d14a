"""Each fault of issue 8 injected for real, and what the run does about it.

- a NaN from a forward hook on the decoder at step N (real Trainer fits);
- SIGKILL during checkpoint writes, at several random moments (a real writer process);
- truncated, foreign and mismatched checkpoints given to resume (the CLI) and to check_checkpoint;
- an output dir that cannot be written: a read-only tmpfs mount (root ignores permission bits, not
  a read-only file system) and a regular file where a directory must go;
- an unreachable wandb host, and the wandb service killed mid-run;
- an invalid wandb key or setting, recorded in words a person can act on;
- SIGTERM mid-epoch, then resume=true, giving the same final metrics as an uninterrupted run;
  SIGINT finishing the wandb run with the signal's exit code;
- SIGTERM, SIGKILL and SIGINT during the final validation, test and evaluation, then resume=true;
- Ctrl-C (and SIGTERM) during start-up.

Every signal is sent at a point of the run's own progress, never after a delay: the run is asked to
wait at a named point (``VAE_LAB_PAUSE_AT``, vae_lab.run.pause_points), says so on stderr, and the test
sends the signal when it reads that line. So the signal lands at the same step on any machine,
however fast or busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

from tests.conftest import TINY, run_cli
from vae_lab.errors import CheckpointError, ConfigError, NumericalError
from vae_lab.files import check_writable_directory
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.run.checkpoint_io import AtomicCheckpointIO
from vae_lab.run.checkpoints import check_checkpoint, checkpoint_callbacks, load_checkpoint
from vae_lab.run.finite_guard import NonFiniteGuard
from vae_lab.run.pause_points import PAUSE_VARIABLE

QUIET = ["+trainer.enable_progress_bar=false"]


def composed(*overrides: str):
    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ---------------------------------------------------------------------------------------- numerical faults
def fit_with_nan_from_decoder(tmp_path: Path, data_root: Path, nan_at_step: int, check_every: int):
    """A real fit of the default model (10 steps per epoch) whose decoder outputs NaN at training
    step ``nan_at_step``, through a forward hook. Returns (trainer, model, the raised error)."""
    cfg = composed(*TINY, f"data.root={data_root}", "trainer.max_epochs=3", *QUIET)
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    training_calls = {"n": 0}

    def nan_at_step_n(module, inputs, output):
        if not module.training:
            return output
        step, training_calls["n"] = training_calls["n"], training_calls["n"] + 1
        return output * float("nan") if step == nan_at_step else output

    model.decoder.register_forward_hook(nan_at_step_n)
    guard = [NonFiniteGuard(check_every)] if check_every else []
    trainer = hydra.utils.instantiate(  # as train() builds it
        cfg.trainer,
        logger=False,
        callbacks=[*checkpoint_callbacks(tmp_path), *guard],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(NumericalError) as raised:
        trainer.fit(model, datamodule=datamodule)
    return trainer, model, str(raised.value)


def test_nan_at_step_n_stops_at_that_step_and_names_it(tmp_path: Path, data_root: Path) -> None:
    trainer, model, message = fit_with_nan_from_decoder(tmp_path, data_root, nan_at_step=13, check_every=1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert message.startswith("training stopped at step 13 (epoch 1, batch 3): train/loss is nan")
    assert "non-finite ELBO terms: reconstruction log p(x|z) (50 of 50 values)" in message
    assert "kl (" not in message  # the KL was finite: only the decoder's output was poisoned
    # The NaN loss reaches every gradient (all 14 parameter tensors).
    assert "non-finite gradient of encoder.features.1.0.weight, encoder.features.1.0.bias, " in message
    assert "and 10 more." in message
    assert f"Last good checkpoint: {last}." in message
    # Stopped before the optimizer applied the NaN gradient: 13 updates, every weight finite.
    assert trainer.global_step == 13
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    assert check_checkpoint(last, model)["global_step"] == 10  # the end of epoch 0, whole and finite


def test_nan_found_by_a_sparser_check_still_reports_the_first_bad_step(tmp_path: Path, data_root: Path) -> None:
    trainer, _, message = fit_with_nan_from_decoder(tmp_path, data_root, nan_at_step=13, check_every=4)
    assert message.startswith("training stopped at step 13 (epoch 1): a non-finite loss or gradient")
    assert "found by the check every 4 steps; the weights have taken 2 update(s) since" in message
    assert trainer.global_step == 15


def test_no_non_finite_checkpoint_is_ever_written(tmp_path: Path, data_root: Path) -> None:
    """With the step check off, the NaN poisons the weights; the checkpoint writer refuses them at
    the end of the epoch and the previous last.ckpt stays as it was. (best.ckpt is safe anyway:
    Lightning never saves a NaN val/elbo as the best.)"""
    last = tmp_path / "checkpoints" / "last.ckpt"
    _, model, message = fit_with_nan_from_decoder(tmp_path, data_root, nan_at_step=13, check_every=0)
    assert message.startswith(f"refusing to write checkpoint {last}: non-finite values in state_dict.")
    assert not all(torch.isfinite(parameter).all() for parameter in model.parameters())
    checkpoint = check_checkpoint(last)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 10)
    assert not [path.name for path in last.parent.iterdir() if path.name.endswith(".tmp")]


def test_cli_run_that_diverges_stops_at_the_first_step_and_records_the_failure(tmp_path: Path, data_root: Path) -> None:
    """A real divergence, no hook: SGD with lr = 1e30 sends the posterior means past float32 at
    step 1, so mu^2 in the KL (and in log p(z)) is inf."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        "logger=wandb",
        "optimizer._target_=torch.optim.SGD",
        "optimizer.lr=1e30",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    expected = (
        "vae_lab: error: training stopped at step 1 (epoch 0, batch 1): train/loss is inf; non-finite ELBO terms: "
        "kl (50 of 50 values), log p(z) (50 of 50 values); non-finite gradient of encoder."
    )
    assert expected in result.stderr
    assert "Last good checkpoint: none yet (no epoch has completed; the run must start over)." in result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "diverged" and summary["error"].startswith("NumericalError: training stopped at step 1")
    assert summary["global_steps"] == 1
    (debug_log,) = run_dir.glob("wandb/offline-run-*/logs/debug.log")
    assert "got exitcode: 1" in debug_log.read_text()  # the wandb run was finished as failed
    assert not list((run_dir / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_gradient_check_sees_one_bad_entry_behind_a_finite_loss(bad_value: float) -> None:
    """The guard's verdict on the gradients is the sum of all their entries: one NaN or infinity
    anywhere makes it non-finite, huge but finite gradients do not."""
    from vae_lab.run.finite_guard import gradient_sum

    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(200, 784), (200,), (784, 200)]]
    for parameter in parameters:
        parameter.grad = torch.full_like(parameter, 1e30)  # huge, but finite: their sum is 3e35
    parameters[1].grad[0] = -1e30
    assert torch.isfinite(gradient_sum(parameters))
    parameters[2].grad[123, 45] = bad_value
    assert not torch.isfinite(gradient_sum(parameters))
    assert not torch.isfinite(gradient_sum(parameters[2:]))
    parameters[2].grad = None  # parameters without a gradient are skipped
    assert torch.isfinite(gradient_sum(parameters[1:]))


def test_encoder_log_variance_is_bounded_by_construction() -> None:
    from vae_lab.model.networks import MLPEncoder
    from vae_lab.model.networks.base import LOG_VARIANCE_BOUND

    encoder = MLPEncoder((1, 28, 28), latent_dim=3, hidden_sizes=[8])
    with torch.no_grad():
        encoder.log_variance.bias.copy_(torch.tensor([1e4, -1e4, 0.5]))
        encoder.log_variance.weight.zero_()
    posterior = encoder(torch.rand(2, 1, 28, 28))
    log_variance = 2 * posterior.base_dist.scale.log()
    assert torch.allclose(log_variance[0], torch.tensor([LOG_VARIANCE_BOUND, -LOG_VARIANCE_BOUND, 0.5]), atol=1e-3)
    z = posterior.rsample()
    assert torch.isfinite(posterior.log_prob(z)).all()


# ---------------------------------------------------------------------------------------- checkpoint files
WRITER = textwrap.dedent(
    """
    import sys, torch
    from vae_lab.run.checkpoint_io import AtomicCheckpointIO

    path, atomic = sys.argv[1], sys.argv[2] == "atomic"
    weights = {f"layer{i}.weight": torch.empty(2_000_000) for i in range(4)}  # 32 MB per checkpoint
    for version in range(1, 10_000):
        for tensor in weights.values():
            tensor.fill_(version)
        checkpoint = {"state_dict": weights, "epoch": version, "global_step": version,
                      "pytorch-lightning_version": "2.6.6"}
        if atomic:
            AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        else:
            torch.save(checkpoint, path)
        print(version, flush=True)
    """
)


def temporary_size(path: Path) -> int:
    """The size of a temporary file, 0 once it has been renamed away."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def write_and_kill(tmp_path: Path, atomic: bool, rng: random.Random) -> tuple[int, bool]:
    """Start a writer, let it finish one checkpoint, wait until its next write has begun (a
    temporary file appears; for a plain torch.save, the checkpoint shrinks as it is rewritten),
    then SIGKILL it: for the atomic writer once its temporary file holds a random fraction of a
    whole checkpoint (the write's own progress, not a delay, so that the kill lands inside the
    write on a fast machine too). Returns the last version it reported whole and whether the kill
    left a half-written temporary file."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "last.ckpt"
    before = set(tmp_path.iterdir())
    writer = subprocess.Popen(
        [sys.executable, str(script), str(path), "atomic" if atomic else "plain"], stdout=subprocess.PIPE, text=True
    )
    try:
        first = int(writer.stdout.readline())  # one whole checkpoint is on disk
        whole_size = path.stat().st_size
        target = rng.uniform(0.1, 0.9) * whole_size if atomic else 0
        deadline = time.time() + 60  # a guard against a hang, not the moment of the kill
        while time.time() < deadline:
            if atomic:
                writing = any(
                    temporary_size(p) >= target for p in set(tmp_path.iterdir()) - before if p.name.endswith(".tmp")
                )
            else:
                writing = path.stat().st_size < whole_size
            if writing:
                break
            time.sleep(0.0005)
    finally:
        writer.kill()
    reported = [first] + [int(line) for line in writer.stdout.read().split()]
    writer.wait()
    leftovers = [p for p in set(tmp_path.iterdir()) - before if p.name.endswith(".tmp")]
    return reported[-1], bool(leftovers)


def test_sigkill_during_atomic_checkpoint_writes_always_leaves_a_good_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(8)
    killed_mid_write = 0
    for _ in range(5):
        last_reported, left_temporary = write_and_kill(tmp_path, atomic=True, rng=rng)
        checkpoint = check_checkpoint(tmp_path / "last.ckpt")  # loads, Lightning keys, finite
        version = checkpoint["epoch"]
        # The file is the last reported version, or the next one if it was renamed just before the kill.
        assert version in (last_reported, last_reported + 1)
        assert all(bool((tensor == version).all()) for tensor in checkpoint["state_dict"].values())
        killed_mid_write += left_temporary
    assert killed_mid_write >= 3  # most kills landed inside a write (the others just after one)


def test_sigkill_during_a_plain_torch_save_leaves_a_truncated_file_that_is_refused(tmp_path: Path) -> None:
    """The control: without the atomic rename the same kill truncates the checkpoint, and
    check_checkpoint refuses it with a clear message."""
    write_and_kill(tmp_path, atomic=False, rng=random.Random(1))
    # Killed at once after torch.save reopened the file: empty, or a part of the new one.
    with pytest.raises(
        CheckpointError, match=r"is empty \(0 bytes\): it was truncated|the file is truncated or corrupt"
    ):
        check_checkpoint(tmp_path / "last.ckpt")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A real one-epoch CLI run (its checkpoints are the good files the next tests corrupt)."""
    work = tmp_path_factory.mktemp("finished")
    run_dir = work / "run"
    result = run_cli("vae_lab.train", *TINY, *QUIET, f"data.root={data_root}", f"hydra.run.dir={run_dir}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_truncated_checkpoint_given_to_resume_is_refused(finished_run: Path, tmp_path: Path, data_root: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    # A run killed during training: its summary still says "running" (a complete run is skipped by resume).
    summary = read_summary(run_dir)
    summary["status"] = "running"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    last = run_dir / "checkpoints" / "last.ckpt"
    size = last.stat().st_size
    with last.open("r+b") as file:
        file.truncate(size // 2)
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert (
        f"vae_lab: error: checkpoint {last} ({size // 2} bytes) cannot be read: the file is truncated" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert read_summary(run_dir) == summary  # nothing was trained or overwritten


class NotACheckpoint:
    pass


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda path, good: path.write_bytes(b""), "is empty (0 bytes): it was truncated"),
        (lambda path, good: path.write_bytes(good[:100]), "cannot be read: the file is truncated or corrupt"),
        (lambda path, good: path.write_bytes(good[:-1]), "cannot be read: the file is truncated or corrupt"),
        (lambda path, good: path.write_text("epoch: 3\n"), "cannot be read: the file is truncated or corrupt"),
        (lambda path, good: torch.save(torch.zeros(3), path), "holds a Tensor, not a Lightning checkpoint"),
        (
            lambda path, good: torch.save({"model": {"w": torch.zeros(2)}}, path),
            "is not a Lightning checkpoint: it lacks state_dict",
        ),
        (
            lambda path, good: torch.save({"state_dict": {}, "x": NotACheckpoint()}, path),
            "holds Python objects other than tensors",
        ),
    ],
    ids=["empty", "first-100-bytes", "last-byte-missing", "text-file", "a-tensor", "foreign-dict", "pickled-object"],
)
def test_truncated_or_foreign_checkpoint_is_refused(finished_run: Path, tmp_path: Path, corrupt, expected: str) -> None:
    """What resume, the best-checkpoint evaluation and vae_lab.evaluate all call."""
    good = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "bad.ckpt"
    corrupt(path, good)
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(path)
    assert str(raised.value).startswith(f"checkpoint {path}")
    assert expected in str(raised.value)


def test_checkpoint_of_another_model_or_with_nan_weights_is_refused(
    finished_run: Path, tmp_path: Path, data_root: Path
) -> None:
    last = finished_run / "checkpoints" / "last.ckpt"
    cfg = composed(*TINY, f"data.root={data_root}", "model.latent_dim=20")
    other_model = build_model(cfg, build_datamodule(cfg))
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(last, other_model)
    assert "is from another model: encoder.mean.weight has shape [50, 200], the model needs [20, 200]" in str(
        raised.value
    )

    checkpoint = load_checkpoint(last)
    checkpoint["state_dict"]["decoder.output.bias"][3] = float("inf")
    torch.save(checkpoint, tmp_path / "inf.ckpt")  # bypassing AtomicCheckpointIO, which would refuse it
    with pytest.raises(CheckpointError, match=r"holds non-finite weights \(decoder.output.bias\)"):
        check_checkpoint(tmp_path / "inf.ckpt")


# ---------------------------------------------------------------------------------------- output dir
@contextlib.contextmanager
def tmpfs(mount_point: Path, options: str):
    """A tmpfs mounted at ``mount_point`` for the duration (skips the test where mounting is not
    permitted): a real read-only or full file system, which root cannot write either."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only tmpfs: not writable even by root (tests run as root, so chmod would not do)."""
    with tmpfs(tmp_path / "read-only", "ro,size=1m") as mount_point:
        yield mount_point


def test_read_only_output_dir_is_reported_before_anything_runs(
    read_only_dir: Path, tmp_path: Path, data_root: Path
) -> None:
    with pytest.raises(ConfigError, match="Read-only file system"):
        check_writable_directory(read_only_dir)
    result = run_cli(
        "vae_lab.train", *TINY, f"data.root={data_root}", f"hydra.run.dir={read_only_dir}/run", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"vae_lab: error: cannot create the output directory {read_only_dir}/run: the output directory "
        f"{read_only_dir} is not writable (Read-only file system"
    )
    assert "Traceback" not in result.stderr


def test_file_in_place_of_the_checkpoint_dir_is_reported_before_training(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a directory")
    result = run_cli("vae_lab.train", *TINY, f"data.root={data_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        f"vae_lab: error: the output directory {run_dir / 'checkpoints'} is not writable (File exists" in result.stderr
    )
    assert not (run_dir / "metrics.csv").exists()  # training never started
    assert (run_dir / "checkpoints").read_text() == "not a directory"


# ---------------------------------------------------------------------------------------- wandb
UNREACHABLE_WANDB = {
    "WANDB_BASE_URL": "http://127.0.0.1:9",  # the discard port: connection refused
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "WANDB_MODE": "online",
}


def metrics_csv_columns(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")


def test_unreachable_wandb_host_the_run_goes_on_with_local_logs(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        "logger=wandb",
        "logger.wandb.init_timeout=3",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=UNREACHABLE_WANDB,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae_lab: wandb failed during wandb.init (CommError" in result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert summary["wandb"]["status"] == "failed"
    assert summary["wandb"]["during"] == "wandb.init"
    assert summary["wandb"]["error"].startswith("CommError: ")  # wandb's words vary: timed out / deadline exceeded
    assert summary["metrics"]["test/elbo"] < 0
    assert {"train/elbo", "val/elbo"} <= set(metrics_csv_columns(run_dir))


def test_full_disk_under_the_wandb_dir_the_run_goes_on(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    with tmpfs(run_dir / "wandb", "size=16k"):  # room for wandb's first files, not for the images
        result = run_cli(
            "vae_lab.train",
            *TINY,
            *QUIET,
            "logger=wandb",
            f"data.root={data_root}",
            f"hydra.run.dir={run_dir}",
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert summary["wandb"]["status"] == "failed"
    assert "No space left on device" in summary["wandb"]["error"]
    assert summary["metrics"]["test/elbo"] < 0
    assert (run_dir / "images" / "samples.png").stat().st_size > 1000


def children_named(pid: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            command = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except OSError:
            continue
        if int(fields[1].split()[1]) == pid and command == name:
            found.append(int(stat.parent.name))
    return found


def test_wandb_service_killed_mid_run_the_run_goes_on(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vae_lab.train",
        *TINY,
        *QUIET,
        "trainer.max_epochs=3",
        "logger=wandb",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
    ]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    # The end of epoch 0: wandb.init is long done and the run has logged to wandb.
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.02)
    services = children_named(run.pid, "wandb-core")
    assert services, "the wandb service process was not found"
    for pid in services:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert summary["epochs"] == 3
    assert summary["wandb"]["status"] == "failed"
    assert summary["wandb"]["during"] != "wandb.init"  # it failed after the run had started
    assert "Traceback" not in stderr
    assert {"train/elbo", "val/elbo"} <= set(metrics_csv_columns(run_dir))


# ---------------------------------------------------------------------------------------- wandb settings
@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            {"WANDB_API_KEY": "bad", "WANDB_BASE_URL": "http://127.0.0.1:9"},
            "AuthenticationError: WANDB_API_KEY invalid: API key must have 40+ characters, has 3.",
        ),
        (
            {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "WANDB_BASE_URL": "not-a-url"},
            "invalid wandb setting base_url: Input should be a valid URL",
        ),
    ],
    ids=["bad-key", "bad-base-url"],
)
def test_invalid_wandb_key_or_setting_is_recorded_in_words(
    tmp_path: Path, data_root: Path, environment: dict[str, str], expected: str
) -> None:
    """Not pydantic's first line ("ValidationError: 1 validation error for Settings"), which names neither
    the setting nor the problem."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        "logger=wandb",
        "logger.wandb.init_timeout=3",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"WANDB_MODE": "online", **environment},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_status = read_summary(run_dir)["wandb"]
    assert wandb_status["status"] == "failed" and wandb_status["during"] == "wandb.init"
    assert wandb_status["error"].startswith(expected), wandb_status["error"]
    assert f"vae_lab: wandb failed during wandb.init ({expected}" in result.stderr


# ---------------------------------------------------------------------------------------- interrupts
#: Two epochs of 10 steps, then the final validation, test and evaluation (k = 20 on 200 images, in
#: batches of 16, so that it has batch boundaries to stop at).
RUN = [*TINY, "trainer.max_epochs=2", "+eval.images_per_batch=16", *QUIET]


def start_run(
    run_dir: Path, data_root: Path, *overrides: str, pause_at: str | None = None, base: list[str] = RUN
) -> subprocess.Popen:
    """The CLI in a subprocess, stdout and stderr in one pipe; ``pause_at`` names the point where the
    run waits for a signal (vae_lab.run.pause_points)."""
    command = [
        sys.executable,
        "-m",
        "vae_lab.train",
        *base,
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, **({PAUSE_VARIABLE: pause_at} if pause_at else {})}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def signal_at(run: subprocess.Popen, line: str, signum: int) -> str:
    """Read the run's output until a line starts with ``line``, send ``signum`` at that moment, and
    return all its output once it has ended."""
    seen = []
    for printed in run.stdout:
        seen.append(printed)
        if printed.startswith(line):
            break
    else:
        run.wait()
        pytest.fail(f"the run ended (status {run.returncode}) without printing {line!r}:\n{''.join(seen)[-3000:]}")
    run.send_signal(signum)
    rest, _ = run.communicate(timeout=600)
    return "".join(seen) + rest


def signal_at_point(run: subprocess.Popen, point: str, signum: int) -> str:
    return signal_at(run, f"vae_lab: paused at {point} ({PAUSE_VARIABLE})", signum)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """The run the interrupted ones must end up equal to."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run = start_run(run_dir, data_root)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    return run_dir


def resume(run_dir: Path, data_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("vae_lab.train", *RUN, f"data.root={data_root}", "resume=true", f"hydra.run.dir={run_dir}", cwd=cwd)


def assert_same_result(run_dir: Path, expected_dir: Path) -> None:
    """The numbers to the last digit, the metrics file (every epoch, nothing twice) and the images."""
    resumed, expected = read_summary(run_dir), read_summary(expected_dir)
    assert resumed["status"] == "complete" and resumed["resumed_from"] == "checkpoints/last.ckpt"
    assert resumed["global_steps"] == expected["global_steps"] == 20
    assert resumed["metrics"] == expected["metrics"]  # bit for bit: same seed, same CPU
    assert (run_dir / "metrics.csv").read_text() == (expected_dir / "metrics.csv").read_text()
    for image in ("reconstructions.png", "samples.png"):
        assert (run_dir / "images" / image).read_bytes() == (expected_dir / "images" / image).read_bytes()


def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, data_root: Path, uninterrupted_run: Path
) -> None:
    run_dir = tmp_path / "run"
    run = start_run(run_dir, data_root, pause_at="step 15")  # mid-epoch 1 (steps 11..20)
    output = signal_at_point(run, "step 15", signal.SIGTERM)
    assert run.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "vae_lab: received SIGTERM; stopping at the next batch boundary" in output
    line = next(line for line in output.splitlines() if line.startswith("vae_lab: error: interrupted by SIGTERM"))
    assert line.startswith("vae_lab: error: interrupted by SIGTERM at epoch 1, step 15. "), line
    assert f"{run_dir}/checkpoints/last.ckpt holds the end of the last completed epoch" in line
    command = f"python -m vae_lab.train {' '.join(RUN)} data.root={data_root} resume=true hydra.run.dir={run_dir}"
    assert command in output
    assert "Traceback" not in output
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["resume_command"] == command
    assert summary["global_steps"] == 15
    assert check_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10

    result = resume(run_dir, data_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(run_dir, uninterrupted_run)


def test_sigint_finishes_the_wandb_run_and_says_how_to_resume(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    run = start_run(run_dir, data_root, "logger=wandb", pause_at="step 15")
    output = signal_at_point(run, "step 15", signal.SIGINT)
    assert run.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "vae_lab: error: interrupted by SIGINT at epoch 1, step 15. " in output
    assert f"resume=true hydra.run.dir={run_dir}" in output
    assert "Traceback" not in output
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted"
    assert summary["wandb"]["status"] == "ok"
    (debug_log,) = run_dir.glob("wandb/offline-run-*/logs/debug.log")
    assert "got exitcode: 130" in debug_log.read_text()  # wandb.finish(exit_code=130) ran
    assert check_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 10


#: Where the run is stopped after its last checkpoint, one stop per launch, each launch resuming the last.
FINAL_STOPS = [
    ("validate", signal.SIGTERM, "during the final validate (after training)"),
    ("validate", signal.SIGKILL, None),
    ("test", signal.SIGTERM, "during the final test (after training)"),
    ("test", signal.SIGKILL, None),
    ("evaluation", signal.SIGTERM, "during the end-of-training evaluation (16/200 test images done)"),
    ("evaluation", signal.SIGKILL, None),
    ("evaluation", signal.SIGINT, "during the end-of-training evaluation (16/200 test images done)"),
    ("images", signal.SIGTERM, "before the image grids"),
]


def test_stopped_or_killed_during_the_final_stages_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, data_root: Path, uninterrupted_run: Path
) -> None:
    """Stopped (SIGTERM, SIGINT) or killed (SIGKILL) after its last checkpoint: in the final validation
    or test of the best checkpoint, the end-of-training evaluation or before the images. SIGTERM and
    SIGINT stop the run there as during training (status, message, exit code, no traceback). Each
    launch resumes the one before and is itself stopped at the next point; a resumed run trains no
    epoch again (last.ckpt stays as it was) and the last one ends with the uninterrupted run's
    numbers to the last digit, its metrics file and its images."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    last_bytes = None
    for launch, (point, signum, where) in enumerate(FINAL_STOPS):
        overrides = ["resume=true"] if launch else []
        run = start_run(run_dir, data_root, *overrides, pause_at=point)
        output = signal_at_point(run, point, signum)
        assert run.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), output[-3000:]
        summary = read_summary(run_dir)
        if last_bytes is None:
            assert check_checkpoint(last)["global_step"] == 20  # the last epoch's
            last_bytes = last.read_bytes()
        else:
            assert "vae_lab: resuming" in output
            assert last.read_bytes() == last_bytes, f"launch {launch} trained again"
        if signum == signal.SIGKILL:
            assert summary["status"] == "running", point  # it never got to say anything else
            continue
        assert "Traceback" not in output, output[-3000:]
        assert (
            f"vae_lab: error: interrupted by {signum.name} {where}. Training had finished and {last} holds its last "
            "epoch; resuming runs only the final validation, test and evaluation again" in output
        ), output[-3000:]
        assert summary["status"] == "interrupted" and summary["signal"] == signum.name
        assert summary["resume_command"].endswith(f"resume=true hydra.run.dir={run_dir}")
        assert summary["resume_command"] in output

    result = resume(run_dir, data_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert last.read_bytes() == last_bytes
    assert_same_result(run_dir, uninterrupted_run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda value: value.name)
def test_signal_during_start_up_stops_with_one_line(tmp_path: Path, data_root: Path, signum: signal.Signals) -> None:
    """At the very start (before torch, Lightning and Hydra's config): one line, the signal's exit
    status, no traceback, and nothing written."""
    run_dir = tmp_path / "run"
    run = start_run(run_dir, data_root, "logger=csv", base=TINY, pause_at="start")
    output = signal_at_point(run, "start", signum)
    assert run.returncode == 128 + signum, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("vae_lab: paused at")]
    assert lines == [
        f"vae_lab: stopped by {signum.name} outside training (no training step was running, nothing was lost); run "
        "the command again to start, with resume=true to continue a run."
    ]
    assert not run_dir.exists()


def test_ctrl_c_at_the_first_line_stops_without_a_traceback(tmp_path: Path, data_root: Path) -> None:
    """Ctrl-C the moment the run prints its first line (the wandb notice, before wandb.init and before the
    Trainer exists): exit status 130, a one-line message, no traceback."""
    run_dir = tmp_path / "run"
    run = start_run(run_dir, data_root, "logger=wandb", base=TINY)
    output = signal_at(run, "wandb: no API key found", signal.SIGINT)
    assert run.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    # Stopped where the signal found the run: during start-up (at once), or just after, at the first batch boundary.
    said = [
        line
        for line in output.splitlines()
        if line.startswith(
            ("vae_lab: stopped by SIGINT outside training", "vae_lab: error: interrupted by SIGINT at epoch 0, step 0.")
        )
    ]
    assert len(said) == 1, output[-3000:]
