"""User-facing errors.

Every mistake a user can make on the command line or in a config file (an unknown dataset, a
sparsity outside [0, 1), a missing file) raises :class:`ConfigError`. The CLI turns it into one
line on stderr and exit code 2; library callers get an ordinary ``ValueError`` subclass.
"""


class ConfigError(ValueError):
    """Bad user input: the message names the field and the problem in one line."""


class WriteError(OSError):
    """A result could not be written (full or read-only disk, ...); ``filename`` is the target."""

    def __str__(self) -> str:
        return f"cannot write to {self.filename}: {self.strerror}"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


class RankMismatch(RuntimeError):
    """The processes of a distributed run no longer hold the same masks or weights; the run stops."""
