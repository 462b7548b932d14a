"""Schedules of the ELBO's KL term: pure functions of the training step (or epoch).

- KL warm-up (Sonderby et al. 2016, "Ladder Variational Autoencoders", warm-up; Bowman et al.
  2016, KL annealing): the KL weight rises linearly from 0 to its full value over N steps or epochs.
- Capacity annealing (Burgess et al. 2018, "Understanding disentangling in beta-VAE", the
  controlled capacity increase): the KL target C rises linearly from 0 to C_max over N steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from vae_lab.errors import ConfigError
from vae_lab.ranges import at_least, check_fields, is_number, whole_number_at_least

#: Burgess et al. (2018) use gamma = 1000 (dSprites). On the default MNIST model that swamps the
#: reconstruction's gradient under Adam: the KL follows C without carrying information (test ELBO
#: -207.4, the mean image, after 10 epochs with C: 0 -> 15 nats over 5,000 steps); gamma = 100 keeps
#: the KL on C and learns (-135.1), gamma = 10 too (-120.1). See conf/objective/elbo.yaml.
DEFAULT_CAPACITY_GAMMA = 100.0

#: A duration in steps or epochs; null: none.
Duration = Annotated[int | None, whole_number_at_least(0, "or null for none")]


def linear_ramp(progress: float, duration: float, end: float, start: float = 0.0) -> float:
    """start + (end - start) * min(progress / duration, 1): a straight line from ``start`` at
    progress 0 to ``end`` at progress ``duration``, constant after (``end`` at once when duration is 0)."""
    if duration <= 0:
        return end
    fraction = min(max(progress / duration, 0.0), 1.0)
    return start + (end - start) * fraction


@dataclass(frozen=True)
class KLWarmup:
    """The factor in [0, 1] that multiplies the KL weight: step / steps, or epoch / epochs, capped at 1.

    Set at most one of ``steps`` and ``epochs``; with neither the factor is 1 (no warm-up). The
    epoch form is constant within an epoch: 0 during the first epoch (epoch 0), 1 from epoch
    ``epochs`` on (Tomczak & Welling 2018 warm up over 100 epochs).
    """

    steps: Duration = None
    epochs: Duration = None

    def __post_init__(self) -> None:
        check_fields(self, "objective.warmup")
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
    """The KL target C(step) = C_max * min(step / steps, 1) in nats (Burgess et al. 2018), and gamma, the
    weight of |KL - C| (``objective.capacity``; ``max`` null: no capacity annealing)."""

    max: Annotated[float | None, at_least(0, "nats; null: off")] = None
    steps: Annotated[int, whole_number_at_least(0, "steps of the rise of C; 0: at once")] = 0
    gamma: Annotated[float, at_least(0)] = DEFAULT_CAPACITY_GAMMA

    def __post_init__(self) -> None:
        if is_number(self.gamma):
            object.__setattr__(self, "gamma", float(self.gamma))
        check_fields(self, "objective.capacity")

    def __call__(self, step: int) -> float:
        return linear_ramp(step, self.steps, self.max)
