"""Ctrl-C (SIGINT) or SIGTERM before a run's training region starts (vae_lab.run.interrupts takes over
there) or after it ends: stop at once with one line, never a traceback.

Python's default turns Ctrl-C into a KeyboardInterrupt wherever the program is: in the first
seconds that is inside the imports of torch and Lightning or the building of the data and the
model, and the user gets a long traceback. Nothing of the run can be lost at those moments (no
training step is running, the checkpoints are whole), so stopping at once is right. Only the
standard library is imported here, so that the handlers are in place before the slow imports.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from vae_lab.run.pause_points import pause_if_asked

#: The signals handled here and in vae_lab.run.interrupts.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    print(
        f"\nvae_lab: stopped by {name} outside training (no training step was running, nothing was lost); "
        "run the command again to start, with resume=true to continue a run.",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum)  # the status a shell reports for a signal; SystemExit prints no traceback


def stop_quietly_on_signals() -> None:
    """Install the handlers (in the main thread; elsewhere Python allows none)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _stop)
    pause_if_asked("start")  # the test hook (vae_lab.run.pause_points)
