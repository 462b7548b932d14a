"""Unit tests written to kill the mutants that survived ``make mutation`` (docs/mutation.md): each
pins a value of the likelihoods, priors, objectives, evaluation, data forms or the report's table
that no earlier test checked."""

from __future__ import annotations
