"""Schedules of the ELBO's KL term: pure functions of the training step (or epoch).

- KL warm-up (Sonderby et al. 2016, "Ladder Variational Autoencoders", warm-up; Bowman et al.
  2016, KL annealing): the KL weight rises linearly from 0 to its full value over N steps or epochs.
- Capacity annealing (Burgess et al. 2018, "Understanding disentangling in beta-VAE", the
  controlled capacity increase): the KL target C rises linearly from 0 to C_max over N steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from vae_lab.errors import ConfigError


def linear_ramp(progress: float, duration: float, end: float, start: float = 0.0) -> float:
    """start + (end - start) * min(progress / duration, 1): a straight line from ``start`` at
    progress 0 to ``end`` at progress ``duration``, constant after (``end`` at once when duration is 0)."""
    if duration <= 0:
        return end
    fraction = min(max(progress / duration, 0.0), 1.0)
    return start + (end - start) * fraction


def _check_duration(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"objective.{name}={value!r} must be a whole number >= 0 (or null for none).")


@dataclass(frozen=True)
class KLWarmup:
    """The factor in [0, 1] that multiplies the KL weight: step / steps, or epoch / epochs, capped at 1.

    Set at most one of ``steps`` and ``epochs``; with neither the factor is 1 (no warm-up). The
    epoch form is constant within an epoch: 0 during the first epoch (epoch 0), 1 from epoch
    ``epochs`` on (Tomczak & Welling 2018 warm up over 100 epochs).
    """

    steps: int | None = None
    epochs: int | None = None

    def __post_init__(self) -> None:
        _check_duration("warmup.steps", self.steps)
        _check_duration("warmup.epochs", self.epochs)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(
                "objective.warmup.steps and objective.warmup.epochs are both set; set one (the other null)."
            )

    @property
    def enabled(self) -> bool:
        return self.steps is not None or self.epochs is not None

    def factor(self, step: int, epoch: int) -> float:
        if self.steps is not None:
            return linear_ramp(step, self.steps, 1.0)
        if self.epochs is not None:
            return linear_ramp(epoch, self.epochs, 1.0)
        return 1.0


@dataclass(frozen=True)
class CapacitySchedule:
    """The KL target C(step) = C_max * min(step / steps, 1) in nats (Burgess et al. 2018)."""

    max: float
    steps: int

    def __post_init__(self) -> None:
        if self.max < 0:
            raise ConfigError(f"objective.capacity.max={self.max} must be >= 0 nats.")
        _check_duration("capacity.steps", self.steps)

    def __call__(self, step: int) -> float:
        return linear_ramp(step, self.steps, self.max)
