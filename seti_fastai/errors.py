"""Exceptions a user can cause. The CLI turns each into one line and a non-zero exit."""


class SetiError(Exception):
    """Base class for every error caused by user input (files, flags, configs)."""


class LabelFileError(SetiError):
    """A label or id CSV is missing, malformed, or holds bad rows."""


class CadenceFileError(SetiError):
    """A cadence `.npy` file is missing, of the wrong shape or dtype, or not finite."""


class DataLayoutError(SetiError):
    """A data folder does not follow the Kaggle layout."""


class FoldError(SetiError):
    """A fold file is inconsistent with the labels, or a fold index is out of range."""


class ConfigError(SetiError):
    """A configuration value or YAML file is invalid."""


class RunDirError(SetiError):
    """A run directory is missing files or cannot be used as asked."""


class OutputError(SetiError, OSError):
    """An output could not be written: `PATH: cannot write (REASON)`. Also an `OSError` with the cause's errno, so
    a caller that words its own message (the fold file, the packed cache, a run directory) still catches it."""

    def __init__(self, path, reason: str, errno: int | None = None):
        OSError.__init__(self, errno, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: cannot write ({self.reason})"


def first_sentence(error: BaseException) -> str:
    """The first sentence of an error's message (at most 120 characters), for one-line reports."""
    text = str(error).strip().split(". ")[0].splitlines()
    return text[0][:120] if text and text[0] else type(error).__name__
