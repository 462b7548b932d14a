"""Ctrl-C (SIGINT) and SIGTERM (what SLURM sends before pre-empting a job) stop a run cleanly.

The first signal sets a flag; the run stops at the next batch boundary (training, validation or
test), never inside an optimizer step or a checkpoint write, and :func:`vae_lab.train.train` then
finishes the wandb run, records the interruption in ``summary.json`` and prints how to resume. A
second Ctrl-C stops at once (KeyboardInterrupt), for when the safe point never comes.

What is kept, and why: ``checkpoints/last.ckpt`` is always the state at the end of the last
*completed* epoch (ModelCheckpoint writes it there, atomically); an interrupted epoch is not
saved. ``resume=true`` restarts that epoch from its beginning, and because every random draw of an
epoch (shuffling, binarization, reparameterization noise) is a function of (seed, epoch, rank), the
resumed run reproduces the uninterrupted one exactly. A mid-epoch checkpoint would save at most one
epoch of work (seconds to minutes for data sets that fit in memory) at the price of exactness, since
Lightning cannot replay the rest of an epoch's random stream.

After training, the final validation and test of the best checkpoint, the end-of-training
evaluation and the image grids stop the same way (at a batch boundary, or between stages). Each
draws from a stream seeded by (seed, stage) (vae_lab.seeds.seed_stage) and the evaluation from its
own generator, so a run stopped there, or killed there, resumes from its last checkpoint, runs only
these stages again and ends with the uninterrupted run's numbers.

Outside this region (start-up; and once the images are saved, the last wandb calls and the summary,
where a resumed run would only redo the final stages) vae_lab.run.early_signals stops at once with one line.
``VAE_LAB_PAUSE_AT`` makes the run wait at one of these safe points, for tests (vae_lab.run.pause_points).
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from vae_lab.errors import RunInterrupted
from vae_lab.run.early_signals import HANDLED_SIGNALS
from vae_lab.run.pause_points import pause_if_asked


class GracefulInterrupt(Callback):
    """Turns SIGINT/SIGTERM into a stop at the next batch boundary (as :class:`RunInterrupted`).

    Use as a context manager around the work (it installs and restores the signal handlers) and
    pass it to the Trainer as a callback. Lightning's own SIGTERM handler is chained with it.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        #: True once training has ended (its last checkpoint written): only the final stages are left.
        self.after_training = False
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ signal handlers
    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.received is None:
            self.received = signal.Signals(signum)
            print(
                f"\nvae_lab: received {self.received.name}; stopping at the next batch boundary "
                "(press Ctrl-C again to stop at once).",
                file=sys.stderr,
                flush=True,
            )

    # ------------------------------------------------------------------ safe points
    def check(self, where: str = "") -> None:
        """Raise :class:`RunInterrupted` if a signal came in."""
        if self.received is not None:
            raise RunInterrupted(f"{self.received.name}{where}", exit_code=128 + int(self.received))

    def safe_point(self, point: str, where: str) -> None:
        """A place where the run may stop: raise :class:`RunInterrupted` (``where`` says where) if a
        signal came in; first wait there if ``VAE_LAB_PAUSE_AT`` names ``point`` (tests)."""
        pause_if_asked(point, released=lambda: self.received is not None)
        self.check(where)

    def end_of_training(self) -> None:
        """Training is over: from here on an interruption costs only the final stages."""
        self.after_training = True
        self.check(" after training")

    def at_evaluation_batch(self, done: int, total: int) -> None:
        """The end-of-training evaluation's batch boundary (its ``progress`` callback)."""
        self.safe_point("evaluation", f" during the end-of-training evaluation ({done}/{total} test images done)")

    def _at_batch_end(self, trainer: L.Trainer, point: bool = False) -> None:
        stage = trainer.state.fn
        if stage != TrainerFn.FITTING:  # the final validate/test of the best checkpoint
            self.safe_point(str(stage.value), f" during the final {stage.value} (after training)")
            return
        if point:  # the end of a training step
            pause_if_asked(f"step {trainer.global_step}", released=lambda: self.received is not None)
        if self.received is not None:
            self.check(f" at epoch {trainer.current_epoch}, step {trainer.global_step}")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._at_batch_end(trainer, point=True)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._at_batch_end(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._at_batch_end(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_batch_end(trainer)


def resume_command(run_dir: Path, overrides: Sequence[str]) -> str:
    """The command that continues this run: the same overrides, ``resume=true``, the same output dir."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    arguments = [*kept, "resume=true", f"hydra.run.dir={run_dir}"]
    return "python -m vae_lab.train " + " ".join(shlex.quote(argument) for argument in arguments)
