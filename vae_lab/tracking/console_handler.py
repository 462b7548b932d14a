"""The console handler of vae_lab's job logging (conf/hydra/job_logging/vae_lab.yaml).

A module of its own, importing nothing but :mod:`logging`: Hydra imports it when it configures
logging, before the job runs, and importing Lightning that early would fix Lightning's idea of this
process's rank before a launcher (submitit) has set the rank variables (vae_lab.run.distributed).
"""

from __future__ import annotations

import logging
import sys


class SplitStreamHandler(logging.StreamHandler):
    """Info and below to the current ``sys.stdout``, warnings and errors to the current ``sys.stderr``
    (looked up at each record, so that redirected or captured streams are honoured)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        super().emit(record)
