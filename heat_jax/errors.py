"""User-facing error types.

Every error caused by bad input (config, files, data, checkpoints) derives from
`UserError`. The command line prints its message as one line and exits with code 2.
"""


class UserError(Exception):
  """Bad input that the user can fix; the message says what and how."""

  exit_code = 2

  def one_line(self) -> str:
    return " ".join(str(self).split())


class ConfigError(UserError):
  """An invalid or inconsistent configuration value."""


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable or does not match the model."""


class DownloadError(UserError):
  """A file could not be downloaded (offline, wrong URL, ...)."""


class DataError(UserError):
  """A dataset is missing, unreadable or inconsistent."""


class TrainingError(UserError):
  """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class StorageError(UserError):
  """A file cannot be written: the disk is full, read-only, or the folder vanished."""
