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

import contextlib
import sys
from collections.abc import Callable
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


class FailSafeWandbLogger(WandbLogger):
    """A Lightning ``WandbLogger`` whose failures are recorded instead of raised: each method through
    which Lightning or vae_lab talks to wandb is overridden to go through :meth:`run_safely`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The first error wandb raised, as text; None while it works.
        self.error: str | None = None
        self.failed_during: str | None = None
        #: The wandb run once this logger has started or joined one (on rank 0); None before.
        self.run: Any = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def experiment(self) -> Any:
        """Lightning's wandb run, created on first use; remembered in :attr:`run`, so that
        :meth:`finish` and :meth:`status` can tell whether there is one without creating it."""
        run = super().experiment
        if rank_zero_only.rank == 0:  # the other ranks get Lightning's stand-in, not a run
            self.run = run
        return run

    def __getstate__(self) -> dict[str, Any]:
        # Lightning pickles the logger without its run (for ddp_spawn) and re-attaches to it by id.
        return {**super().__getstate__(), "run": None}

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

    def run_safely(self, during: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``call(*args, **kwargs)`` (any use of the wandb run); on failure record it and return None."""
        if self.failed:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as error:
            self.record_failure(error, during)
            return None

    def finish(self, exit_code: int = 0) -> None:
        """``wandb.finish`` the run (with a non-zero exit code for a failed or interrupted run)."""
        if self.run is None:
            return
        import wandb

        self.run_safely("wandb.finish", wandb.finish, exit_code=exit_code)
        if self.failed:
            close_wandb_service()

    def status(self) -> dict[str, Any]:
        """What ``summary.json`` records about wandb."""
        if self.failed:
            return {"status": "failed", "during": self.failed_during, "error": self.error}
        status: dict[str, Any] = {"status": "ok"}
        if self.run is not None:
            status.update(id=getattr(self.run, "id", None), mode="offline" if _is_offline(self.run) else "online")
        return status

    # Every method through which Lightning or vae_lab talks to wandb, through run_safely.
    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_metrics", super().log_metrics, *args, **kwargs)

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_hyperparams", super().log_hyperparams, *args, **kwargs)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_image", super().log_image, *args, **kwargs)

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_table", super().log_table, *args, **kwargs)

    def log_text(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_text", super().log_text, *args, **kwargs)

    def log_audio(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_audio", super().log_audio, *args, **kwargs)

    def log_video(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_video", super().log_video, *args, **kwargs)

    def log_graph(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("log_graph", super().log_graph, *args, **kwargs)

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("after_save_checkpoint", super().after_save_checkpoint, *args, **kwargs)

    def finalize(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("finalize", super().finalize, *args, **kwargs)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.run_safely("save", super().save, *args, **kwargs)


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


def close_wandb_service() -> None:
    """After wandb failed (its service may be dead), close this process's connection to the service
    with wandb's public ``teardown``: it first drops wandb's exit hook, which would otherwise print a
    traceback at exit, and lets a later job of this process start a new service. Failures here (a
    dead service cannot be told to stop) are ignored: the run's status is already recorded."""
    from wandb.sdk import teardown

    with contextlib.suppress(Exception, SystemExit):  # SystemExit: when the service ended with an error code
        teardown()
