"""A wandb logger that can fail without taking the run down with it.

wandb talks to a service process and, online, to a server: either can go away (no network, a bad
key, the service killed, a full disk under its directory). The local outputs (metrics CSV,
checkpoints, images, ``summary.json``) are the record of a run; wandb is a copy. So every call into
wandb goes through :class:`FailSafeWandbLogger`, which on the first exception records the error,
prints one line, and turns itself into a no-op for the rest of the run; ``summary.json`` then says
``"wandb": {"status": "failed", "error": ...}``.

Starting the run (``wandb.init``) is bounded by ``logger.wandb.init_timeout`` seconds, so an
unreachable host costs that long once, not wandb's default of 90 s per attempt.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from lightning.pytorch.loggers import WandbLogger


class FailSafeWandbLogger(WandbLogger):
    """A Lightning ``WandbLogger`` whose failures are recorded instead of raised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The first error wandb raised, as text; None while it works.
        self.error: str | None = None
        self.failed_during: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def record_failure(self, error: BaseException, during: str) -> None:
        if self.error is None:
            self.error = describe_error(error)
            self.failed_during = during
            print(
                f"vae_lab: wandb failed during {during} ({self.error}); the run goes on with the local logs "
                "(metrics.csv, checkpoints, summary.json).",
                file=sys.stderr,
                flush=True,
            )

    def start(self) -> bool:
        """Create the wandb run now (not lazily mid-fit); False when it cannot be created."""
        try:
            _ = self.experiment
            return True
        except Exception as error:
            self.record_failure(error, "wandb.init")
            return False

    def run_safely(self, during: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` (any use of the wandb run); on failure record it and return None."""
        if self.failed:
            return None
        try:
            return call()
        except Exception as error:
            self.record_failure(error, during)
            return None

    def finish(self, exit_code: int = 0) -> None:
        """``wandb.finish`` the run (with a non-zero exit code for a failed or interrupted run)."""
        if self._experiment is None:
            return
        import wandb

        self.run_safely("wandb.finish", lambda: wandb.finish(exit_code=exit_code))
        if self.failed:
            _silence_wandb_teardown()

    def status(self) -> dict[str, Any]:
        """What ``summary.json`` records about wandb."""
        if self.failed:
            return {"status": "failed", "during": self.failed_during, "error": self.error}
        run = self._experiment
        status: dict[str, Any] = {"status": "ok"}
        if run is not None:
            status.update(id=getattr(run, "id", None), mode="offline" if _is_offline(run) else "online")
        return status


def describe_error(error: BaseException) -> str:
    """One readable line for a wandb error: its type and first line; for an invalid wandb setting (a
    pydantic ValidationError, whose first line is only "1 validation error for Settings"), each
    setting at fault with what is wrong with it (never its value, which may be a key), and where
    such settings come from."""
    try:
        from pydantic import ValidationError
    except ImportError:  # wandb without pydantic: no such errors
        ValidationError = ()
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'settings'}: {problem['msg']}"
            for problem in error.errors()
        )
        return (
            f"invalid wandb setting {problems} (wandb reads its settings from the WANDB_* environment variables, "
            "e.g. WANDB_BASE_URL, and from logger.wandb)"
        )
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _is_offline(run: Any) -> bool:
    return bool(getattr(run, "offline", False)) or getattr(getattr(run, "settings", None), "mode", "") == "offline"


def _silence_wandb_teardown() -> None:
    """After the wandb service died, its atexit hook would print a traceback at exit: the run's
    status is already recorded, so drop that hook (wandb's own cleanup callback; internals, so any
    failure here is ignored)."""
    try:
        from wandb.sdk import wandb_setup

        connection = getattr(getattr(wandb_setup, "_singleton", None), "_connection", None)
        cleanup = getattr(connection, "_cleanup", None)
        if cleanup is not None:
            cleanup()
    except Exception:
        pass


def _guarded(name: str) -> Callable[..., Any]:
    method = getattr(WandbLogger, name)

    @functools.wraps(method)
    def call(self: FailSafeWandbLogger, *args: Any, **kwargs: Any) -> Any:
        return self.run_safely(name, lambda: method(self, *args, **kwargs))

    return call


# Every method through which Lightning or vae_lab talks to wandb.
for _name in (
    "log_metrics",
    "log_hyperparams",
    "log_image",
    "log_table",
    "log_text",
    "log_audio",
    "log_video",
    "log_graph",
    "after_save_checkpoint",
    "finalize",
    "save",
):
    setattr(FailSafeWandbLogger, _name, _guarded(_name))
