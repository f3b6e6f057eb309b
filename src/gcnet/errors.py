"""Exceptions for problems a user can fix (bad file, bad data, bad option).

The CLI prints these without a traceback and exits with status 2.
"""


class GCNetError(Exception):
    """Base class for user-facing errors."""


class CheckpointError(GCNetError):
    """A checkpoint cannot be read, is unsafe, or does not match the model."""


class DatasetError(GCNetError):
    """A dataset folder, image or label is missing or malformed (the message names the file)."""


class ConfigError(GCNetError):
    """A config file or option is invalid."""
