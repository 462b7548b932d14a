"""Errors that carry a message meant for the person running the experiment.

The entry points print these without a traceback and exit with status 2: the message itself says
what is wrong and how to fix it.
"""


class VaeLabError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class ConfigError(VaeLabError):
    """An invalid or impossible configuration, refused before any work starts."""


class DataNotFoundError(VaeLabError):
    """The data set's files are not where the config says they are."""


class CheckpointError(VaeLabError):
    """A checkpoint that cannot be used (truncated, foreign, or from another model)."""
