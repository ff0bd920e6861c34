"""User-facing errors.

A `RaylslError` is bad input or a missing resource the user can fix: the CLI prints its message
alone (no traceback) and exits non-zero. Anything else that escapes is a bug and keeps its traceback.
"""


class RaylslError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(RaylslError):
    """A config key, value or override is invalid."""


class DataError(RaylslError):
    """A data file is missing or malformed."""


class ModelError(RaylslError):
    """A model cannot be found, loaded or understood."""


class StateError(RaylslError):
    """A run's or sweep's own state (a file raylsl wrote, its lease) is damaged or held by another process."""


class RaylslWarning(UserWarning):
    """Something the user should know about a run that still goes ahead (weights left unadapted);
    the CLI shows these while it silences library warnings."""
