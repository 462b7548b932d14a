"""Progress of a long count on the console: a tqdm bar on a terminal, a logged line each tenth elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["CountProgress", "duration"]


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class CountProgress:
    """A ``progress(done, total)`` callback for a long count (``what``: ``test images``): a tqdm bar
    with rate and ETA on a terminal (stderr), otherwise a logged line each tenth with the rate and
    the time left."""

    def __init__(self, what: str, prefix: str) -> None:
        self.what = what
        self.prefix = prefix
        self.bar: Any = None
        self.started = time.monotonic()
        self.reported = 0

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=self.prefix, unit=self.what.split()[-1].rstrip("s") or "it")
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.bar.close()
            return
        if done == total or done - self.reported >= total / 10:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = done / elapsed
            log.info(
                f"{self.prefix}: {done}/{total} {self.what} ({rate:.1f}/s, "
                f"{duration(elapsed) + ' in all' if done >= total else duration((total - done) / rate) + ' left'})"
            )
            self.reported = done
