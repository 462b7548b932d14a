"""The only place where vae_lab uses private names of Lightning (names starting with ``_``).

Each function below is used because Lightning has no public route to what it returns; its docstring
says why. They were checked against lightning 2.4.0, 2.5.6 and 2.6.6 (the versions pyproject.toml
and constraints.txt allow and pin were read in their source). ``tests/test_library_adapters.py`` has
a test per private name that fails, naming the name and the installed Lightning version, when an
upgrade renames or removes it, so that an upgrade breaks loudly instead of silently.

Every room of the package may import this module (it imports nothing of vae_lab): the run machinery
uses the launcher functions, the wandb logger :func:`wandb_init_arguments`.
"""

from __future__ import annotations

from typing import Any

#: The Lightning versions whose source the functions below were checked against.
CHECKED_WITH = ("2.4.0", "2.5.6", "2.6.6")


def command_line_launcher(trainer: Any) -> Any | None:
    """The trainer's strategy launcher when it starts the other ranks by re-running the command line
    (``strategy=ddp`` and the other ``start_method="popen"`` strategies: Lightning's
    ``_SubprocessScriptLauncher``, with public ``num_processes``, ``num_nodes`` and
    ``cluster_environment``); None for any other launcher or none.

    Why private: ``trainer.strategy.launcher`` is public, but every launcher class is private (the
    public module ``lightning.pytorch.strategies.launchers`` exports only ``_``-names) and no public
    attribute of a launcher or strategy says how it starts its processes."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return launcher if isinstance(launcher, _SubprocessScriptLauncher) else None


def multiprocessing_start_method(trainer: Any) -> str | None:
    """``"spawn"``, ``"fork"`` or ``"forkserver"`` when the trainer's strategy starts its ranks with
    :mod:`multiprocessing` from this process (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``: Lightning's
    ``_MultiProcessingLauncher`` and its ``_start_method``); None otherwise.

    Why private: as for :func:`command_line_launcher`; the start method is given to the strategy
    (``DDPStrategy(start_method=...)``) but only kept in private attributes of the strategy and launcher."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return launcher._start_method if isinstance(launcher, _MultiProcessingLauncher) else None


def wandb_init_arguments(logger: Any) -> dict[str, Any]:
    """The keyword arguments a Lightning ``WandbLogger`` will pass to ``wandb.init`` (its
    ``_wandb_init``), to be edited before the run starts.

    Why private: ``WandbLogger`` always passes ``anonymous=None``, a deprecated wandb setting about
    which recent wandb (0.31.0; not 0.19.0) warns on every run ("The anonymous setting has no effect"); its constructor
    takes ``anonymous`` only as a bool and merges other keyword arguments over its own, so no public
    argument leaves the setting out."""
    return logger._wandb_init
