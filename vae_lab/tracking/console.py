"""What a run shows on the console and writes to ``<run dir>/train.log``.

- vae_lab's messages go through :mod:`logging` (loggers ``vae_lab.*``): conf/hydra/job_logging/vae_lab.yaml
  sends them to the console as they are (info to stdout, warnings and errors to stderr, by
  :class:`vae_lab.tracking.console_handler.SplitStreamHandler`) and, with Hydra's format, to ``train.log``.
- Lightning's info lines appear once: ``import lightning`` attaches its own console handler to the
  ``lightning`` logger, which also propagates to Hydra's root handlers, so every line came twice
  (Hydra #2898). :func:`route_lightning_logs` removes Lightning's handlers and lets its loggers
  propagate, once Hydra's root handlers are there; it also drops Lightning's advertisement for
  litlogger (printed on every run that does not use it; no setting turns it off).
- The progress: on a terminal, Lightning's bar (redrawn every :data:`BAR_REFRESH_STEPS` steps) with
  ``train/loss``, ``val/elbo`` and ``val/kl``; where stdout is not a terminal (launchers, CI, a job
  log), :class:`LineProgress` instead: one line per epoch with those metrics, and a line every
  ``interval`` seconds within long epochs, with the rate and the time left.
- :class:`vae_lab.evaluation.progress.CountProgress`: the same for a loop that counts items (the importance-sampled
  evaluation): a tqdm bar with rate and ETA on a terminal, otherwise a line every tenth.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger

from vae_lab.evaluation.progress import duration

log = logging.getLogger(__name__)

#: The metrics the progress shows (when logged), in this order.
PROGRESS_METRICS = ("train/loss", "val/elbo", "val/kl")
#: Lightning's loggers that get a console handler of their own on import.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
LITLOGGER_TIP = "try installing [litlogger]"


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    return LITLOGGER_TIP not in str(record.msg)


def route_lightning_logs() -> None:
    """Lightning's log lines through the root handlers only (see the module doc); does nothing
    while the root logger has no handler (outside Hydra), where Lightning's own ones are needed."""
    import lightning  # noqa: F401 - its import attaches the handlers removed here

    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers, not files
                logger.removeHandler(handler)
        logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_litlogger_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_litlogger_tip)


def metrics_csv_logger(run_dir: Path) -> Any:
    """The CSVLogger of ``<run dir>/metrics.csv``. Its log directory is the run directory, which
    already holds Hydra's files, so Lightning would warn on every run that "previous log files in
    this directory will be deleted" (only metrics.csv is replaced, and vae_lab.run.resume keeps its
    rows on resume): that one warning is silenced, where the logger starts its file."""
    return RunDirCSVLogger(save_dir=str(run_dir), name="", version="")


class RunDirCSVLogger(CSVLogger):
    """Lightning's CSVLogger, without its warning about a non-empty log directory (see :func:`metrics_csv_logger`)."""

    @property
    def experiment(self) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            return super().experiment


def progress_text(metrics: dict[str, Any]) -> str:
    """``train/loss=190.12 val/elbo=-196.26 val/kl=4.56`` for the progress metrics present."""
    parts = []
    for name in PROGRESS_METRICS:
        if name in metrics:
            value = metrics[name]
            parts.append(f"{name}={float(value):.2f}")
    return " ".join(parts)


class LineProgress(ProgressBar):
    """A progress "bar" for logs: one line per epoch (``epoch 3/10 done in 4 s: train/loss=...
    val/elbo=... val/kl=...``) and, within an epoch, a line every ``interval`` seconds with the
    batch, the rate and the time left. No carriage returns."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self.enabled = True
        self.epoch_started = 0.0
        self.last_line = 0.0
        self.finished_epoch: int | None = None
        self.epoch_seconds = 0.0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # The line of an epoch comes once its train/* means are logged (after every callback's
        # on_train_epoch_end): at the start of the next one, or at the end of training.
        if self.finished_epoch is not None:
            self.report(trainer, pl_module)
        self.epoch_started = self.last_line = time.monotonic()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.finished_epoch = trainer.current_epoch
        self.epoch_seconds = time.monotonic() - self.epoch_started

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.finished_epoch is not None:
            self.report(trainer, pl_module)

    def report(self, trainer: Any, pl_module: Any) -> None:
        if self.enabled:
            metrics = progress_text(self.get_metrics(trainer, pl_module))
            epoch = f"epoch {self.finished_epoch + 1}/{trainer.max_epochs}"
            log.info(f"{epoch} done in {duration(self.epoch_seconds)}: {metrics}")
        self.finished_epoch = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last_line < self.interval:
            return
        self.last_line = now
        done, total = batch_idx + 1, self.total_train_batches
        rate = done / max(now - self.epoch_started, 1e-9)
        left = f", {duration((total - done) / rate)} left in the epoch" if total not in (None, float("inf")) else ""
        log.info(f"epoch {trainer.current_epoch}: batch {done}/{total} ({rate:.1f} it/s{left})")


#: Lightning's bar redraws every this many steps (its public ``refresh_rate``; 1, the default, redraws
#: after every batch). Measured with the default model on 1 thread (benchmarks/step_costs.py, output
#: to /dev/null): 6.98 ms per step with refresh_rate=1, 6.54 with 20 (6%; more on a real terminal),
#: and no gain from the former time-throttled bar (7.00), which used a private hook: it went.
BAR_REFRESH_STEPS = 20


def training_progress_bar(terminal: bool | None = None) -> ProgressBar:
    """Lightning's bar on a terminal (``terminal``: by default, whether stdout is one), else
    :class:`LineProgress`."""
    if sys.stdout.isatty() if terminal is None else terminal:
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar(refresh_rate=BAR_REFRESH_STEPS)
    return LineProgress()
