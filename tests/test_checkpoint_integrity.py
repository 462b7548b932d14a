"""Checkpoint integrity and provenance (issue 12), on one real tiny CLI run on real MNIST:

- every checkpoint carries the run's resolved config, the provenance and content digests;
  summary.json carries the provenance and a schema version;
- a flipped bit in a weight (evaluate, resume) or in an optimizer moment (resume) is refused;
- ``vae_lab.evaluate`` refuses a run whose ``.hydra/config.yaml`` no longer matches the checkpoint's
  model or data settings (what a refused launch into the run dir used to leave behind), and writes nothing;
- what may differ (trainer.max_epochs to extend a run, eval settings, paths, threads) is accepted;
- a checkpoint and a summary.json written before this change are still read (with a warning for the checkpoint).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli
from omegaconf import OmegaConf

import vae_lab
from vae_lab.errors import CheckpointError
from vae_lab.run.checkpoint_integrity import MAY_DIFFER, RECORD_KEY, content_digests, verify_digests
from vae_lab.run.checkpoint_io import AtomicCheckpointIO
from vae_lab.run.checkpoints import check_checkpoint, load_checkpoint
from vae_lab.run.provenance import SCHEMA_VERSION, schema_version

QUIET = ["+trainer.enable_progress_bar=false", "threads=1"]
QUICK_EVAL = ["n_importance_samples=5", "n_test_images=50", "threads=1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A real one-epoch CLI run; each test works on a copy (:func:`copy_of`)."""
    work = tmp_path_factory.mktemp("integrity")
    run_dir = work / "run"
    result = run_cli("vae_lab.train", *TINY, *QUIET, f"data.root={data_root}", f"hydra.run.dir={run_dir}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path, status: str | None = None) -> Path:
    """A copy of the run; with ``status``, its summary.json says so (``running``: a killed run, which
    resume=true continues)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    if status is not None:
        summary = json.loads((copy / "summary.json").read_text())
        summary["status"] = status
        (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def flip_lowest_bit(path: Path, tensor: torch.Tensor) -> int:
    """Flip the lowest mantissa bit of ``tensor``'s largest entry where the checkpoint file stores it
    (its bytes are stored uncompressed); returns the entry's index. The value stays finite and
    changes in its last digit: nothing but a digest can see it."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start >= 0 and data.find(raw, start + 1) == -1
    index = int(tensor.abs().flatten().argmax())
    data[start + index * tensor.element_size()] ^= 1  # little-endian: the first byte holds the lowest bits
    path.write_bytes(bytes(data))
    return index


def assert_changed_in_last_digit(path: Path, before: torch.Tensor, after_of) -> None:
    """The file still loads, and only the flipped entry differs, finite and nearly equal: the old checks pass it."""
    after = after_of(torch.load(path, weights_only=True))
    changed = (after != before).flatten().nonzero().flatten().tolist()
    assert len(changed) == 1 and bool(torch.isfinite(after).all())
    assert float(after.flatten()[changed[0]]) == pytest.approx(float(before.flatten()[changed[0]]), rel=1e-6)


def weights_of(checkpoint: dict) -> torch.Tensor:
    return checkpoint["state_dict"]["encoder.features.1.0.weight"]


def first_moment_of(checkpoint: dict) -> torch.Tensor:
    return checkpoint["optimizer_states"][0]["state"][0]["exp_avg"]


# ---------------------------------------------------------------------------------------- what is recorded
def test_checkpoints_and_summary_carry_config_digests_and_provenance(finished_run: Path, tmp_path: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    package = Path(vae_lab.__file__).parent
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, check=False)
    expected = {
        "vae_lab_version": vae_lab.__version__,
        "git_commit": git.stdout.strip() if git.returncode == 0 else None,
        "versions": {name: metadata.version(name) for name in ("torch", "lightning", "hydra-core", "wandb")},
        "device": "cpu",
    }
    assert summary["schema_version"] == SCHEMA_VERSION == 2
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = load_checkpoint(finished_run / "checkpoints" / name)
        record = checkpoint[RECORD_KEY]
        assert record["schema_version"] == SCHEMA_VERSION
        assert record["config"] == summary["config"]  # the resolved config of the run
        assert record["config"]["likelihood"]["_target_"] == "vae_lab.model.likelihoods.BernoulliLikelihood"
        for provenance in (record["provenance"], summary["provenance"]):
            assert {key: provenance[key] for key in expected} == expected
            assert isinstance(provenance["git_dirty"], bool) and provenance["device_name"]
        assert set(record["digests"]) == {*(key for key in checkpoint if key != RECORD_KEY), RECORD_KEY}
        assert verify_digests(finished_run / "checkpoints" / name, checkpoint)

    # The digests survive any number of save/load round trips exactly (through the run's own checkpoint I/O).
    copy = tmp_path / "again.ckpt"
    checkpoint = load_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    AtomicCheckpointIO().save_checkpoint(checkpoint, str(copy))
    again = AtomicCheckpointIO().load_checkpoint(str(copy))
    assert again[RECORD_KEY]["digests"] == content_digests(again) == checkpoint[RECORD_KEY]["digests"]


# ---------------------------------------------------------------------------------------- flipped bits
def test_flipped_bit_in_a_weight_is_refused_by_evaluate(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    best = run_dir / "checkpoints" / "best.ckpt"
    before = weights_of(load_checkpoint(best)).clone()
    flip_lowest_bit(best, before)
    assert_changed_in_last_digit(best, before, weights_of)
    summary_before = (run_dir / "summary.json").read_bytes()

    result = run_cli("vae_lab.evaluate", f"run_dir={run_dir}", *QUICK_EVAL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    message = f"vae_lab: error: checkpoint {best} is corrupt: the model weights (state_dict) changed after it was"
    assert message in result.stderr
    assert "Restore the file from a good copy, or use another checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "summary.json").read_bytes() == summary_before


@pytest.mark.parametrize(
    ("tensor_of", "part"),
    [(weights_of, "the model weights (state_dict)"), (first_moment_of, "the optimizer state (optimizer_states)")],
    ids=["weight", "adam-first-moment"],
)
def test_flipped_bit_in_weights_or_optimizer_state_is_refused_by_resume(
    finished_run: Path, tmp_path: Path, data_root: Path, tensor_of, part: str
) -> None:
    run_dir = copy_of(finished_run, tmp_path, status="running")  # killed: resume=true continues it
    last = run_dir / "checkpoints" / "last.ckpt"
    before = tensor_of(load_checkpoint(last)).clone()
    flip_lowest_bit(last, before)
    assert_changed_in_last_digit(last, before, tensor_of)
    corrupt, summary_before = last.read_bytes(), (run_dir / "summary.json").read_bytes()

    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        "trainer.max_epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"vae_lab: error: checkpoint {last} is corrupt: {part} changed after it was written" in result.stderr
    assert "move a corrupt last.ckpt away and start the run over" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "summary.json").read_bytes() == summary_before  # nothing trained or overwritten
    assert last.read_bytes() == corrupt


# ---------------------------------------------------------------------------------------- settings
def test_evaluate_refuses_a_run_config_rewritten_to_another_likelihood(finished_run: Path, tmp_path: Path) -> None:
    """A refused launch into the run dir used to rewrite .hydra/config.yaml; the parameters of a
    continuous Bernoulli decoder have the same shapes, so evaluate used to load them, evaluate the
    wrong model and write its NLL into summary.json."""
    run_dir = copy_of(finished_run, tmp_path)
    config_path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_path)
    config.likelihood = {"_target_": "vae_lab.model.likelihoods.ContinuousBernoulliLikelihood"}
    config.seed = 3
    OmegaConf.save(config, config_path)
    summary_before = (run_dir / "summary.json").read_bytes()

    result = run_cli("vae_lab.evaluate", f"run_dir={run_dir}", *QUICK_EVAL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert (
        f"vae_lab: error: checkpoint {best} was written with other model or data settings than {config_path} "
        f"(checkpoint -> {config_path}):\n"
    ) in result.stderr
    # Each differing key, with both values; seed interpolates into data.seed and eval.seed (eval.* may differ).
    listing = result.stderr.split("):\n", 1)[1].split("\nNothing was loaded or written.")[0].splitlines()
    assert listing == [
        "  - data.seed: 0 -> 3",
        (
            "  - likelihood._target_: vae_lab.model.likelihoods.BernoulliLikelihood -> "
            "vae_lab.model.likelihoods.ContinuousBernoulliLikelihood"
        ),
        "  - seed: 0 -> 3",
    ]
    assert "Traceback" not in result.stderr
    assert (run_dir / "summary.json").read_bytes() == summary_before


def test_resume_refuses_a_checkpoint_written_with_other_settings(
    finished_run: Path, tmp_path: Path, data_root: Path
) -> None:
    """The checkpoint's own config is checked even where summary.json cannot tell (here it is gone)."""
    run_dir = copy_of(finished_run, tmp_path)
    (run_dir / "summary.json").unlink()
    kept = {name: (run_dir / name).read_bytes() for name in ("checkpoints/last.ckpt", "metrics.csv")}
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        "likelihood=continuous_bernoulli",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert (
        f"vae_lab: error: checkpoint {last} was written with other model or data settings than this run's config "
        "(checkpoint -> this run's config):\n"
        "  - likelihood._target_: vae_lab.model.likelihoods.BernoulliLikelihood -> "
        "vae_lab.model.likelihoods.ContinuousBernoulliLikelihood\nNothing was loaded or written."
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept and not (run_dir / "summary.json").exists()


def test_longer_training_and_other_eval_paths_and_threads_are_accepted(
    finished_run: Path, tmp_path: Path, data_root: Path
) -> None:
    run_dir = copy_of(finished_run, tmp_path, status="running")
    # evaluate: a run config whose allowed keys differ from the checkpoint's.
    config_path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_path)
    config.trainer.max_epochs, config.eval.n_importance_samples, config.threads = 7, 3, 2
    config.data.root = str(tmp_path / "moved")  # and the data moved: data_root= says where
    OmegaConf.save(config, config_path)
    result = run_cli("vae_lab.evaluate", f"run_dir={run_dir}", f"data_root={data_root}", *QUICK_EVAL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae_lab: warning" not in result.stderr
    evaluation = json.loads((run_dir / "summary.json").read_text())["evaluation"]
    assert evaluation["n_importance_samples"] == 5 and evaluation["provenance"]["device"] == "cpu"

    # resume: a run extended by one more epoch.
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        "trainer.max_epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["global_steps"]) == ("complete", 2, 20)
    assert summary["resumed_from"] == "checkpoints/last.ckpt"
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")[RECORD_KEY]["config"]["trainer"]["max_epochs"] == 2


def test_the_rule_lists_only_keys_that_do_not_define_model_or_data() -> None:
    assert {"trainer.max_epochs", "eval", "data.root", "threads", "trainer.devices", "logger"} <= set(MAY_DIFFER)
    defining_keys = ("likelihood", "prior", "model", "objective", "optimizer", "seed", "data.batch_size")
    defining_keys += ("data.binarization", "trainer.precision", "trainer.gradient_clip_val", "lr_scheduler")
    for defining in defining_keys:
        assert not any(defining == key or defining.startswith(key + ".") for key in MAY_DIFFER), defining


# ---------------------------------------------------------------------------------------- older files
def test_checkpoint_and_summary_written_before_this_change_are_still_read(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The code before this change wrote exactly today's checkpoint without the ``vae_lab`` record,
    and today's summary.json without ``schema_version`` and ``provenance``."""
    from vae_lab.report.jobs import collect_jobs

    run_dir = copy_of(finished_run, tmp_path)
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = load_checkpoint(run_dir / "checkpoints" / name)
        del checkpoint[RECORD_KEY]
        torch.save(checkpoint, run_dir / "checkpoints" / name)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("schema_version", "provenance"):
        del summary[key]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert schema_version(summary) == 1

    last = run_dir / "checkpoints" / "last.ckpt"
    assert check_checkpoint(last, config=summary["config"])["epoch"] == 0  # what resume calls
    assert capsys.readouterr().err == (
        f"vae_lab: warning: checkpoint {last} carries no content digest and no config (it was written before vae_lab "
        "recorded them, or by other code): its integrity and settings cannot be checked.\n"
    )
    assert AtomicCheckpointIO().load_checkpoint(str(last))["global_step"] == 10  # what Lightning's resume loads

    (job,) = collect_jobs([run_dir])
    assert job.status == "complete" and job.metrics["test/elbo"] == summary["metrics"]["test/elbo"]

    result = run_cli("vae_lab.evaluate", f"run_dir={run_dir}", *QUICK_EVAL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert f"vae_lab: warning: checkpoint {best} carries no content digest and no config" in result.stderr
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["evaluation"]["n_images"] == 50 and "schema_version" not in after
    assert after["metrics"]["test/elbo"] == summary["metrics"]["test/elbo"]


def test_checkpoint_with_digests_but_no_config_is_verified(finished_run: Path, tmp_path: Path) -> None:
    """A checkpoint whose record has digests but no config (written through vae_lab's checkpoint I/O
    without the CheckpointRecord callback) is still verified."""
    checkpoint = load_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    del checkpoint[RECORD_KEY]
    path = tmp_path / "plain.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, str(path))
    assert set(load_checkpoint(path)[RECORD_KEY]) == {"schema_version", "digests"}
    check_checkpoint(path)  # no config asked: nothing to say
    tampered = load_checkpoint(path)
    tampered["loops"] = {}
    torch.save(tampered, path)
    with pytest.raises(CheckpointError, match=r"is corrupt: the training loop state \(loops\) changed"):
        check_checkpoint(path)
