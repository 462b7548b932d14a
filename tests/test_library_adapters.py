"""The private names of the libraries that vae_lab uses, each checked against the installed version.

vae_lab uses Lightning's private names only in ``vae_lab/lightning_adapter.py`` (Hydra's and
wandb's not at all). Each test here exercises one of them, or one public route that copies a
private behaviour, and fails with the name and the library version when an upgrade changes it; the
last test keeps private names of lightning, hydra and wandb out of the rest of the package.
"""

from __future__ import annotations

import ast
from importlib.metadata import version
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from vae_lab import lightning_adapter

PACKAGE = Path(__file__).resolve().parents[1] / "vae_lab"
LIBRARIES = ("lightning", "pytorch_lightning", "hydra", "wandb", "omegaconf")


def changed(library: str, name: str, what: str) -> str:
    return (
        f"{library} {version(library)} changed {name}, which vae_lab uses ({what}); vae_lab was checked with "
        f"{library} {', '.join(lightning_adapter.CHECKED_WITH) if library == 'lightning' else 'see pyproject.toml'}. "
        "Update vae_lab/lightning_adapter.py (or its caller) for this version."
    )


def cpu_trainer(strategy: str) -> Trainer:
    return Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )


def test_subprocess_script_launcher_is_lightnings_command_line_relaunch() -> None:
    what = "_SubprocessScriptLauncher: strategy=ddp's launcher, whose ranks vae_lab starts itself"
    try:
        launcher = lightning_adapter.command_line_launcher(cpu_trainer("ddp"))
    except ImportError as error:
        pytest.fail(f"{changed('lightning', '_SubprocessScriptLauncher', what)} ({error})")
    assert launcher is not None, changed("lightning", "_SubprocessScriptLauncher", what)
    assert (launcher.num_processes, launcher.num_nodes) == (2, 1), changed(
        "lightning", "_SubprocessScriptLauncher", what
    )
    assert not launcher.cluster_environment.creates_processes_externally
    assert lightning_adapter.command_line_launcher(cpu_trainer("ddp_spawn")) is None


@pytest.mark.parametrize(("strategy", "method"), [("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp", None)])
def test_multiprocessing_launcher_start_method(strategy: str, method: str | None) -> None:
    what = "_MultiProcessingLauncher._start_method: refusing ddp_spawn/ddp_fork under joblib and submitit"
    try:
        found = lightning_adapter.multiprocessing_start_method(cpu_trainer(strategy))
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{changed('lightning', '_MultiProcessingLauncher._start_method', what)} ({error})")
    assert found == method, changed("lightning", "_MultiProcessingLauncher._start_method", what)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawned_or_forked_ranks_are_refused_under_joblib_with_their_start_method(strategy: str) -> None:
    from vae_lab.errors import ConfigError
    from vae_lab.run.distributed import check_supported
    from vae_lab.run.launchers import LauncherKind

    with pytest.raises(ConfigError, match=f"start method '{strategy.removeprefix('ddp_')}' is not supported under"):
        check_supported(cpu_trainer(strategy), LauncherKind.JOBLIB)
    check_supported(cpu_trainer(strategy), LauncherKind.BASIC)  # in the main process: Lightning's own launch


def test_wandb_logger_init_arguments_are_what_wandb_init_gets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dict is the one WandbLogger passes to wandb.init (a name set in it names the run), and it
    still holds the deprecated ``anonymous`` that vae_lab.tracking.wandb_run removes."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    what = "WandbLogger._wandb_init: the wandb.init arguments, from which vae_lab drops anonymous=None"
    logger = WandbLogger(save_dir=str(tmp_path), project="adapter-check", offline=True)
    try:
        arguments = lightning_adapter.wandb_init_arguments(logger)
    except AttributeError as error:
        pytest.fail(f"{changed('lightning', 'WandbLogger._wandb_init', what)} ({error})")
    assert isinstance(arguments, dict) and arguments.get("project") == "adapter-check", changed(
        "lightning", "WandbLogger._wandb_init", what
    )
    assert "anonymous" in arguments, (
        f"lightning {version('lightning')} no longer passes anonymous to wandb.init: the pop in "
        "vae_lab/tracking/wandb_run.py and lightning_adapter.wandb_init_arguments can go"
    )
    arguments.pop("anonymous")
    arguments["name"] = "named-through-the-adapter"
    try:
        assert logger.experiment.name == "named-through-the-adapter", changed(
            "lightning", "WandbLogger._wandb_init", what
        )
    finally:
        wandb.finish()


@pytest.mark.parametrize(
    ("task", "params"),
    [
        (["seed=0,1", "data.batch_size=50,100"], None),
        (["a=1,2", "b=range(0,3)", "c=3"], {"d": "x,y"}),
        (["a=1,2", "a=3,4,5"], None),  # a key given twice: its last values, in its first place
        (["a=choice(1,2)", "+b=sort(3,1,2)", "~c"], {"a": "7"}),
        (["x='a,b'", "y=[1,2]", "z={k:v}"], None),
    ],
)
def test_planned_jobs_are_hydras_basic_sweeper_jobs(task: list[str], params: dict[str, str] | None) -> None:
    """vae_lab.run.sweep_progress reads a multirun's jobs with Hydra's public override parser, as
    Hydra's BasicSweeper (in ``hydra._internal``, so not used by vae_lab) makes them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_lab.run.sweep_progress import planned_job_overrides

    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError as error:
        pytest.fail(
            f"hydra-core {version('hydra-core')} moved BasicSweeper: compare vae_lab.run.sweep_progress."
            f"planned_job_overrides with the basic sweeper of this version ({error})"
        )
    arguments = [f"{key}={value}" for key, value in (params or {}).items()] + task
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    expected = [list(job) for batch in batches for job in batch]
    assert planned_job_overrides(task, params) == expected, (
        f"hydra-core {version('hydra-core')}'s basic sweeper makes other jobs than vae_lab plans"
    )


def test_a_failed_jobs_exception_comes_from_hydras_public_return_value() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from vae_lab.run.sweep_progress import job_failure

    failed, completed = JobReturn(status=JobStatus.FAILED), JobReturn(status=JobStatus.COMPLETED)
    failed.return_value = error = ValueError("the job's error")
    completed.return_value = 3
    assert job_failure(failed) is error, f"hydra-core {version('hydra-core')}: JobReturn.return_value changed"
    assert job_failure(completed) is None


def _private(name: str) -> bool:
    """A private name: one leading underscore; not a dunder, not a Hydra key like ``_target_``."""
    return name.startswith("_") and not name.startswith("__") and not name.endswith("_")


def test_no_private_library_names_outside_the_adapter() -> None:
    """Outside vae_lab/lightning_adapter.py: no import of a private module or name of lightning,
    hydra, wandb or omegaconf, no attribute with a private name that vae_lab does not define itself,
    and no private name given to getattr/setattr/hasattr."""
    files = [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "lightning_adapter.py"]
    trees = {path: ast.parse(path.read_text()) for path in files}
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "object.__setattr__"):
                own.update(arg.value for arg in node.args[1:2] if isinstance(arg, ast.Constant))
    # torch's, not the subject of this rule: the torch.distributions subclass protocol, torch._dynamo's
    # settings (vae_lab/model/compilation.py); Lightning's _current_fx_name in vae_lab/model/vae.py, whose
    # __setattr__ shortcut is to go with issue 14's micro-optimisations.
    allowed = {"_validate_args", "_validate_sample", "_extended_shape", "_dynamo", "_current_fx_name"}
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
                names = [part for part in node.module.split(".") if _private(part)]
                names += [alias.name for alias in node.names if _private(alias.name)]
                found += [f"{where}: {name}" for name in names]
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}: {alias.name}"
                    for alias in node.names
                    if alias.name.split(".")[0] in LIBRARIES and any(_private(part) for part in alias.name.split("."))
                ]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own | allowed:
                found.append(f"{where}: .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _private(node.args[1].value)
                and node.args[1].value not in own
            ):
                found.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
    assert not found, "private names of the libraries outside vae_lab/lightning_adapter.py:\n" + "\n".join(found)
