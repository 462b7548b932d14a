"""The torch thread count of the evaluation, measured on its own first batches of images.

Training the default model is fastest on one thread (vae_lab/run/threads.py: its small matrix
products gain little from a second core), but the evaluation decodes chunks of thousands of z at
once: large matrix products and elementwise log-likelihoods, which a second idle core speeds up,
and which a core held by other processes slows down. Which wins depends on the machine and its
load at the time, so the evaluation measures it: it runs its first batches on each candidate thread
count in turn (1, N, N, 1 for candidates 1 and N; it stops after 1, N when one is more than twice as
slow as the other), takes each candidate's fastest batch (the first batches pay one-off costs) and
runs the rest on the fastest candidate. The timed batches are
part of the evaluation, not extra work, and the figures do not depend on the choice (the noise is
drawn per image, vae_lab.evaluation.noise).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

#: Batches timed per candidate; the schedule alternates the candidates' order from round to round. Two:
#: each candidate's faster batch is free of the one-off costs of its first, and a candidate that a busy
#: machine makes 8x slower (measured here: 0.71 against 0.09 s per image) costs two batches only.
CALIBRATION_ROUNDS = 2
#: Once every candidate is timed, one this many times slower than the fastest ends the calibration early:
#: a clear loser (a second core held by other processes) is not worth a second batch.
CLEAR_LOSER = 2.0


class ThreadChoice:
    """Chooses among ``candidates`` (torch thread counts) by timing the evaluation's batches; with one
    candidate it only sets it. ``timed(images)`` wraps one batch of ``images`` images."""

    def __init__(self, candidates: Sequence[int], rounds: int = CALIBRATION_ROUNDS) -> None:
        self.candidates = sorted(set(candidates))
        if not self.candidates or self.candidates[0] < 1:
            raise ValueError(f"thread counts must be at least 1, got {list(candidates)}")
        self.schedule: list[int] = []
        if len(self.candidates) > 1:
            for round_ in range(rounds):
                self.schedule += self.candidates if round_ % 2 == 0 else self.candidates[::-1]
        self.seconds_per_image: dict[int, float] = {}
        self.batches = 0

    @property
    def calibrating(self) -> bool:
        return self.batches < len(self.schedule)

    @property
    def chosen(self) -> int:
        """The fastest candidate measured so far (the largest before any is measured)."""
        if not self.seconds_per_image:
            return self.candidates[-1]
        return min(self.seconds_per_image, key=lambda threads: (self.seconds_per_image[threads], threads))

    def threads(self) -> int:
        """The thread count of the next batch, set in torch."""
        return self.set(self.schedule[self.batches] if self.calibrating else self.chosen)

    @staticmethod
    def set(threads: int) -> int:
        """Set torch's thread count (only when it changes: setting it costs up to milliseconds)."""
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def settle(self) -> int:
        """End the calibration (if the batches ran out first) and set the chosen count in torch."""
        self.batches = max(self.batches, len(self.schedule))
        return self.threads()

    @contextmanager
    def timed(self, images: int) -> Iterator[int]:
        """Run one batch of ``images`` images on the thread count it is due (yielded), timing it while calibrating."""
        threads = self.threads()
        measuring = self.calibrating
        started = time.perf_counter()
        yield threads
        if measuring:
            self.record(threads, (time.perf_counter() - started) / max(1, images))
        self.batches += 1

    def record(self, threads: int, seconds_per_image: float) -> None:
        """A timed batch on ``threads`` threads (the batch count is :meth:`timed`'s); the calibration ends
        after it when every candidate is timed and one is a clear loser (``CLEAR_LOSER``)."""
        self.seconds_per_image[threads] = min(seconds_per_image, self.seconds_per_image.get(threads, float("inf")))
        timings = self.seconds_per_image.values()
        if len(self.seconds_per_image) == len(self.candidates) and max(timings) > CLEAR_LOSER * min(timings):
            self.schedule = self.schedule[: self.batches + 1]

    def details(self) -> dict[str, float] | None:
        """Seconds per image of each candidate's fastest timed batch (None when there was nothing to choose)."""
        if not self.schedule:
            return None
        return {str(threads): round(seconds, 6) for threads, seconds in sorted(self.seconds_per_image.items())}
