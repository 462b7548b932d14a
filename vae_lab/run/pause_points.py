"""A test hook that makes a run wait at a named point, so that a test can signal or kill it exactly
there, whatever the machine's speed (a signal sent "after N seconds" lands elsewhere on a faster or
a busier machine). Off unless ``VAE_LAB_PAUSE_AT`` is set; nothing else in vae_lab reads it.

``VAE_LAB_PAUSE_AT=<point>``: when the run reaches ``<point>`` it prints
``vae_lab: paused at <point> (VAE_LAB_PAUSE_AT)`` on stderr and waits there until a signal arrives,
which is then handled as it would be at that point without the pause (SIGKILL just ends the run).
The points, each a place where the run may stop (vae_lab.run.interrupts):

- ``start``: start-up, before the slow imports (vae_lab.run.early_signals);
- ``step N``: the batch boundary after training step N (the N-th optimizer step of the run);
- ``validate``, ``test``: a batch boundary of the final validation / test of the best checkpoint;
- ``evaluation``: a batch boundary of the end-of-training evaluation (vae_lab.evaluation.importance_sampling);
- ``images``: after the evaluation, before the image grids are drawn.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

PAUSE_VARIABLE = "VAE_LAB_PAUSE_AT"


def pause_if_asked(point: str, released: Callable[[], bool] = lambda: False) -> None:
    """Wait at ``point`` if ``$VAE_LAB_PAUSE_AT`` names it, until ``released()`` (a signal came in)
    or a signal handler raises."""
    if os.environ.get(PAUSE_VARIABLE) != point:
        return
    print(f"vae_lab: paused at {point} ({PAUSE_VARIABLE})", file=sys.stderr, flush=True)
    while not released():
        time.sleep(0.01)  # a signal's handler runs during the sleep; released() then says so
