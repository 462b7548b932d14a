"""Guarantees the README and the docstrings state, each checked so that a wrong implementation
fails: the importance-sampled estimate does not depend on how its k samples are chunked,
``summary.json`` is replaced by a rename (never rewritten in place), ``best.ckpt`` is the epoch of
the largest ``val/elbo``, every epoch draws its own reparameterization noise, a joblib worker gets
its share of the cores, training and validation metrics are both nats per image, and the report
orders numeric axis values as numbers.

docs/guarantees.md lists the bug each test was seen to catch (planted by hand, one at a time).
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, compose_config, run_cli
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from test_evaluation import data_points, exact_log_likelihood, linear_gaussian_vae

from vae_lab.evaluation.importance_sampling import EvaluationSettings, evaluate
from vae_lab.files import write_atomically, write_json_atomically
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.epoch_means import EpochMeans
from vae_lab.report.jobs import Job as ReportJob
from vae_lab.report.jobs import read_job
from vae_lab.report.table import build_report, numeric_table, table_cells
from vae_lab.run.checkpoints import checkpoint_callbacks
from vae_lab.run.devices import available_cores, threads_per_worker
from vae_lab.run.jobs import Job
from vae_lab.run.launchers import LauncherKind

#: Train and validation ELBO of one tiny run, in nats per image, differ by far less than this factor
#: (the model improves during an epoch; a mean over batches instead of images is 10-50x off).
SAME_SCALE = 1.5


# ---------------------------------------------------------------- importance sampling
def test_importance_sampled_estimate_does_not_depend_on_the_chunk_size() -> None:
    """One logsumexp over all k log-weights: the same noise split into chunks of 1000, 100, 7 or 1
    samples gives the same estimate (an average of per-chunk estimates would give L_100, L_7 ...,
    visibly lower), and it matches the closed-form log p(x) of probabilistic PCA."""
    model, x = linear_gaussian_vae(mean_error=0.6), data_points(16)
    k = 1000
    results = {
        chunk: evaluate(
            model, x, EvaluationSettings(n_importance_samples=k, seed=3, samples_per_chunk=chunk, images_per_batch=16)
        )
        for chunk in (1000, 100, 7, 1)
    }
    assert {chunk: result.samples_per_chunk for chunk, result in results.items()} == {1000: 1000, 100: 100, 7: 7, 1: 1}
    single = results[1000].log_likelihood
    for chunk, result in results.items():
        assert result.log_likelihood == pytest.approx(single, abs=1e-9), chunk
        assert result.elbo == pytest.approx(results[1000].elbo, abs=1e-9), chunk

    # Against the closed form, averaged over seeds, in chunks of 100: within 0.05 nats (L_100 is
    # 0.2 nats lower for this posterior; the ELBO 3.5 nats lower).
    exact = float(exact_log_likelihood(x).mean())
    estimates = [
        evaluate(
            model, x, EvaluationSettings(n_importance_samples=k, seed=seed, samples_per_chunk=100, images_per_batch=16)
        ).log_likelihood
        for seed in range(8)
    ]
    assert sum(estimates) / len(estimates) == pytest.approx(exact, abs=0.05)


def test_default_mnist_evaluation_is_chunked_so_chunking_matters(data_root: Path) -> None:
    """The default k = 5000 evaluation of the default MNIST model on one CPU thread splits k into
    many equal chunks, which is why the chunk-invariance test above guards real figures."""
    from vae_lab.evaluation.importance_sampling import plan_chunks

    cfg = compose_config(f"data.root={data_root}")
    model = build_model(cfg, build_datamodule(cfg))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plan = plan_chunks(model, 10_000, EvaluationSettings())
    finally:
        torch.set_num_threads(threads)
    assert 1 < plan.samples_per_chunk < 5000


# ---------------------------------------------------------------- atomic files
def test_write_json_atomically_replaces_the_file_by_a_rename(tmp_path: Path) -> None:
    """A reader holding the old file (here: a hard link to it) keeps the old content whole; the
    path then names a new file; nothing temporary is left behind."""
    path = tmp_path / "summary.json"
    write_json_atomically(path, {"status": "running"})
    old = tmp_path / "old.json"
    os.link(path, old)
    write_json_atomically(path, {"status": "complete", "metrics": {"test/elbo": -100.0}})
    assert json.loads(old.read_text()) == {"status": "running"}  # rewritten in place, this would change
    assert json.loads(path.read_text()) == {"status": "complete", "metrics": {"test/elbo": -100.0}}
    assert path.stat().st_ino != old.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "summary.json"]


def test_a_write_that_fails_half_way_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomically(path, {"status": "running"})

    def half_then_fail(file) -> None:
        file.write(b'{"status": "comp')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.fixture(scope="module")
def three_epoch_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, str]:
    """A real three-epoch CLI run, resumed (resume=true) into a directory that holds the summary of
    an interrupted run before any epoch ended, with a hard link to that summary kept beside it:
    (run dir, the linked summary's content after the run)."""
    work = tmp_path_factory.mktemp("three_epochs")
    run_dir = work / "run"
    run_dir.mkdir()
    before = '{"status": "interrupted", "signal": "SIGTERM"}\n'
    (run_dir / "summary.json").write_text(before)
    os.link(run_dir / "summary.json", work / "summary_before.json")
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "trainer.max_epochs=3",
        "resume=true",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, (work / "summary_before.json").read_text()


def test_summary_json_is_never_rewritten_in_place_by_a_run(three_epoch_run: tuple[Path, str]) -> None:
    """The run wrote summary.json at least twice (running, complete): each time a new file renamed
    over the old, so the link to the summary it found still reads the interrupted one."""
    run_dir, linked = three_epoch_run
    assert json.loads(linked) == {"status": "interrupted", "signal": "SIGTERM"}
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


WRITING_METHODS = {"write_text", "write_bytes", "dump", "copy", "copyfile", "copy2", "save"}


def writes_to_summary(function: ast.AST) -> list[str]:
    """Calls inside ``function`` that write a file named by an expression mentioning the summary
    (``"summary.json"``, ``SUMMARY``, or a local name assigned from one) other than through
    ``write_json_atomically``: ``.write_text``, ``.write_bytes``, ``open(..., "w")``, ``json.dump``..."""
    tainted: set[str] = set()

    def mentions_summary(node: ast.AST) -> bool:
        text = ast.unparse(node)
        return (
            "summary.json" in text
            or "SUMMARY" in text
            or any(isinstance(name, ast.Name) and name.id in tainted for name in ast.walk(node))
        )

    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and mentions_summary(node.value):
            tainted.update(target.id for target in node.targets if isinstance(target, ast.Name))
    found = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, getattr(node.func, "attr", getattr(node.func, "id", ""))
        targets: list[ast.AST] = []
        if name in ("write_text", "write_bytes") and isinstance(func, ast.Attribute):
            targets = [func.value]
        elif name == "open":
            keyword_mode = next((k.value for k in node.keywords if k.arg in ("mode", "flags")), None)
            if isinstance(func, ast.Attribute) and ast.unparse(func.value) != "os":  # path.open(mode)
                mode, target = (node.args[0] if node.args else keyword_mode), func.value
            else:  # open(path, mode), os.open(path, flags)
                mode, target = (
                    (node.args[1] if len(node.args) > 1 else keyword_mode),
                    (node.args[0] if node.args else None),
                )
            writes = mode is not None and (
                not isinstance(mode, ast.Constant) or any(c in str(mode.value) for c in "wax+")
            )
            targets = [target] if writes and target is not None else []
        elif name in WRITING_METHODS:
            targets = list(node.args[1:])
        if any(mentions_summary(target) for target in targets):
            found.append(ast.unparse(node))
    return found


def test_every_writer_of_summary_json_goes_through_the_atomic_write() -> None:
    """README: summary.json is written atomically. The run writes it at start (running), at the end
    (complete) and when it stops (failed, interrupted), and vae_lab.evaluate updates it: no module
    writes it any other way than write_json_atomically (temporary file, fsync, rename), which the
    tests above check."""
    package = Path(__file__).resolve().parents[1] / "vae_lab"
    offenders = {}
    writers = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found = writes_to_summary(tree)
        if found:
            offenders[str(path.relative_to(package))] = found
        writers += [
            path.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "write_json_atomically"
            and node.args
            and ("summary" in ast.unparse(node.args[0]).lower() or "SUMMARY" in ast.unparse(node.args[0]))
        ]
    assert offenders == {}
    # one writer of the finished summary (run/stages.py), the running one (run/state.py), the stopped one
    # (run/stopped_runs.py) and the evaluation's update (evaluate.py)
    assert {"stages.py", "state.py", "stopped_runs.py", "evaluate.py"} <= set(writers)


# ---------------------------------------------------------------- best checkpoint, metric scale
def validation_curve(run_dir: Path) -> list[float]:
    """val/elbo at the end of each training epoch (epoch 0 first), from metrics.csv."""
    curve = read_job(run_dir).validation_curve()
    assert [epoch for epoch, _ in curve] == list(range(1, len(curve) + 1))
    return [value for _, value in curve]


def test_the_run_evaluates_the_epoch_with_the_best_validation_elbo(three_epoch_run: tuple[Path, str]) -> None:
    run_dir, _ = three_epoch_run
    curve = validation_curve(run_dir)
    assert len(curve) == 3
    best_epoch = max(range(3), key=curve.__getitem__)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = torch.load(run_dir / summary["best_checkpoint"], map_location="cpu", weights_only=False)
    assert best["epoch"] == best_epoch, (curve, best["epoch"])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2


def test_train_and_val_metrics_of_a_run_are_on_the_same_scale(three_epoch_run: tuple[Path, str]) -> None:
    """Both are nats per image: after the first epoch they differ by a few tens of percent at most."""
    import csv

    run_dir, _ = three_epoch_run
    with (run_dir / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    train = [float(row["train/elbo"]) for row in rows if row.get("train/elbo")]
    train_kl = [float(row["train/kl"]) for row in rows if row.get("train/kl")]
    val, val_kl = validation_curve(run_dir), [float(row["val/kl"]) for row in rows if row.get("val/kl")]
    assert len(train) == len(val) == 3
    for epoch in (1, 2):
        assert 1 / SAME_SCALE < train[epoch] / val[epoch] < SAME_SCALE, (train, val)
    assert 0 < max(train_kl) < 10 * max(val_kl)
    assert -784 * math.log(2) * 1.2 < train[0] < 0  # a coin flip per pixel is 543 nats


def test_the_metrics_of_a_run_are_consistent_in_nats_and_bits(three_epoch_run: tuple[Path, str]) -> None:
    """README: elbo = reconstruction - kl in nats per image for train, val and test; bpd =
    -elbo / (D ln 2) for binary pixels; the KL of the latent dimensions adds up to the KL;
    summary.json holds the figures metrics.csv holds; -log p(x) by importance sampling is at most
    -ELBO over the same samples."""
    import csv

    run_dir, _ = three_epoch_run
    with (run_dir / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    checked = set()
    for row in rows:
        for stage in ("train", "val", "test"):
            if not row.get(f"{stage}/elbo"):
                continue
            elbo, reconstruction, kl = (float(row[f"{stage}/{name}"]) for name in ("elbo", "reconstruction", "kl"))
            assert elbo == pytest.approx(reconstruction - kl, abs=1e-3)
            assert kl >= 0
            assert float(row[f"{stage}/bpd"]) == pytest.approx(-elbo / (784 * math.log(2)), rel=1e-5)
            checked.add(stage)
        per_dim = [float(row[key]) for key in row if key.startswith("val/kl_per_dim/") and row[key]]
        if per_dim:
            assert len(per_dim) == 50
            assert sum(per_dim) == pytest.approx(float(row["val/kl"]), abs=1e-3)
    assert checked == {"train", "val", "test"}
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    test_row = next(row for row in rows if row.get("test/elbo"))
    assert metrics["test/elbo"] == pytest.approx(float(test_row["test/elbo"]), rel=1e-6)
    assert 0 < metrics["test/nll_is"] <= -metrics["test/elbo_k_samples"]
    assert metrics["test/bpd_is"] == pytest.approx(metrics["test/nll_is"] / (784 * math.log(2)), rel=1e-9)
    assert len(metrics["test/kl_per_dim"]) == 50 and 0 <= metrics["test/active_units"] <= 50


class EpochRecorder(Callback):
    """The global random state when each epoch's first training batch starts (after the module
    seeded the epoch), and the val/elbo of each epoch."""

    def __init__(self) -> None:
        self.random_states: list[torch.Tensor] = []
        self.val_elbo: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.random_states.append(torch.get_rng_state())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_elbo.append(float(trainer.callback_metrics["val/elbo"]))


@pytest.fixture(scope="module")
def three_epoch_fit(tmp_path_factory: pytest.TempPathFactory, data_root: Path):
    """An in-process three-epoch fit of the tiny default model with the run's checkpoint callbacks."""
    work = tmp_path_factory.mktemp("fit")
    cfg = compose_config(*TINY, f"data.root={data_root}", "trainer.max_epochs=3")
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    recorder = EpochRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=CSVLogger(work, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*checkpoint_callbacks(work), recorder],
        default_root_dir=work,
    )
    trainer.fit(model, datamodule=datamodule)
    return work, recorder, trainer


def test_best_checkpoint_is_the_argmax_of_val_elbo(three_epoch_fit) -> None:
    work, recorder, _ = three_epoch_fit
    assert len(recorder.val_elbo) == 3
    best = torch.load(work / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    best_epoch = max(range(3), key=recorder.val_elbo.__getitem__)
    assert best["epoch"] == best_epoch, recorder.val_elbo
    states = [state for key, state in best["callbacks"].items() if "val/elbo" in key]
    assert states and states[0]["best_model_score"].item() == pytest.approx(max(recorder.val_elbo))


def test_every_epoch_draws_its_own_reparameterization_noise(three_epoch_fit) -> None:
    """The noise stream is a function of (seed, epoch, rank): epochs 0, 1, 2 start from three
    different random states (the same state would reuse the same eps on the same images)."""
    _, recorder, _ = three_epoch_fit
    states = recorder.random_states
    assert len(states) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(states[i], states[j]), (i, j)


def test_every_epoch_draws_its_own_seed() -> None:
    from vae_lab.seeds import epoch_seed

    seeds = {epoch_seed(seed, epoch, rank) for seed in range(3) for epoch in range(50) for rank in range(4)}
    assert len(seeds) == 3 * 50 * 4
    assert all(0 <= s < 2**63 for s in seeds)


def test_epoch_means_are_per_image_not_per_batch() -> None:
    """Batches of unequal size (the last one of an epoch is often short): the mean is over images."""
    means = EpochMeans()
    batches = [
        torch.arange(50, dtype=torch.float64),
        torch.full((50,), -3.0, dtype=torch.float64),
        torch.tensor([1e3] * 7, dtype=torch.float64),
    ]
    for values in batches:
        means.add({"elbo": values, "kl": 2 * values})
    everything = torch.cat(batches)
    assert means.means()["elbo"].item() == pytest.approx(everything.mean().item())
    assert means.means()["kl"].item() == pytest.approx(2 * everything.mean().item())
    means.reset()
    assert means.means() == {}
    means.add({"elbo": torch.tensor([4.0, 6.0])})
    assert means.means()["elbo"].item() == 5.0


# ---------------------------------------------------------------- cores under joblib
def joblib_job(tmp_path: Path, n_jobs: int) -> Job:
    return Job(
        run_dir=tmp_path / "job",
        multirun=True,
        launcher=LauncherKind.JOBLIB,
        launcher_config={"n_jobs": n_jobs},
        sweep_dir=tmp_path,
        sweep_name="test",
        overrides=[],
        choices={},
        attempt="test-attempt",
    )


@pytest.mark.parametrize("n_jobs", [1, 2, -1])
def test_a_joblib_worker_gets_its_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_jobs: int
) -> None:
    """``hydra/launcher=joblib hydra.launcher.n_jobs=N``: each job runs on cores // N torch threads
    (n_jobs=-1: one worker per core, so one thread each)."""
    cores = available_cores()
    workers = cores if n_jobs == -1 else n_jobs
    cfg = compose_config(*TINY, "trainer.accelerator=cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after the test
    threads = torch.get_num_threads()
    job = joblib_job(tmp_path, n_jobs)
    try:
        job.prepare(cfg)
        chosen = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert job.threads_from_launcher
    assert job.threads == chosen == max(1, cores // workers)
    assert threads_per_worker(workers) == max(1, cores // workers)


def test_the_shares_of_the_cores_never_add_up_to_more_than_the_machine() -> None:
    cores = available_cores()
    for workers in range(1, 2 * cores + 2):
        share = threads_per_worker(workers)
        assert share == max(1, cores // workers)
        assert share * workers <= max(cores, workers)
        assert threads_per_worker(workers, processes_per_job=2) == max(1, cores // (2 * workers))


# ---------------------------------------------------------------- the report's order
def report_job(batch_size: str, lr: str, seed: int, elbo: float) -> ReportJob:
    return ReportJob(
        Path(f"job-{batch_size}-{lr}-{seed}"),
        "complete",
        [f"data.batch_size={batch_size}", f"optimizer.lr={lr}", f"seed={seed}"],
        {"metrics": {"test/elbo": elbo}, "epochs": 1},
    )


def test_report_rows_follow_the_numeric_order_of_each_axis() -> None:
    """``batch_size`` 50 before 100 before 1000 (as strings: 100, 1000, 50), ``lr`` 3e-4 before
    1e-3 (as strings: 1e-3 first); within a setting the seeds 2 before 10."""
    jobs = [
        report_job(batch_size, lr, seed, -100.0 - seed)
        for batch_size in ("100", "1000", "50")
        for lr in ("1e-3", "3e-4")
        for seed in (10, 2)
    ]
    report = build_report(jobs)
    assert report.axes == ["data.batch_size", "optimizer.lr"]
    settings = [tuple(row.setting.values()) for row in report.rows]
    assert settings == [(b, lr) for b in ("50", "100", "1000") for lr in ("3e-4", "1e-3")]
    assert all(row.seeds == ["2", "10"] for row in report.rows)
    header, cells = table_cells(report)
    assert [line[:2] for line in cells] == [list(s) for s in settings]
    assert cells[0][header.index("seeds (n)")] == "2, 10 (2)"
    columns, data = numeric_table(report)
    assert [line[:2] for line in data] == [list(s) for s in settings]
    # mean ± sample std over the seeds: -102 and -110 -> -106 ± 5.657
    row = data[0]
    assert row[columns.index("test/elbo mean")] == pytest.approx(-106.0)
    assert row[columns.index("test/elbo std")] == pytest.approx(math.sqrt(32.0))
