"""Errors that carry a message meant for the person running the experiment.

The entry points print these without a traceback and exit with status 2: the message itself says
what is wrong and how to fix it.
"""


class VaeLabError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class ConfigError(VaeLabError):
    """An invalid or impossible configuration, refused before any work starts."""


class DataNotFoundError(VaeLabError):
    """The data set's files are not where the config says they are (or could not be downloaded)."""


class DataFileError(VaeLabError):
    """A data file that is there but is not the file it should be (truncated, foreign, damaged)."""


class CheckpointError(VaeLabError):
    """A checkpoint that cannot be used (truncated, foreign, or from another model)."""


class NumericalError(VaeLabError):
    """A loss, gradient or weight that is not finite: the run stops rather than train on NaNs."""


class RunInterrupted(VaeLabError):
    """SIGINT or SIGTERM stopped the run at a safe point; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        #: The process's exit status: 128 + the signal's number, as a shell reports a signal.
        self.exit_code = exit_code
